#include "team.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif
#include "platform.h"
#if RNNCORE_X86
#include <immintrin.h>
#define RNNCORE_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define RNNCORE_PAUSE() __asm__ __volatile__("yield")
#else
#define RNNCORE_PAUSE() ((void)0)
#endif

namespace rnncore {

namespace {

std::atomic<int> g_team_size{1};
std::atomic<int> g_interrupt{0};
thread_local bool tl_watch = false;
std::atomic<int64_t> g_moves{0};
std::atomic<int64_t> g_team_calls{0}, g_solo_calls{0}, g_steals{0}, g_workers{0}, g_openmp_calls{0};

using Clock = std::chrono::steady_clock;
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Sleeping until a 32-bit word changes: a futex on Linux, a condition variable elsewhere.
#if defined(__linux__)
// Sleeps until the word changes; a waiter inside a call wakes up at least every 2 ms (to see the
// interrupt flag), an idle worker only when woken.
void sleep_while(std::atomic<uint32_t>& word, uint32_t value, bool bounded = true) {
  struct timespec ts = {0, 2000000};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, value, bounded ? &ts : nullptr,
          nullptr, 0);
}
void wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}
#else
std::mutex& sleep_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}
std::condition_variable& sleep_cv() {
  static std::condition_variable* cv = new std::condition_variable;
  return *cv;
}
void sleep_while(std::atomic<uint32_t>& word, uint32_t value, bool bounded = true) {
  std::unique_lock<std::mutex> lock(sleep_mutex());
  if (bounded)
    sleep_cv().wait_for(lock, std::chrono::milliseconds(2), [&] { return word.load() != value; });
  else
    sleep_cv().wait(lock, [&] { return word.load() != value; });
}
void wake_all(std::atomic<uint32_t>&) {
  std::lock_guard<std::mutex> lock(sleep_mutex());
  sleep_cv().notify_all();
}
#endif

// How long a waiting thread spins before it takes over unstarted items, and before it sleeps.
constexpr int64_t kStealAfterNs = 20000;
constexpr int64_t kSleepAfterNs = 100000;
// Within a call a thread that waits for its partners sleeps only after 1 ms (or 8 of its own
// items): waking a sleeper costs tens of microseconds, more than most waits.
constexpr int64_t kSleepInCallNs = 1000000;
// A wait for an item another thread has started counts as a stall (that thread has lost its
// core) past this, plus a few times the waiting thread's own last item.
constexpr int64_t kStallNs = 500000;
// Once a partner was found absent (descheduled, or still waking up), its items are taken over
// after this short wait, until it is seen doing them again.
constexpr int64_t kQuickStealNs = 2000;
// How long an idle worker spins for the next call before it sleeps.
constexpr int64_t kIdleSpinNs = 100000;
// After two stalled calls in a row, calls run on their caller alone for a while, twice as long
// after each further stall, from 10 ms up to 1 s; a call on the team without a stall resets it.
// (One stall alone can be a passing hiccup of the machine.)
constexpr int64_t kBackoffMinNs = 10000000, kBackoffMaxNs = 1000000000;
std::atomic<int64_t> g_alone_until{0}, g_backoff{kBackoffMinNs}, g_stalls{0};
std::atomic<int> g_stalled_in_a_row{0};

struct Job {
  StageWork* work = nullptr;
  int items = 0, n = 1;
  int64_t stages = 0;
  std::unique_ptr<std::atomic<int64_t>[]> claimed;  // item i is claimed for stages < claimed[i]
  std::atomic<int64_t> done{0};                      // items finished, all stages together
  std::atomic<int> in_flight{0};
  std::atomic<bool> stop{false};
  // Once a thread has waited too long for another's item, it alone runs the rest of the job:
  // the others finish the item they hold and stop claiming.
  std::atomic<int> owner{-1};
  int caller_cpu = -1;
  unsigned long long fp = 0;  // the caller's floating-point control word
  std::atomic<int> sleepers{0};
  std::atomic<uint32_t> wake{0};

  bool claim(int i, int64_t j) {
    int64_t expect = j;
    return claimed[i].load(std::memory_order_relaxed) == j && claimed[i].compare_exchange_strong(expect, j + 1);
  }
  // Runs item i of stage j if no one has; false when the job has stopped.
  bool try_run(int i, int64_t j) {
    if (!claim(i, j)) return true;
    in_flight.fetch_add(1);
    if (stop.load()) {
      in_flight.fetch_sub(1);
      return false;
    }
    work->run(i, j);
    finish(j);
    in_flight.fetch_sub(1);
    return true;
  }
  void finish(int64_t j) {
    const int64_t d = done.fetch_add(1) + 1;
    if ((d == (j + 1) * items || d == stages * items) && sleepers.load() > 0) notify();
  }
  void notify() {
    wake.fetch_add(1);
    wake_all(wake);
  }
  void take_over(int q) {
    int expect = -1;
    if (owner.compare_exchange_strong(expect, q)) g_stalls.fetch_add(1, std::memory_order_relaxed);
  }
  bool excluded(int q) const {
    const int o = owner.load(std::memory_order_relaxed);
    return o >= 0 && o != q;
  }
  // Waits until `target` items are done. Thread q takes over unstarted items of stage j after
  // `steal_after` (if it may): 20 us at first, a moment once a partner was found absent, until
  // the partner is seen doing its own item again. It declares a stall when an item another
  // thread holds keeps it waiting: that thread has lost its core in the middle of its item.
  bool wait_for(int64_t target, int64_t j, int q, int64_t own_ns, bool is_caller, int64_t& steal_after) {
    if (done.load(std::memory_order_acquire) >= target) {
      steal_after = kStealAfterNs;
      return true;
    }
    const int64_t t0 = now_ns();
    bool looked = false, stole = false;
    for (int spin = 0;; ++spin) {
      if (done.load(std::memory_order_acquire) >= target) {
        if (!stole) steal_after = kStealAfterNs;
        return true;
      }
      if (stop.load(std::memory_order_relaxed)) return false;
      RNNCORE_PAUSE();
      if ((spin & 7) != 7) continue;
      if (is_caller && interrupted()) {
        stop.store(true);
        notify();
        return false;
      }
      const int64_t waited = now_ns() - t0;
      if (!looked && waited > steal_after && !excluded(q)) {
        looked = true;
        for (int i = 0; i < items; ++i) {
          if (claimed[i].load(std::memory_order_relaxed) != j) continue;
          const int64_t before = done.load();
          if (!try_run(i, j)) return false;
          if (done.load() != before) {
            g_steals.fetch_add(1, std::memory_order_relaxed);
            stole = true;
          }
        }
        if (stole) steal_after = kQuickStealNs;
      } else if (looked && owner.load(std::memory_order_relaxed) < 0 && waited > kStallNs + 4 * own_ns) {
        take_over(q);
      } else if (waited > (excluded(q) ? kSleepAfterNs : std::max(kSleepInCallNs, 8 * own_ns))) {
        const uint32_t w = wake.load();
        sleepers.fetch_add(1);
        if (done.load() < target && !stop.load()) sleep_while(wake, w);
        sleepers.fetch_sub(1);
      }
    }
  }
  // Thread q's part: its home items of every stage (every item once it owns the job), then the
  // wait for the stage. A thread shut out by another's ownership waits for the end (the caller)
  // or leaves (a worker).
  bool participate(int q, bool is_caller) {
    int64_t own_ns = 0, steal_after = kStealAfterNs;
    for (int64_t j = 0; j < stages; ++j) {
      if (is_caller && interrupted()) {
        stop.store(true);
        notify();
        return false;
      }
      if (excluded(q)) return is_caller ? wait_for(stages * items, stages - 1, q, 0, true, steal_after) : true;
      const bool all = owner.load(std::memory_order_relaxed) == q;
      const int64_t t0 = now_ns();
      for (int i = all ? 0 : q; i < items; i += all ? 1 : n)
        if (!try_run(i, j)) return false;
      own_ns = now_ns() - t0;
      if (!wait_for((j + 1) * items, j, q, own_ns, is_caller, steal_after)) return false;
    }
    return true;
  }
};

// The floating-point control word (x86-64 MXCSR, AArch64 FPCR): workers take the caller's for the
// length of a job, so that every item computes in the caller's mode whichever thread runs it.
#if RNNCORE_X86
using FpMode = unsigned;
FpMode fp_mode() { return _mm_getcsr(); }
void set_fp_mode(FpMode m) { _mm_setcsr(m); }
#elif defined(__aarch64__)
using FpMode = uint64_t;
FpMode fp_mode() {
  uint64_t v;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
  return v;
}
void set_fp_mode(FpMode m) { __asm__ __volatile__("msr fpcr, %0" : : "r"(m)); }
#else
using FpMode = int;
FpMode fp_mode() { return 0; }
void set_fp_mode(FpMode) {}
#endif

// The CPU the calling thread runs on, or -1 where that cannot be known.
int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// A worker woken by a call is often put on the caller's CPU (the scheduler's guess that they
// share data), where the two would take turns on one core until the load balancer moves one,
// milliseconds later. A worker that finds itself there moves to another CPU it may run on, and
// then gives back its full set of CPUs (the scheduler leaves a running thread where it is).
void move_off(int cpu) {
#if defined(__linux__)
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t mine, others;
  if (sched_getaffinity(0, sizeof mine, &mine) != 0 || !CPU_ISSET(cpu, &mine) || CPU_COUNT(&mine) < 2) return;
  others = mine;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof others, &others) != 0) return;
  sched_setaffinity(0, sizeof mine, &mine);
  g_moves.fetch_add(1, std::memory_order_relaxed);
#else
  (void)cpu;
#endif
}

// A worker's part of a job (thread q > 0), in the caller's floating-point mode for its length.
void participate_as_worker(Job& job, int q) {
  const FpMode own = fp_mode();
  set_fp_mode(job.fp);
  job.participate(q, false);
  set_fp_mode(own);
}

class Team {
 public:
  // A call's turn: the team if it is free, else nothing (the call runs alone).
  bool acquire() {
    bool expect = false;
    return busy_.compare_exchange_strong(expect, true);
  }
  void release() { busy_.store(false); }

  // Hands `job` to workers 1 .. job->n - 1 (started here if need be), runs part 0 on the calling
  // thread and returns when the job is complete or has stopped.
  bool run(const std::shared_ptr<Job>& job) {
    grow(job->n - 1);
    if (job->n > workers_ + 1) job->n = workers_ + 1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
    }
    seq_.fetch_add(1);
    if (idle_sleepers_.load() > 0) wake_all(seq_);
    bool ok;
    try {
      ok = job->participate(0, true);
    } catch (...) {  // stop the others before the work they reference goes away
      job->stop.store(true);
      job->notify();
      while (job->in_flight.load() > 0) std::this_thread::yield();
      std::lock_guard<std::mutex> lock(mutex_);
      job_.reset();
      throw;
    }
    if (!ok) {
      job->stop.store(true);
      job->notify();
      while (job->in_flight.load() > 0) std::this_thread::yield();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    job_.reset();
    return ok;
  }

 private:
  void grow(int want) {
    while (int(workers_) < want) {
      const int q = workers_ + 1;
      const uint32_t seen = seq_.load();  // before the job is published: the worker takes it
      try {
        std::thread([this, q, seen] { worker(q, seen); }).detach();
      } catch (const std::system_error&) {
        return;  // no thread to be had: the ones there are (and stealing) do the work
      }
      ++workers_;
      g_workers.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void worker(int q, uint32_t seen) {
    for (;;) {
      // wait for the next call: spin a little, then sleep
      const int64_t t0 = now_ns();
      for (int spin = 0; seq_.load(std::memory_order_acquire) == seen; ++spin) {
        RNNCORE_PAUSE();
        if ((spin & 63) == 63 && now_ns() - t0 > kIdleSpinNs) {
          idle_sleepers_.fetch_add(1);
          if (seq_.load() == seen) sleep_while(seq_, seen, false);
          idle_sleepers_.fetch_sub(1);
        }
      }
      seen = seq_.load();
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        job = job_;
      }
      if (job && q < job->n) {
        if (current_cpu() == job->caller_cpu) move_off(job->caller_cpu);
        participate_as_worker(*job, q);
      }
    }
  }

  std::atomic<bool> busy_{false};
  std::atomic<uint32_t> seq_{0};
  std::atomic<int> idle_sleepers_{0};
  std::mutex mutex_;
  std::shared_ptr<Job> job_;
  int workers_ = 0;  // changed only by the call that holds the team
};

// An OpenMP runtime lent by the process (attach_openmp): the three entry points a call needs.
// GOMP_parallel is the GNU ABI's "run fn on a team of threads and join"; LLVM's and Intel's
// runtimes export it too. Once attached, a runtime is never unloaded (its handle is kept), so
// the pointers stay valid; detaching only stops using them.
struct OpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned);
  int (*thread_num)();
  int (*in_parallel)();
};
std::atomic<const OpenMP*> g_openmp{nullptr};

struct Region {
  const OpenMP* omp;
  Job* job;
  std::atomic<bool> ok{true};
  std::mutex mutex;
  std::exception_ptr error;
};

// One thread of the region: the runtime's thread q plays the team's thread q (0 is the caller).
void region_body(void* arg) {
  Region& r = *static_cast<Region*>(arg);
  Job& job = *r.job;
  const int q = r.omp->thread_num();
  if (q >= job.n) return;
  try {
    if (q == 0) {
      if (!job.participate(0, true)) r.ok.store(false);
    } else {
      participate_as_worker(job, q);
    }
  } catch (...) {  // nothing may leave a parallel region: stop the job, rethrow after the join
    std::lock_guard<std::mutex> lock(r.mutex);
    if (!r.error) r.error = std::current_exception();
    r.ok.store(false);
    job.stop.store(true);
    job.notify();
  }
}

// Runs the job as one parallel region of the runtime; the region's join is the end of the call.
bool run_on_openmp(const OpenMP& omp, Job& job) {
  Region r;
  r.omp = &omp;
  r.job = &job;
  omp.parallel(&region_body, &r, static_cast<unsigned>(job.n), 0);
  if (r.error) std::rethrow_exception(r.error);
  return r.ok.load();
}

std::atomic<Team*> g_team{nullptr};

void forget_team_after_fork() {
  // The child has none of the parent's threads: leave the old team (its workers do not exist
  // here, its locks may be held) and start a new one on the next call. A lent OpenMP runtime is
  // given up too: GNU's does not survive fork (its pool's threads are gone, its state says
  // otherwise), so the child's calls run on a team of rnncore's own.
  g_team.store(nullptr);
  g_openmp.store(nullptr);
  WorkspacePool::forget_after_fork();
}

Team* team() {
  Team* t = g_team.load();
  if (t) return t;
  prepare_for_fork();  // done at import already; cheap when repeated
  Team* fresh = new Team;  // never deleted: workers may outlive any static destructor
  if (g_team.compare_exchange_strong(t, fresh)) return fresh;
  delete fresh;
  return t;
}

bool run_alone(int items, int64_t stages, StageWork& work) {
  for (int64_t j = 0; j < stages; ++j) {
    if (interrupted()) return false;
    for (int i = 0; i < items; ++i) work.run(i, j);
  }
  return true;
}

}  // namespace

int64_t WorkspacePool::now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
}

void set_team_size(int n) { g_team_size.store(n < 1 ? 1 : n > kMaxThreads ? kMaxThreads : n); }
int team_size() { return g_team_size.load(); }
std::atomic<int>& interrupt_flag() { return g_interrupt; }
void watch_interrupt(bool on) { tl_watch = on; }
bool interrupted() { return tl_watch && g_interrupt.load(std::memory_order_relaxed) != 0; }

TeamStats team_stats() {
  return {g_team_calls.load(), g_solo_calls.load(), g_steals.load(), g_stalls.load(),
          g_moves.load(),      g_workers.load(),    g_openmp_calls.load()};
}

void prepare_for_fork() {
  static std::once_flag atfork;
#if defined(__unix__) || defined(__APPLE__)
  std::call_once(atfork, [] { pthread_atfork(nullptr, nullptr, &forget_team_after_fork); });
#else
  (void)atfork;
#endif
}

bool attach_openmp(const char* path) {
#if defined(__unix__) || defined(__APPLE__)
  const bool named = path && *path;
  void* handle = named ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : RTLD_DEFAULT;  // RTLD_DEFAULT is null
  if (named && !handle) return false;
  using Parallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
  using Query = int (*)();
  auto parallel = reinterpret_cast<Parallel>(dlsym(handle, "GOMP_parallel"));
  auto thread_num = reinterpret_cast<Query>(dlsym(handle, "omp_get_thread_num"));
  auto in_parallel = reinterpret_cast<Query>(dlsym(handle, "omp_in_parallel"));
  if (!parallel || !thread_num || !in_parallel) {
    if (named) dlclose(handle);
    return false;
  }
  // Kept, like the handle: a call may still be using the entry points when another detaches. The
  // same runtime attached again reuses its entry; a new one gets a new (a process has one or two).
  static std::mutex m;
  static std::vector<const OpenMP*> known;
  std::lock_guard<std::mutex> lock(m);
  const OpenMP* entry = nullptr;
  for (const OpenMP* k : known)
    if (k->parallel == parallel && k->thread_num == thread_num && k->in_parallel == in_parallel) entry = k;
  if (!entry) known.push_back(entry = new OpenMP{parallel, thread_num, in_parallel});
  g_openmp.store(entry);
  return true;
#else
  (void)path;
  return false;
#endif
}
void detach_openmp() { g_openmp.store(nullptr); }
bool openmp_attached() { return g_openmp.load() != nullptr; }

bool run_stages(int threads, int items, int64_t stages, StageWork& work) {
  const int n = threads < items ? threads : items;
  if (n <= 1 || stages <= 0) return run_alone(items, stages, work);
  if (now_ns() < g_alone_until.load(std::memory_order_relaxed)) {
    g_solo_calls.fetch_add(1, std::memory_order_relaxed);
    return run_alone(items, stages, work);
  }
  Team* t = team();
  if (!t->acquire()) {
    g_solo_calls.fetch_add(1, std::memory_order_relaxed);
    return run_alone(items, stages, work);
  }
  g_team_calls.fetch_add(1, std::memory_order_relaxed);
  auto job = std::make_shared<Job>();
  job->work = &work;
  job->items = items;
  job->n = n;
  job->stages = stages;
  job->claimed.reset(new std::atomic<int64_t>[items]);
  job->caller_cpu = current_cpu();
  job->fp = fp_mode();
  for (int i = 0; i < items; ++i) job->claimed[i].store(0);
  // Inside a parallel region of the lent runtime (a caller already on its threads), a nested
  // region would get one thread: rnncore's own team runs it instead.
  const OpenMP* omp = g_openmp.load();
  if (omp && omp->in_parallel()) omp = nullptr;
  if (omp) g_openmp_calls.fetch_add(1, std::memory_order_relaxed);
  bool ok;
  try {
    ok = omp ? run_on_openmp(*omp, *job) : t->run(job);
  } catch (...) {
    t->release();
    throw;
  }
  t->release();
  if (job->owner.load() >= 0) {  // a stall: after two in a row, run alone for a while
    if (g_stalled_in_a_row.fetch_add(1) + 1 >= 2) {
      const int64_t b = g_backoff.load();
      g_alone_until.store(now_ns() + b);
      g_backoff.store(b * 2 > kBackoffMaxNs ? kBackoffMaxNs : b * 2);
    }
  } else {
    g_stalled_in_a_row.store(0);
    g_backoff.store(kBackoffMinNs);
  }
  return ok;
}

}  // namespace rnncore
