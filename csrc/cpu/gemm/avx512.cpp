// GEMM micro-kernels for AVX-512F (compiled with -mavx512f -mfma; chosen at
// run time by cnnk::cpu::gemm::isa()). 32 zmm registers: fp32 12 x 32
// (24 accumulators, 2 b vectors, 1 broadcast), fp64 12 x 16.
#include <cstdint>

#include "x86_vector.h"

namespace {
CNNK_X86_VECTOR(F32x16, float, __m512, 16, _mm512_, ps);
CNNK_X86_VECTOR(F64x8, double, __m512d, 8, _mm512_, pd);
}  // namespace

#include "micro_kernel_impl.h"

CNNK_MICRO_KERNELS(avx512, F32x16, F64x8, 12, 2)
