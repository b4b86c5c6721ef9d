#include "microbench.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "dispatch.h"
#include "driver.h"
#include "team.h"

namespace rnncore {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::vector<float> filled(int64_t n, float scale) {
  std::vector<float> v(size_t(std::max<int64_t>(n, 0)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * float(int64_t(i * 2654435761u % 1000) - 500) / 500.0f;
  return v;
}

}  // namespace

double bench_step_gemm(int64_t M, int64_t K, int64_t Nc, int reps, int rounds) {
  const StepGemm<float> g = kernels<float>(0).step;
  const std::vector<float> A = filled(M * K, 1.0f), W = filled(Nc * K, 0.01f);
  Buffer<float> Bp(g.packed_size(K, Nc));
  std::vector<float> C(size_t(M * Nc));
  g.pack(W.data(), K, true, K, Nc, Nc, 0, Bp.data());
  g.gemm(M, K, Nc, A.data(), K, Bp.data(), false, C.data(), Nc);
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) g.gemm(M, K, Nc, A.data(), K, Bp.data(), false, C.data(), Nc);
    t.push_back(seconds_since(t0) / reps);
  }
  return median(t);
}

double bench_gemv_floor(int64_t rows, int64_t K, int64_t steps, int threads, int rounds) {
  const StepGemm<float> g = kernels<float>(0).step;
  const int parts = std::max(1, threads);
  const std::vector<float> W = filled(rows * K, 0.01f);
  const std::vector<float> x = filled(K, 1.0f);
  std::vector<float> y(static_cast<size_t>(rows));
  std::vector<int64_t> cut(parts + 1);
  const int64_t blocks = (rows + 15) / 16;
  for (int p = 0; p <= parts; ++p) cut[p] = std::min(rows, blocks * p / parts * 16);
  std::vector<int64_t> off(parts + 1, 0);
  for (int p = 0; p < parts; ++p) off[p + 1] = off[p] + g.packed_size(K, cut[p + 1] - cut[p]);
  Buffer<float> Bp(off[parts]);
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    // stage 0: each thread packs its slice (as the time loop does); then one stage per step
    run_stages(parts, parts, steps + 1, [&](int p, int64_t stage) {
      const int64_t n = cut[p + 1] - cut[p];
      if (stage == 0)
        g.pack(W.data() + cut[p] * K, K, true, K, n, n, 0, Bp.data() + off[p]);
      else
        g.gemm(1, K, n, x.data(), K, Bp.data() + off[p], false, y.data() + cut[p], n);
    });
    t.push_back(seconds_since(t0) / double(steps));
  }
  return median(t);
}

}  // namespace rnncore
