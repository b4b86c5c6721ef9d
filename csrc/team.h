// rnncore's threads: one team that lives across calls and sleeps when idle.
//
// Work is handed to the team as a sequence of stages, each made of the same number of items:
// stage j + 1 starts only once every item of stage j has finished, and an item of a stage is
// computed by exactly one thread. Item i's home is thread i % n: a thread first does the items of
// its home, so a thread keeps meeting the same data (its slice of W_hh stays in its own caches).
// A thread that has finished its own items and has waited a while for the stage to complete
// takes over the items no one has started yet, so a team member that the OS has descheduled (a
// busy core) does not hold the others up. Waiting spins briefly, then sleeps.
//
// Results never depend on which thread computed an item, nor on how many threads there are: the
// caller makes every item compute the same numbers whoever runs it, and the team's workers take
// the caller's floating-point control word (MXCSR, FPCR: flush-to-zero, rounding) for the call.
#pragma once
#include <atomic>
#include <cstdint>

namespace rnncore {

// Threads a call may use (set_num_threads); the team grows to it on demand.
constexpr int kMaxThreads = 1024;
void set_team_size(int n);
int team_size();

// An interruption request (a signal arrived): set from a signal handler, cleared by the caller.
// A call whose calling thread watches it (watch_interrupt) stops at the next stage boundary.
std::atomic<int>& interrupt_flag();
void watch_interrupt(bool on);  // for the calling thread
bool interrupted();             // the calling thread watches, and the flag is set

// One call's work: `work(item, stage)` for stages [0, stages) and items [0, items).
class StageWork {
 public:
  virtual void run(int item, int64_t stage) = 0;

 protected:
  ~StageWork() = default;
};

// Runs `work` on up to `threads` threads (the caller is one of them). Returns false when it
// stopped early because interrupt_flag() was set; every item that started has then finished.
// If another call is using the team, this one runs on the calling thread alone.
bool run_stages(int threads, int items, int64_t stages, StageWork& work);

template <class F>
bool run_stages(int threads, int items, int64_t stages, const F& f) {
  struct W final : StageWork {
    const F& f;
    explicit W(const F& f) : f(f) {}
    void run(int item, int64_t stage) override { f(item, stage); }
  } w(f);
  return run_stages(threads, items, stages, static_cast<StageWork&>(w));
}

// Where a call's threads come from. By default, rnncore's own workers. A process that already
// runs an OpenMP runtime for its other work (PyTorch's intra-op pool) can lend its threads
// instead: then a call runs as one parallel region of that runtime, and the runtime's threads,
// still spinning from the last operation of the host library, pick it up at once rather than
// competing with rnncore's workers for the cores. The stage protocol is the same, so results
// are the same bits. `path` names an OpenMP library already loaded in the process (it is never
// loaded here); empty, the process's global symbols are searched. Returns whether the runtime
// was found (on failure the team stays as it was); detach_openmp goes back to rnncore's own.
bool attach_openmp(const char* path);
void detach_openmp();
bool openmp_attached();

// Registers what a forked child must forget (the team, a lent OpenMP runtime, the workspace
// pool, whose lock another thread may have held at the fork); called once at import.
void prepare_for_fork();

// Team statistics for tests and the benchmark: calls that used the team, calls that ran on their
// caller alone (the team was busy, or recently stalled), items taken over from another thread,
// stalls (a thread waited too long for an item another had started, and finished the call
// alone), workers that moved off the caller's CPU at the start of a call, worker threads
// started, and calls that ran on an attached OpenMP runtime's threads (counted in team_calls too).
struct TeamStats {
  int64_t team_calls, solo_calls, steals, stalls, moves, workers, openmp_calls;
};
TeamStats team_stats();

}  // namespace rnncore
