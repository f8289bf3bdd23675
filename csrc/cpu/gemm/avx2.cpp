// GEMM micro-kernels for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at
// run time by cnnk::cpu::gemm::isa()). 16 ymm registers: fp32 6 x 16
// (12 accumulators, 2 b vectors, 1 broadcast), fp64 6 x 8.
#include <immintrin.h>

#include <cstdint>

namespace {

struct F32x8 {
  using scalar = float;
  using type = __m256;
  static constexpr int lanes = 8;
  static type load(const float* p) { return _mm256_loadu_ps(p); }
  static type zero() { return _mm256_setzero_ps(); }
  static type set1(float v) { return _mm256_set1_ps(v); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
};

struct F64x4 {
  using scalar = double;
  using type = __m256d;
  static constexpr int lanes = 4;
  static type load(const double* p) { return _mm256_loadu_pd(p); }
  static type zero() { return _mm256_setzero_pd(); }
  static type set1(double v) { return _mm256_set1_pd(v); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
  static void store(double* p, type v) { _mm256_storeu_pd(p, v); }
};

}  // namespace

#include "micro_kernel_impl.h"

namespace cnnk::cpu::gemm {

MicroKernel<float> avx2_f32() { return make_micro_kernel<F32x8, 6, 2>(); }
MicroKernel<double> avx2_f64() { return make_micro_kernel<F64x4, 6, 2>(); }
int64_t avx2_fma_loop(bool f64, int64_t iterations) {
  return f64 ? fma_loop<F64x4>(iterations) : fma_loop<F32x8>(iterations);
}

}  // namespace cnnk::cpu::gemm
