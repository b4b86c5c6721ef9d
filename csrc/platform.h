// What differs between the compilers and systems rnncore builds on: GCC and Clang on Linux
// (glibc and musl), Apple Clang on macOS, clang-cl on Windows. The kernels use GNU vector
// extensions and builtins that all of these accept; cl.exe itself does not (CMakeLists.txt stops
// with a message there).
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#if defined(_WIN32)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define RNNCORE_X86 1
#else
#define RNNCORE_X86 0
#endif

// A C function exported from the extension module (a .pyd exports only what is marked).
#if defined(_WIN32)
#define RNNCORE_EXPORT __declspec(dllexport)
#else
#define RNNCORE_EXPORT __attribute__((visibility("default")))
#endif

namespace rnncore {

// 64-byte aligned allocation: std::aligned_alloc is C++17 but missing from the Microsoft C runtime.
inline void* aligned_malloc(size_t alignment, size_t bytes) {
#if defined(_WIN32)
  return _aligned_malloc(bytes, alignment);
#else
  return std::aligned_alloc(alignment, bytes);
#endif
}

inline void aligned_free(void* p) {
#if defined(_WIN32)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

// Fresh large buffers: a training forward's cache, the gradients of every step. Each page of a
// fresh buffer is faulted in and zeroed by the kernel when first written. On Linux, where
// transparent huge pages are often granted on request only ("madvise"), those of 8 MiB and more
// ask for them: 2 MiB pages, 512 times fewer faults. Elsewhere, as aligned_malloc.
inline void* fresh_workspace(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes >= 4 * kHuge) {
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, rounded);
    if (p) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure changes nothing
    return p;
  }
#endif
  return aligned_malloc(64, bytes);
}

// Large workspace blocks freed by a call are kept for the next calls: the C library would
// otherwise often hand such blocks back to the system (munmap, or a trimmed heap) and the next
// call would fault every page in again (seen in a PyTorch training step with rnncore's LSTM,
// where PyTorch's own allocations interleave with rnncore's). Output arrays of that size take
// their memory from here too and give it back when NumPy frees them (bindings.cpp). Blocks of
// 1 MiB and more are kept, at most kSlots of them and kMaxHeld bytes in all, the oldest given
// back first; a block serves a request of at least half its size. Blocks nobody took for one
// second are given back at the next allocation or free of any size (any later call), and
// release() gives back all. Thread-safe.
class WorkspacePool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kMaxHeld = size_t(256) << 20;
  static constexpr int kSlots = 16;

  static WorkspacePool& get() { return *instance().load(std::memory_order_acquire); }
  // In a forked child: another thread of the parent may have held the pool's lock at the fork,
  // so the child starts an empty pool of its own (the parent's copy and its blocks are left).
  static void forget_after_fork() { instance().store(new WorkspacePool); }
  // A block of at least `bytes` (its size in *got), or nullptr: none fits.
  void* take(size_t bytes, size_t* got) {
    std::lock_guard<std::mutex> lock(mutex_);
    expire();
    if (bytes < kMinBytes) return nullptr;
    int best = -1;
    for (int i = 0; i < n_; ++i)
      if (slot_[i].bytes >= bytes && slot_[i].bytes / 2 <= bytes && (best < 0 || slot_[i].bytes < slot_[best].bytes))
        best = i;
    if (best < 0) return nullptr;
    void* p = slot_[best].p;
    *got = slot_[best].bytes;
    held_ -= slot_[best].bytes;
    slot_[best] = slot_[--n_];
    return p;
  }
  // Keeps the block for later calls, or frees it (too small, or the pool is full of newer ones).
  void give(void* p, size_t bytes) {
    if (!p) return;
    void* drop[kSlots + 1];
    int dropped = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      expire();
      if (bytes < kMinBytes || bytes > kMaxHeld) {
        drop[dropped++] = p;
        p = nullptr;
      }
      while (p && n_ > 0 && (n_ == kSlots || held_ + bytes > kMaxHeld)) drop[dropped++] = pop_oldest();
      if (p) {
        slot_[n_++] = {p, bytes, now()};
        held_ += bytes;
      }
    }
    for (int i = 0; i < dropped; ++i) aligned_free(drop[i]);
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }
  // Gives every kept block back to the system.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (n_ > 0) aligned_free(pop_oldest());
  }

 private:
  struct Slot {
    void* p;
    size_t bytes;
    int64_t stamp;
  };
  static int64_t now();  // milliseconds, steady clock (team.cpp)
  static std::atomic<WorkspacePool*>& instance() {
    static std::atomic<WorkspacePool*> pool{new WorkspacePool};  // never destroyed: blocks may be freed at exit
    return pool;
  }
  void* pop_oldest() {
    int o = 0;
    for (int i = 1; i < n_; ++i)
      if (slot_[i].stamp < slot_[o].stamp) o = i;
    void* p = slot_[o].p;
    held_ -= slot_[o].bytes;
    slot_[o] = slot_[--n_];
    return p;
  }
  void expire() {  // called with the lock held
    const int64_t t = now();
    for (int i = 0; i < n_;)
      if (t - slot_[i].stamp > 1000) {
        aligned_free(slot_[i].p);
        held_ -= slot_[i].bytes;
        slot_[i] = slot_[--n_];
      } else {
        ++i;
      }
  }
  std::mutex mutex_;
  Slot slot_[kSlots] = {};
  int n_ = 0;
  size_t held_ = 0;
};

// The workspace of a call: a kept block when one fits, else a fresh one. `bytes` is updated to
// the block's size, which workspace_free needs.
inline void* workspace_malloc(size_t& bytes) {
  size_t got = 0;
  if (void* p = WorkspacePool::get().take(bytes, &got)) {
    bytes = got;
    return p;
  }
  return fresh_workspace(bytes);
}
inline void workspace_free(void* p, size_t bytes) { WorkspacePool::get().give(p, bytes); }

}  // namespace rnncore
