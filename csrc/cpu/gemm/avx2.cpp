// GEMM micro-kernels for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at
// run time by cnnk::cpu::gemm::isa()). 16 ymm registers: fp32 6 x 16
// (12 accumulators, 2 b vectors, 1 broadcast), fp64 6 x 8.
#include <cstdint>

#include "x86_vector.h"

namespace {
CNNK_X86_VECTOR(F32x8, float, __m256, 8, _mm256_, ps);
CNNK_X86_VECTOR(F64x4, double, __m256d, 4, _mm256_, pd);
}  // namespace

#include "micro_kernel_impl.h"

CNNK_MICRO_KERNELS(avx2, F32x8, F64x4, 6, 2)
