// GEMM micro-kernels for AVX-512F (compiled with -mavx512f -mfma; chosen at
// run time by cnnk::cpu::gemm::isa()). 32 zmm registers: fp32 12 x 32
// (24 accumulators, 2 b vectors, 1 broadcast), fp64 12 x 16.
#include <immintrin.h>

#include <cstdint>

namespace {

struct F32x16 {
  using scalar = float;
  using type = __m512;
  static constexpr int lanes = 16;
  static type load(const float* p) { return _mm512_loadu_ps(p); }
  static type zero() { return _mm512_setzero_ps(); }
  static type set1(float v) { return _mm512_set1_ps(v); }
  static type fma(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
};

struct F64x8 {
  using scalar = double;
  using type = __m512d;
  static constexpr int lanes = 8;
  static type load(const double* p) { return _mm512_loadu_pd(p); }
  static type zero() { return _mm512_setzero_pd(); }
  static type set1(double v) { return _mm512_set1_pd(v); }
  static type fma(type a, type b, type c) { return _mm512_fmadd_pd(a, b, c); }
  static void store(double* p, type v) { _mm512_storeu_pd(p, v); }
};

}  // namespace

#include "micro_kernel_impl.h"

namespace cnnk::cpu::gemm {

MicroKernel<float> avx512_f32() { return make_micro_kernel<F32x16, 12, 2>(); }
MicroKernel<double> avx512_f64() { return make_micro_kernel<F64x8, 12, 2>(); }
int64_t avx512_fma_loop(bool f64, int64_t iterations) {
  return f64 ? fma_loop<F64x8>(iterations) : fma_loop<F32x16>(iterations);
}

}  // namespace cnnk::cpu::gemm
