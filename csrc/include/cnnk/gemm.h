// The cpu backend's GEMM core as a launcher of its own (csrc/cpu/gemm/
// matmul.cpp): C (M x N) = A (M x K) * B (K x N), any strides.
#pragma once
#include <cstdint>

#include "cnnk/common.h"

namespace cnnk {

using Tensor2 = TensorN<2>;

namespace cpu {
Status gemm_matmul(DType dtype, int64_t M, int64_t N, int64_t K, Tensor2 a, Tensor2 b, Tensor2 c);
}  // namespace cpu

}  // namespace cnnk
