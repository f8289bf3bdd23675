// The instruction set of the cpu backend's GEMM core, chosen at run time
// (never -march=native: one build runs on any x86-64 and on aarch64 with the
// portable kernels), and the FMA-throughput probe that gives its roofline.
#include <omp.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

#include "cnnk/cpu_gemm.h"

namespace cnnk::cpu::gemm {
namespace {

Isa best_supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::portable;
}

Isa choose() {
  const Isa best = best_supported();
  const char* wanted = std::getenv("CNNK_CPU_ISA");
  if (wanted == nullptr) return best;
  for (Isa candidate : {Isa::portable, Isa::avx2, Isa::avx512})
    if (std::strcmp(wanted, isa_name(candidate)) == 0 && candidate <= best) return candidate;
  return best;  // unknown, or not supported here: the best there is
}

int64_t fma_loop(bool f64, int64_t iterations) {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::avx512: return avx512_fma_loop(f64, iterations);
    case Isa::avx2: return avx2_fma_loop(f64, iterations);
#endif
    default: return portable_fma_loop(f64, iterations);
  }
}

}  // namespace

Isa isa() {
  static const Isa chosen = choose();
  return chosen;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "portable";
  }
}

MicroKernel<float> micro_kernel_f32() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::avx512: return avx512_f32();
    case Isa::avx2: return avx2_f32();
#endif
    default: return portable_f32();
  }
}

MicroKernel<double> micro_kernel_f64() {
  switch (isa()) {
#if defined(__x86_64__)
    case Isa::avx512: return avx512_f64();
    case Isa::avx2: return avx2_f64();
#endif
    default: return portable_f64();
  }
}

double fma_peak(bool f64, int threads, double seconds) {
  using clock = std::chrono::steady_clock;
  // Calibrate the iteration count on one thread, then run all threads at
  // once (they share the cores' power budget) and take the slowest.
  int64_t iterations = 1 << 16;
  double elapsed = 0;
  while (true) {
    const auto start = clock::now();
    fma_loop(f64, iterations);
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
    if (elapsed > seconds / 8 || iterations > (int64_t{1} << 40)) break;
    iterations *= 4;
  }
  iterations = static_cast<int64_t>(iterations * (seconds / elapsed));
  if (iterations < 1) iterations = 1;
  double flops = 0, slowest = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops) reduction(max : slowest)
  {
    const auto start = clock::now();
    flops += static_cast<double>(fma_loop(f64, iterations));
    slowest = std::chrono::duration<double>(clock::now() - start).count();
  }
  return flops / slowest;
}

}  // namespace cnnk::cpu::gemm
