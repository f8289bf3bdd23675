// conv2d, im2col algorithm: the patch-matrix kernels on the cpu (OpenMP);
// the GEMM is the pointwise algorithm's (the GEMM core), run by
// cnnkernels/ops/conv2d.py.
//
// conv2d_im2col: patches[n, grp*J + j, p, q] = x[n, grp*C_g + c, ih, iw] or
// 0, j = patch_column_index(c, r, s) (cnnk/conv2d.h); one task per output
// row (n, p), each writing its Q pixels' patch columns.
// conv2d_col2im: its adjoint as a gather, one task per input row (n, h):
// grad_x[n, ch, h, w] sums, in (r, s) order, the patch entries whose tap
// reads it (output row p = (h + pad_top - r*dil_h) / stride_h when whole
// and in range, likewise q). No atomics, a fixed order.
// Both are memory-bound: im2col writes N*P*Q*C*R*S elements and reads x
// R*S/(stride_h*stride_w) times (from cache); col2im reads the patch matrix
// and writes x once. Accumulation in float (double for float64).
#include "cnnk/conv2d.h"
#include "cnnk/cpu_types.h"

namespace cnnk::cpu {
namespace {

// Output index o whose tap k reads input index i, or -1 when none does.
int64_t reading_output(int64_t i, int64_t pad, int64_t k, int64_t stride, int64_t dil,
                       int64_t out) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return -1;
  return t / stride < out ? t / stride : -1;
}

template <typename T>
Status im2col(const Conv2dGeometry& g, Tensor4 x, Tensor4 patches, bool taps_channels_last) {
  const T* in = static_cast<const T*>(x.data);
  T* out = static_cast<T*>(patches.data);
  const int64_t J = g.reduction_size(), columns = g.groups * J;
  return parallel_tasks<char>(g.N * g.P, 0, [&](int64_t np, char*) {
    const int64_t n = np / g.P, p = np % g.P;
    for (int64_t column = 0; column < columns; ++column) {
      const int64_t group = column / J;
      const PatchColumn t = patch_column(column % J, g.C_g(), g.R, g.S, taps_channels_last);
      const int64_t ih = conv_input_index(p, t.r, g.stride_h, g.pad_top, g.dil_h);
      const bool row_inside = ih >= 0 && ih < g.H;
      const int64_t ch = group * g.C_g() + t.c;
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t iw = conv_input_index(q, t.s, g.stride_w, g.pad_left, g.dil_w);
        out[patches.stride.offset(n, column, p, q)] =
            row_inside && iw >= 0 && iw < g.W ? in[x.stride.offset(n, ch, ih, iw)]
                                              : from_acc<T>(acc_t<T>(0));
      }
    }
  }, columns * g.Q);
}

template <typename T>
Status col2im(const Conv2dGeometry& g, Tensor4 grad_patches, Tensor4 grad_x,
              bool taps_channels_last) {
  using Acc = acc_t<T>;
  const T* in = static_cast<const T*>(grad_patches.data);
  T* out = static_cast<T*>(grad_x.data);
  const int64_t J = g.reduction_size();
  return parallel_tasks<char>(g.N * g.H, 0, [&](int64_t nh, char*) {
    const int64_t n = nh / g.H, h = nh % g.H;
    for (int64_t ch = 0; ch < g.C; ++ch) {
      const int64_t group = ch / g.C_g(), c = ch % g.C_g();
      for (int64_t w = 0; w < g.W; ++w) {
        Acc sum = 0;
        for (int64_t r = 0; r < g.R; ++r) {
          const int64_t p = reading_output(h, g.pad_top, r, g.stride_h, g.dil_h, g.P);
          if (p < 0) continue;
          for (int64_t s = 0; s < g.S; ++s) {
            const int64_t q = reading_output(w, g.pad_left, s, g.stride_w, g.dil_w, g.Q);
            if (q < 0) continue;
            const int64_t column =
                group * J + patch_column_index(c, r, s, g.C_g(), g.R, g.S, taps_channels_last);
            sum += to_acc(in[grad_patches.stride.offset(n, column, p, q)]);
          }
        }
        out[grad_x.stride.offset(n, ch, h, w)] = from_acc<T>(sum);
      }
    }
  }, g.C * g.W * g.R * g.S);
}

Status check_patch_launch(const Conv2dGeometry& g, const Tensor4& image, const Tensor4& patches) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  return g.N == 0 || (image.data && patches.data) ? Status::ok : Status::bad_argument;
}

}  // namespace

Status conv2d_im2col(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 patches,
                     bool taps_channels_last) {
  if (Status s = check_patch_launch(g, x, patches); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return im2col<typename decltype(type)::type>(g, x, patches, taps_channels_last);
  });
}

Status conv2d_col2im(DType dtype, const Conv2dGeometry& g, Tensor4 grad_patches, Tensor4 grad_x,
                     bool taps_channels_last) {
  if (Status s = check_patch_launch(g, grad_x, grad_patches); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return col2im<typename decltype(type)::type>(g, grad_patches, grad_x, taps_channels_last);
  });
}

}  // namespace cnnk::cpu
