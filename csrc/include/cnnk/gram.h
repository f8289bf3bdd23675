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
//   style_loss             the fused Gram and style loss:
//                          out[0] = loss_scale * sum_b sum_ij (gram_scale * G[b] - target[b])^2
//                          with G[b] = x[b] x[b]^T never written; optionally the
//                          residual R[b] = gram_scale * G[b] - target[b] (what the
//                          derivatives read).
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

// Split reduction (the CUDA and Triton forwards; the cpu splits its own
// way and ignores these fields): when the upper triangle's tiles times the
// images are too few blocks to fill the GPU, L is cut into `splits` slices
// of `slice_len` positions (the last one shorter). Phase 1: a block per
// (tile, image, slice) writes its slice's partial tile, unscaled, in the
// accumulator type (float; double for double) to a workspace of
// splits x B x C x C elements, [(s * B + b) * C + i] * C + j (upper tiles
// only; the rest is never read). Phase 2: each upper element's slices are
// added in slice order (deterministic, no atomics), then the unsplit
// kernels' epilogue runs on the sum. splits == 1 is the single pass (no
// workspace). The split count is the plan's (cnnkernels/ops/gram.py,
// split_plan); slice_len is a multiple of kGramSliceAlign, a whole number
// of every kernel's reduction steps, so no step straddles two slices.
constexpr int64_t kGramSliceAlign = 64;

// Field for field the Python GramGeometry (cnnkernels/ops/gram.py).
struct GramGeometry {
  int64_t B, C, L;              // batch, channels, flattened plane
  int64_t splits, slice_len;    // slices of L (see above); 1 and L unsplit
};

// Sums of differences (the content loss and its derivatives), over N
// elements of dense tensors viewed flat, in chunks of `chunk` elements:
// each chunk's partial sum (accumulator type) goes to `partials`
// (ceil(N / chunk) of them), which are then added in chunk order. Every
// backend chunks alike, so the sum is deterministic.
struct DifferenceGeometry {
  int64_t N, chunk;
};

// The fused style loss (StyleLossGeometry mirrors the Python dataclass):
// every backend cuts the C x C matrix into tile x tile tiles and writes one
// partial sum per tile to partials[(b * tiles + ti) * tiles + tj] (tiles =
// ceil(C / tile)); a tile on or above the diagonal (ti <= tj) holds, for its
// elements i <= j, (e - target[i, j])^2 plus, off the diagonal (i < j),
// (e - target[j, i])^2 with e = gram_scale * G[i, j]: the lower triangle
// is taken through the upper one, so any target works, symmetric or not.
// Tiles below the diagonal hold 0. The partials are then added in index
// order (deterministic) and scaled by loss_scale. target and residual are
// (B, C, C) through their strides (a shared target has batch stride 0);
// residual.data may be null (not wanted).
// splits and slice_len as GramGeometry's.
struct StyleLossGeometry {
  int64_t B, C, L, tile;
  int64_t splits, slice_len;
};

// A split into slices is whole steps of kGramSliceAlign, every slice
// non-empty: (splits - 1) * slice_len < L <= splits * slice_len.
inline bool valid_split(int64_t L, int64_t splits, int64_t slice_len) {
  if (splits == 1) return true;
  return splits > 1 && slice_len > 0 && slice_len % kGramSliceAlign == 0 &&
         splits == ceil_div(L, slice_len);
}

inline Status check_gram_geometry(const GramGeometry& g) {
  return g.B < 0 || g.C < 0 || g.L < 0 || !valid_split(g.L, g.splits, g.slice_len)
             ? Status::bad_argument
             : Status::ok;
}

inline Status check_style_geometry(const StyleLossGeometry& g) {
  return g.B < 0 || g.C < 0 || g.L < 0 || g.tile <= 0 || !valid_split(g.L, g.splits, g.slice_len)
             ? Status::bad_argument
             : Status::ok;
}

// The split forward's workspace in elements (splits x B x C x C); 0 unsplit.
inline int64_t gram_split_workspace_elements(int64_t B, int64_t C, int64_t splits) {
  return splits > 1 ? splits * B * C * C : 0;
}

namespace cpu {
// other.data may be null (the plain Gram).
Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram);
Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x);
Status style_loss(DType dtype, const StyleLossGeometry& g, Tensor3 x, Tensor3 target,
                  double gram_scale, double loss_scale, Tensor1 partials, Tensor3 residual,
                  Tensor1 out);
// out[0] = scale * sum (u - v)(a - b); v.data or b.data may be null (zero).
Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out);
// out = scale * weight[0] * (a - b); b.data may be null (zero).
Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Same contracts as the CPU launchers; work is queued on `stream`. The
// forwards take the split reduction's workspace (at least
// gram_split_workspace_elements accumulators; empty when splits == 1). The
// Gram products run on tensor cores (csrc/cuda/gram.cu) for f16 and bf16,
// and for f32 as TF32 when allow_tf32 (Python passes
// torch.backends.cuda.matmul.allow_tf32, torch's rule for bmm); f64 and
// exact f32 run on the CUDA cores.
Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram, Workspace workspace, bool allow_tf32, cudaStream_t stream);
Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x, bool allow_tf32, cudaStream_t stream);
Status style_loss(DType dtype, const StyleLossGeometry& g, Tensor3 x, Tensor3 target,
                  double gram_scale, double loss_scale, Tensor1 partials, Tensor3 residual,
                  Tensor1 out, Workspace workspace, bool allow_tf32, cudaStream_t stream);
Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out,
                      cudaStream_t stream);
Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
