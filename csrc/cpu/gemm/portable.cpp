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

using F32x4 = Vec16<float, f32x4>;
using F64x2 = Vec16<double, f64x2>;

}  // namespace

#include "micro_kernel_impl.h"

CNNK_MICRO_KERNELS(portable, F32x4, F64x2, 4, 4)
