// The register-tiled GEMM micro-kernel and the FMA-rate loop, written once
// over a vector type; included only by the instruction-set files
// (csrc/cpu/gemm/<isa>.cpp), each after defining its vector traits:
//   struct V { using scalar; using type; static constexpr int lanes;
//              static type load(const scalar*), zero(), set1(scalar),
//              fma(type a, type b, type c);  // a * b + c
//              static void store(scalar*, type); };
// Everything here has internal linkage (anonymous namespace), so each file
// keeps its own copy, compiled for its own instruction set.
#pragma once
#include <cstdint>

#include "cnnk/cpu_micro_kernel.h"

namespace {

// MR x (NV * lanes) tile, accumulators in registers: per reduction step NV
// vector loads of b, MR broadcasts of a and MR * NV FMAs (cnnk/cpu_micro_kernel.h).
// A's step l starts at a + l * lda (the packed micro-panel: lda = MR); B's
// row l at b + row(l): the packed micro-panel (l * NR), a row of an input
// plane (rows[l]) or a row of a reduction-major matrix (l * ldb).
template <typename V, int MR, int NV, bool PrefetchNext, typename Row>
inline __attribute__((always_inline)) void micro_tile(
    int64_t kc, const typename V::scalar* a, int64_t lda, const typename V::scalar* b, Row row,
    typename V::scalar* c, int64_t ldc, bool accumulate) {
  typename V::type acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? V::load(c + i * ldc + j * V::lanes) : V::zero();
#pragma GCC unroll 4
  for (int64_t l = 0; l < kc; ++l) {
    typename V::type bv[NV];
    const typename V::scalar* b_row = b + row(l);
    if constexpr (PrefetchNext) {
      constexpr int line = 64 / sizeof(typename V::scalar);
#pragma GCC unroll 4
      for (int j = 0; j < NV * V::lanes; j += line) __builtin_prefetch(b_row + NV * V::lanes + j);
    }
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = V::load(b_row + j * V::lanes);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::type av = V::set1(a[l * lda + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * V::lanes, acc[i][j]);
}

template <typename V, int MR, int NV>
void micro_kernel(int64_t kc, const typename V::scalar* a, const typename V::scalar* b,
                  typename V::scalar* c, int64_t ldc, bool accumulate) {
  micro_tile<V, MR, NV, false>(kc, a, MR, b, [](int64_t l) { return l * NV * V::lanes; }, c,
                               ldc, accumulate);
}

template <typename V, int MR, int NV>
void micro_kernel_rows(int64_t kc, const typename V::scalar* a, const typename V::scalar* b,
                       const int64_t* rows, typename V::scalar* c, int64_t ldc,
                       bool accumulate) {
  micro_tile<V, MR, NV, true>(kc, a, MR, b, [rows](int64_t l) { return rows[l]; }, c, ldc,
                              accumulate);
}

template <typename V, int MR, int NV>
void micro_kernel_strided(int64_t kc, const typename V::scalar* a, int64_t lda,
                          const typename V::scalar* b, int64_t ldb, typename V::scalar* c,
                          int64_t ldc, bool accumulate) {
  micro_tile<V, MR, NV, false>(kc, a, lda, b, [ldb](int64_t l) { return l * ldb; }, c, ldc,
                               accumulate);
}

template <typename V, int MR, int NV>
cnnk::cpu::gemm::MicroKernel<typename V::scalar> make_micro_kernel() {
  return {MR, NV * V::lanes, &micro_kernel<V, MR, NV>, &micro_kernel_rows<V, MR, NV>,
          &micro_kernel_strided<V, MR, NV>};
}

// `iterations` rounds of 12 independent vector FMA chains (enough to cover
// the FMA latency times the FMA ports of current cores); returns the
// floating-point operations done.
template <typename V>
int64_t fma_loop(int64_t iterations) {
  constexpr int chains = 12;
  typename V::type acc[chains];
  const typename V::type x = V::set1(typename V::scalar(0.999999)),
                         y = V::set1(typename V::scalar(1e-7));
#pragma GCC unroll 12
  for (int i = 0; i < chains; ++i) acc[i] = V::set1(typename V::scalar(i));
  for (int64_t it = 0; it < iterations; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < chains; ++i) acc[i] = V::fma(acc[i], x, y);
  typename V::scalar out[V::lanes];
  typename V::type sum = acc[0];
#pragma GCC unroll 12
  for (int i = 1; i < chains; ++i) sum = V::fma(sum, x, acc[i]);
  V::store(out, sum);
  volatile typename V::scalar sink = out[0];  // keeps the loop
  (void)sink;
  return iterations * chains * V::lanes * 2;
}

}  // namespace

// Defines an instruction-set file's entry points (cnnk/cpu_micro_kernel.h):
// <isa>_f32, <isa>_f64 (tiles of MR rows and NV vectors) and <isa>_fma_loop.
#define CNNK_MICRO_KERNELS(isa, F32, F64, MR, NV)                                 \
  namespace cnnk::cpu::gemm {                                                     \
  MicroKernel<float> isa##_f32() { return make_micro_kernel<F32, MR, NV>(); }     \
  MicroKernel<double> isa##_f64() { return make_micro_kernel<F64, MR, NV>(); }    \
  int64_t isa##_fma_loop(bool f64, int64_t iterations) {                          \
    return f64 ? fma_loop<F64>(iterations) : fma_loop<F32>(iterations);           \
  }                                                                               \
  }
