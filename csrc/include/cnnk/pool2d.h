// pool2d: max and average pooling, sliding or adaptive windows. The window
// geometry and index math shared by the CPU and CUDA kernels, and the
// launchers of both backends.
//
// Shapes (torch's): input x (N, C, H, W), output y (N, C, P, Q); indices
// (int64, y's shape) hold the argmax as h * W + w within its (n, c) plane,
// exactly as torch.nn.functional.max_pool2d returns them. Every tensor is a
// pointer plus its four strides (NCHW, channels_last or any view).
//
// Semantics (torch's, CPU and CUDA alike):
//   max   the first maximum in row-major window order wins a tie; a NaN
//         wins over numbers and the last NaN wins; a window of -inf only
//         returns its first element's index.
//   avg   sliding windows divide by divisor_override if set, else by the
//         window clipped to the padded input (count_include_pad) or to the
//         input; adaptive windows divide by their size.
//   backward  each input element sums the gradients of the windows that
//         contain it (max: whose argmax it is) in a fixed order, each element
//         written by one thread or task: deterministic without atomics (a
//         gather on the GPU; on the CPU max pooling scatters within the plane
//         a task owns).
#pragma once

#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk {

// Field for field the Python Pool2dGeometry (cnnkernels/ops/pool2d.py); the
// bindings fill it by field name.
struct Pool2dGeometry {
  int64_t N, C, H, W;  // input: batch, channels, height, width
  int64_t P, Q;        // output height and width
  // Sliding windows (ignored when adaptive): output p covers input rows
  // p * stride_h - pad_h + i * dil_h for i in [0, kernel_h).
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  // Adaptive windows: output p covers rows [floor(p H / P), ceil((p + 1) H / P)).
  bool adaptive;
  // Average pooling only.
  bool count_include_pad;
  int64_t divisor_override;  // 0: none; any other value, negative too, divides every window
};

// Inclusive start, exclusive end and step of the input rows (or columns) one
// output index reads, clipped to [0, in_size).
struct PoolWindow {
  int64_t start, end, step;
};

CNNK_HOST_DEVICE int64_t adaptive_start(int64_t o, int64_t in_size, int64_t out_size) {
  return (o * in_size) / out_size;
}

CNNK_HOST_DEVICE int64_t adaptive_end(int64_t o, int64_t in_size, int64_t out_size) {
  return ((o + 1) * in_size + out_size - 1) / out_size;
}

CNNK_HOST_DEVICE PoolWindow pool_window(int64_t o, int64_t in_size, int64_t out_size,
                                        int64_t kernel, int64_t stride, int64_t pad,
                                        int64_t dil, bool adaptive) {
  if (adaptive) return {adaptive_start(o, in_size, out_size), adaptive_end(o, in_size, out_size), 1};
  int64_t start = o * stride - pad;
  int64_t end = start + (kernel - 1) * dil + 1;
  // First tap inside the input: skip whole dilation steps.
  if (start < 0) start += ceil_div(-start, dil) * dil;
  return {start, end < in_size ? end : in_size, dil};
}

CNNK_HOST_DEVICE PoolWindow pool_window_rows(const Pool2dGeometry& g, int64_t p) {
  return pool_window(p, g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive);
}

CNNK_HOST_DEVICE PoolWindow pool_window_cols(const Pool2dGeometry& g, int64_t q) {
  return pool_window(q, g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive);
}

// One dimension's factor of the average divisor of output o (torch's
// avg_pool2d rule): the window clipped to the input, or with
// count_include_pad to the padded input; adaptive windows their size.
CNNK_HOST_DEVICE int64_t avg_pool_factor(int64_t o, int64_t in_size, int64_t out_size,
                                         int64_t kernel, int64_t stride, int64_t pad,
                                         int64_t dil, bool adaptive, bool count_include_pad) {
  const PoolWindow win = pool_window(o, in_size, out_size, kernel, stride, pad, dil, adaptive);
  if (adaptive || !count_include_pad) return win.end - win.start;
  const int64_t start = o * stride - pad;
  const int64_t end = start + kernel < in_size + pad ? start + kernel : in_size + pad;
  return end - start;
}

CNNK_HOST_DEVICE int64_t avg_pool_row_factor(const Pool2dGeometry& g, int64_t p) {
  return avg_pool_factor(p, g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive,
                         g.count_include_pad);
}

CNNK_HOST_DEVICE int64_t avg_pool_col_factor(const Pool2dGeometry& g, int64_t q) {
  return avg_pool_factor(q, g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive,
                         g.count_include_pad);
}

// Divisor of average pooling for output (p, q): divisor_override, else the
// product of the two factors.
CNNK_HOST_DEVICE int64_t avg_pool_divisor(const Pool2dGeometry& g, int64_t p, int64_t q) {
  if (g.divisor_override != 0) return g.divisor_override;
  return avg_pool_row_factor(g, p) * avg_pool_col_factor(g, q);
}

// Half-open range of adaptive output indices whose window contains input
// index i: floor(i P / I) <= o < ceil((i + 1) P / I).
CNNK_HOST_DEVICE IndexRange adaptive_covering_outputs(int64_t i, int64_t in_size,
                                                      int64_t out_size) {
  return {(i * out_size) / in_size, ((i + 1) * out_size + in_size - 1) / in_size};
}

// Half-open range of sliding output indices whose window spans input index
// i: the taps o * stride - pad + t * dil, t < kernel, reach i for
// i + pad - (kernel - 1) * dil <= o * stride <= i + pad; with dil > 1 only the
// o with (i + pad - o * stride) % dil == 0 read it. Computed directly, so a
// window far larger than the input costs nothing extra.
CNNK_HOST_DEVICE IndexRange sliding_covering_outputs(int64_t i, int64_t out_size, int64_t kernel,
                                                     int64_t stride, int64_t pad, int64_t dil) {
  const int64_t t = i + pad;
  const int64_t lo = -floor_div((kernel - 1) * dil - t, stride);
  const int64_t hi = t / stride + 1;
  return {lo > 0 ? lo : 0, hi < out_size ? hi : out_size};
}

// Windows do not overlap and every input index is read by at most one tap:
// the backward kernels take one window per input element, without a loop.
CNNK_HOST_DEVICE bool pool_windows_disjoint(const Pool2dGeometry& g) {
  return !g.adaptive && g.stride_h == g.kernel_h && g.stride_w == g.kernel_w && g.dil_h == 1 &&
         g.dil_w == 1;
}

inline Status check_pool2d_geometry(const Pool2dGeometry& g) {
  if (g.N < 0 || g.C < 0 || g.H <= 0 || g.W <= 0 || g.P <= 0 || g.Q <= 0)
    return Status::bad_argument;
  if (!g.adaptive && (g.kernel_h <= 0 || g.kernel_w <= 0 || g.stride_h <= 0 ||
                      g.stride_w <= 0 || g.pad_h < 0 || g.pad_w < 0 || g.dil_h <= 0 ||
                      g.dil_w <= 0))
    return Status::bad_argument;
  return Status::ok;
}

namespace cpu {
// y = max over each window; indices.data may be null (no indices wanted).
Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices);
// grad_x[n, c, h, w] = sum of grad_y over the windows whose index is h * W + w.
Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x);
Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y);
// grad_x[n, c, h, w] = sum of grad_y / divisor over the windows containing (h, w).
Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x);
// y[n, c, p, q] = x[n, c, h, w] at (h, w) = divmod(indices[n, c, p, q], W): the
// input's values where max pooling took them (its backward's adjoint, for
// double backward). An index outside the plane reads as NaN.
Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Same contracts as the CPU launchers; work is queued on `stream`.
Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices, cudaStream_t stream);
Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x, cudaStream_t stream);
Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          cudaStream_t stream);
Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x, cudaStream_t stream);
Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
