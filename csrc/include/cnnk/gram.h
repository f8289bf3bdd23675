// gram: Gram matrices of feature maps (neural style transfer's style
// representation). The geometry shared by the CPU and CUDA kernels and the
// launchers of both backends.
//
// Shapes: features x (B, C, L), a (B, C, H, W) map with its plane flattened
// (L = H * W; NCHW and channels_last flatten to a view, so either layout
// arrives without a copy: the l stride is 1 or C); gram (B, C, C). Every
// tensor is a pointer plus its three strides.
//
//   gram_matrix            gram[b] = scale * x[b] x[b]^T, or with `other`
//                          (same shape as x) the symmetrised product
//                          scale * (x[b] other[b]^T + other[b] x[b]^T): the
//                          Gram's derivative along a tangent (jvp) and the
//                          adjoint of its backward (double backward).
//   gram_matrix_backward   grad_x[b] = scale * (grad_gram[b] + grad_gram[b]^T) x[b].
//
// The gram is symmetric: the kernels compute the upper triangle's tiles only
// and store each tile twice (itself and its transpose), so a forward costs
// B * C * (C + tile) * L multiply-adds instead of B * C^2 * L. Reductions run
// in a fixed order (deterministic), accumulating in float (double for double).
#pragma once

#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk {

using Tensor3 = TensorN<3>;

// Field for field the Python GramGeometry (cnnkernels/ops/gram.py).
struct GramGeometry {
  int64_t B, C, L;  // batch, channels, flattened plane
};

// Sums of differences (the content loss and its derivatives), over N
// elements of dense tensors viewed flat, in chunks of `chunk` elements:
// each chunk's partial sum (accumulator type) goes to `partials`
// (ceil(N / chunk) of them), which are then added in chunk order. Every
// backend chunks alike, so the sum is deterministic.
struct DifferenceGeometry {
  int64_t N, chunk;
};

inline Status check_gram_geometry(const GramGeometry& g) {
  return g.B < 0 || g.C < 0 || g.L < 0 ? Status::bad_argument : Status::ok;
}

namespace cpu {
// other.data may be null (the plain Gram).
Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram);
Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x);
// out[0] = scale * sum (u - v)(a - b); v.data or b.data may be null (zero).
Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out);
// out = scale * weight[0] * (a - b); b.data may be null (zero).
Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Same contracts as the CPU launchers; work is queued on `stream`.
Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram, cudaStream_t stream);
Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x, cudaStream_t stream);
Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out,
                      cudaStream_t stream);
Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
