// What differs between the compilers and systems rnncore builds on: GCC and Clang on Linux
// (glibc and musl), Apple Clang on macOS, clang-cl on Windows. The kernels use GNU vector
// extensions and builtins that all of these accept; cl.exe itself does not (CMakeLists.txt stops
// with a message there).
#pragma once
#include <cstdlib>
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

// The workspace of a call: large buffers (a training forward's cache, the gradients of every step)
// are written once per call, each page faulted in and zeroed by the kernel first. On Linux, where
// transparent huge pages are often granted on request only ("madvise"), those of 8 MiB and more
// ask for them: 2 MiB pages, 512 times fewer faults. Elsewhere, as aligned_malloc.
inline void* workspace_malloc(size_t bytes) {
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

inline void aligned_free(void* p) {
#if defined(_WIN32)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

}  // namespace rnncore
