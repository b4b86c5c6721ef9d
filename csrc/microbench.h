// Microbenchmarks of the time loop's parts, for the benchmark suite (rnncore.bench): the step
// GEMM alone, and the floor of a step at N = 1 (a bare GEMV over the team with one stage
// boundary per step). Each returns seconds per call or per step.
#pragma once
#include <cstdint>

namespace rnncore {

// The step GEMM (smallgemm.h, the kernels of this CPU) on packed B, K x Nc, C = A (M x K) * B,
// B hot in cache: the median of `rounds` timings of `reps` calls, seconds per call.
double bench_step_gemm(int64_t M, int64_t K, int64_t Nc, int reps, int rounds);

// A bare GEMV time loop: `rows` output rows of W (rows x K) split over `threads` slices of the
// team, each slice packed once and kept by its thread; at each of `steps` steps every slice
// computes y_slice = W_slice x_t and the team meets once. Median of `rounds`, seconds per step.
double bench_gemv_floor(int64_t rows, int64_t K, int64_t steps, int threads, int rounds);

}  // namespace rnncore
