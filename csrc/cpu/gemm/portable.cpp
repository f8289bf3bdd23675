// GEMM micro-kernels in portable C++ (GCC/Clang vector extensions, 16-byte
// vectors: SSE2 on any x86-64, NEON on aarch64): fp32 4 x 16, fp64 4 x 8.
// The fallback where neither AVX2 nor AVX-512 is present, or where
// CNNK_CPU_ISA=portable asks for it.
#include <cstdint>
#include <cstring>

namespace {

typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x2 __attribute__((vector_size(16)));

template <typename S, typename V>
struct Vec16 {
  using scalar = S;
  using type = V;
  static constexpr int lanes = 16 / sizeof(S);
  static type load(const S* p) {
    type v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static type zero() { return type{}; }
  static type set1(S v) { return type{} + v; }
  static type fma(type a, type b, type c) { return a * b + c; }
  static void store(S* p, type v) { std::memcpy(p, &v, sizeof v); }
};

}  // namespace

#include "micro_kernel_impl.h"

namespace cnnk::cpu::gemm {

MicroKernel<float> portable_f32() { return make_micro_kernel<Vec16<float, f32x4>, 4, 4>(); }
MicroKernel<double> portable_f64() { return make_micro_kernel<Vec16<double, f64x2>, 4, 4>(); }
int64_t portable_fma_loop(bool f64, int64_t iterations) {
  return f64 ? fma_loop<Vec16<double, f64x2>>(iterations) : fma_loop<Vec16<float, f32x4>>(iterations);
}

}  // namespace cnnk::cpu::gemm
