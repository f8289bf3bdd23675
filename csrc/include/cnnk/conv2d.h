// conv2d: the geometry shared by every algorithm and backend, the index math
// the kernels share, and the launchers of each algorithm (one source file per
// algorithm and backend: csrc/cpu/conv2d/<algorithm>.cpp,
// csrc/cuda/conv2d/<algorithm>.cu).
//
// Shapes (torch's): input x (N, C, H, W), weight w (K, C/groups, R, S),
// output y (N, K, P, Q). Every tensor is passed as a pointer plus its four
// strides, so NCHW, channels_last and non-contiguous views need no copy.
#pragma once

#include <cstddef>

#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk {

// Field for field the Python Conv2dGeometry (cnnkernels/ops/conv2d.py); the
// bindings fill it by field name.
struct Conv2dGeometry {
  int64_t N, C, H, W;   // input: batch, channels, height, width
  int64_t K, R, S;      // output channels, filter height and width
  int64_t P, Q;         // output height and width
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_left;  // the bottom and right padding only shape P and Q
  int64_t dil_h, dil_w;
  int64_t groups;
  Activation activation;  // fused into the epilogue; its derivative into the backward

  CNNK_HOST_DEVICE int64_t C_g() const { return C / groups; }
  CNNK_HOST_DEVICE int64_t K_g() const { return K / groups; }
  // Length of one output element's reduction: C/groups * R * S.
  CNNK_HOST_DEVICE int64_t reduction_size() const { return C_g() * R * S; }
};

// Input row (or column) read by output index o at filter tap k.
CNNK_HOST_DEVICE int64_t conv_input_index(int64_t o, int64_t k, int64_t stride, int64_t pad,
                                          int64_t dil) {
  return o * stride - pad + k * dil;
}

// Half-open range [lo, hi) of output indices o whose tap k reads inside
// [0, in_size): the loops of the direct kernels run over it instead of
// testing every tap against the padding.
CNNK_HOST_DEVICE IndexRange conv_valid_outputs(int64_t out_size, int64_t in_size, int64_t k,
                                               int64_t stride, int64_t pad, int64_t dil) {
  // o * stride - pad + k * dil >= 0  <=>  o >= ceil((pad - k * dil) / stride)
  int64_t lo = -floor_div(k * dil - pad, stride);
  // o * stride - pad + k * dil <= in_size - 1
  int64_t hi = floor_div(in_size - 1 + pad - k * dil, stride) + 1;
  lo = lo < 0 ? 0 : lo;
  hi = hi > out_size ? out_size : hi;
  return {lo, hi < lo ? lo : hi};
}

// Column j of one group's patch matrix (the im2col algorithm) is filter tap
// (r, s) of channel c, in the order of the weight's memory so that the weight
// is the GEMM operand without a copy: j = (c * R + r) * S + s for a contiguous
// weight, j = (r * S + s) * C_g + c for a channels_last one.
struct PatchColumn {
  int64_t c, r, s;
};
CNNK_HOST_DEVICE PatchColumn patch_column(int64_t j, int64_t C_g, int64_t R, int64_t S,
                                          bool taps_channels_last) {
  const int64_t tap = taps_channels_last ? j / C_g : j % (R * S);
  const int64_t c = taps_channels_last ? j - tap * C_g : j / (R * S);
  return {c, tap / S, tap % S};
}
CNNK_HOST_DEVICE int64_t patch_column_index(int64_t c, int64_t r, int64_t s, int64_t C_g,
                                            int64_t R, int64_t S, bool taps_channels_last) {
  return taps_channels_last ? (r * S + s) * C_g + c : (c * R + r) * S + s;
}

// Checks every launcher does before touching memory.
inline Status check_conv2d_geometry(const Conv2dGeometry& g) {
  if (g.N < 0 || g.C <= 0 || g.H <= 0 || g.W <= 0 || g.K <= 0 || g.R <= 0 || g.S <= 0 ||
      g.P <= 0 || g.Q <= 0 || g.stride_h <= 0 || g.stride_w <= 0 || g.pad_top < 0 ||
      g.pad_left < 0 || g.dil_h <= 0 || g.dil_w <= 0 || g.groups <= 0 || g.C % g.groups != 0 ||
      g.K % g.groups != 0)
    return Status::bad_argument;
  if (g.activation != Activation::none && g.activation != Activation::relu &&
      g.activation != Activation::relu6 && g.activation != Activation::silu)
    return Status::bad_argument;
  return Status::ok;
}

// Every launcher's checks of its geometry and tensors (an empty batch needs
// no data but grad_weight's output, which it zeroes). The forward's bias,
// residual and preact are optional: any of them may be null.
inline Status check_forward_launch(const Conv2dGeometry& g, const Tensor4& x, const Tensor4& w,
                                   const Tensor4& y) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  return g.N == 0 || (x.data && w.data && y.data) ? Status::ok : Status::bad_argument;
}

inline Status check_activation_grad_launch(const Conv2dGeometry& g, const Tensor4& grad_y,
                                           const Tensor4& saved, const Tensor4& grad_z) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (g.N == 0) return Status::ok;
  if (!grad_y.data || !grad_z.data) return Status::bad_argument;
  return g.activation == Activation::none || saved.data ? Status::ok : Status::bad_argument;
}

inline Status check_grad_input_launch(const Conv2dGeometry& g, const Tensor4& grad_y,
                                      const Tensor4& y, const Tensor4& w, const Tensor4& grad_x) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (g.N == 0) return Status::ok;
  if (!grad_y.data || !w.data || !grad_x.data) return Status::bad_argument;
  return g.activation == Activation::none || y.data ? Status::ok : Status::bad_argument;
}

inline Status check_grad_weight_launch(const Conv2dGeometry& g, const Tensor4& grad_y,
                                       const Tensor4& y, const Tensor4& x,
                                       const Tensor4& grad_w) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (!grad_w.data || (g.N > 0 && (!grad_y.data || !x.data))) return Status::bad_argument;
  return g.N == 0 || g.activation == Activation::none || y.data ? Status::ok
                                                                 : Status::bad_argument;
}

// The epilogue, every algorithm's forward (the launchers below):
//   z = conv(x, w) + bias[k] + residual[n, k, p, q];  preact = z;  y = act(z)
// in the accumulator type, in one pass over the output. bias.data,
// residual.data and preact.data may be null (no bias, no residual, z not
// kept); residual and preact have the output's shape, any strides.
// The backward launchers read the activation's derivative from `y`: the
// forward output for relu and relu6, the pre-activation z for silu; it may
// be null when no activation was fused.
//
// conv2d_activation_grad (every backend, csrc/{cpu,cuda}/conv2d/activation.*):
// grad_z = activation_grad(grad_y, saved, g.activation) elementwise over the
// output (N, K, P, Q) of g: the gradient of z, hence of the residual.

namespace cpu {
// Direct algorithm (csrc/cpu/conv2d/direct.cpp).
Status conv2d_direct_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                             Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact);
// grad_x from grad_y, masked by the activation's derivative at y.
Status conv2d_direct_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                Tensor4 w, Tensor4 grad_x);
// grad_w and (when grad_bias.data is set) grad_bias, in one pass over grad_y.
Status conv2d_direct_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                 Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias);
// The implicit_gemm algorithm (csrc/cpu/conv2d/implicit_gemm.cpp): the
// same contracts.
Status conv2d_implicit_gemm_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                    Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact);
Status conv2d_implicit_gemm_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                       Tensor4 y, Tensor4 w, Tensor4 grad_x);
Status conv2d_implicit_gemm_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                        Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias);
// The depthwise algorithm (csrc/cpu/conv2d/depthwise.cpp): the same
// contracts, for one input channel per group (C/groups == 1; any other
// geometry returns Status::bad_argument).
Status conv2d_depthwise_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact);
Status conv2d_depthwise_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                   Tensor4 y, Tensor4 w, Tensor4 grad_x);
Status conv2d_depthwise_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                    Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias);
// The im2col algorithm's patch matrix (csrc/cpu/conv2d/im2col.cpp), every
// dtype: patches (N, G*J, P, Q), J = C/G*R*S, patches[n, grp*J + j, p, q] =
// x[n, grp*C/G + c, p*stride_h - pad_top + r*dil_h, q*stride_w - pad_left + s*dil_w]
// (0 outside the input) for column j = patch_column_index(c, r, s, ...).
// col2im is its adjoint: each grad_x element sums the patch entries that
// read it (a gather in fixed tap order, no atomics).
Status conv2d_im2col(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 patches,
                     bool taps_channels_last);
Status conv2d_col2im(DType dtype, const Conv2dGeometry& g, Tensor4 grad_patches, Tensor4 grad_x,
                     bool taps_channels_last);
// grad_z (csrc/cpu/conv2d/activation.cpp).
Status conv2d_activation_grad(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                              Tensor4 saved, Tensor4 grad_z);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Direct algorithm (csrc/cuda/conv2d/direct.cu): the CPU launchers'
// contracts; work is queued on `stream`.
Status conv2d_direct_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                             Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                             cudaStream_t stream);
Status conv2d_direct_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                Tensor4 w, Tensor4 grad_x, cudaStream_t stream);
// Bytes of device scratch conv2d_direct_grad_weight needs for its split reduction.
size_t conv2d_direct_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g);
Status conv2d_direct_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                 Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                 Workspace workspace, cudaStream_t stream);
// The implicit_gemm algorithm on tensor cores (csrc/cuda/conv2d/
// implicit_gemm.cu): f16 and bf16, and f32 as TF32 when allow_tf32 (Python
// passes torch.backends.cudnn.allow_tf32); f32 without TF32 and f64 return
// Status::unsupported_dtype, and Python routes them to the direct algorithm.
// Forward epilogue, one pass over the output: z = conv(x, w) + bias[k] +
// residual[n, k, p, q]; preact = z; y = act(z) (bias, residual, preact may
// be absent; residual and preact have y's shape, any strides).
Status conv2d_implicit_gemm_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                    Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                                    bool allow_tf32, cudaStream_t stream);
// grad_x; `y` is the tensor the activation's derivative is read from (the
// forward output for relu/relu6, the pre-activation for silu).
Status conv2d_implicit_gemm_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                       Tensor4 y, Tensor4 w, Tensor4 grad_x, bool allow_tf32,
                                       cudaStream_t stream);
// Bytes of device scratch conv2d_implicit_gemm_grad_weight needs for its
// split reduction (f32 sized as TF32; 0 for a dtype it does not take).
size_t conv2d_implicit_gemm_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g);
// grad_w and (when grad_bias.data is set) grad_bias; `y` as in grad_input.
// Deterministic: the split partial sums are added in split order.
Status conv2d_implicit_gemm_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                        Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                        Workspace workspace, bool allow_tf32,
                                        cudaStream_t stream);
// The depthwise algorithm (csrc/cuda/conv2d/depthwise.cu): the cpu
// launchers' contracts, every dtype, one input channel per group (any other
// geometry returns Status::bad_argument); grad_weight sums its split
// reduction in a workspace of the bytes the first function gives, in split
// order (deterministic).
Status conv2d_depthwise_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                                cudaStream_t stream);
Status conv2d_depthwise_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                   Tensor4 y, Tensor4 w, Tensor4 grad_x, cudaStream_t stream);
size_t conv2d_depthwise_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g);
Status conv2d_depthwise_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                    Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                    Workspace workspace, cudaStream_t stream);
// The im2col algorithm's patch kernels (the cpu's contracts).
Status conv2d_im2col(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 patches,
                     bool taps_channels_last, cudaStream_t stream);
Status conv2d_col2im(DType dtype, const Conv2dGeometry& g, Tensor4 grad_patches, Tensor4 grad_x,
                     bool taps_channels_last, cudaStream_t stream);
// grad_z (csrc/cuda/conv2d/activation.cu).
Status conv2d_activation_grad(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                              Tensor4 saved, Tensor4 grad_z, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
