// conv2d, direct algorithm, C++ CPU kernels (OpenMP).
//
// Algorithm: each output element is the sum over its filter window, computed
// in place with no im2col buffer. The loops run tap by tap: for one filter tap
// (c, r, s) the weight is a scalar and the valid output rows/columns form a
// rectangle (conv_valid_outputs), so the innermost loop is a padding-free
// multiply-add over an output row that the compiler vectorises when the
// input's w-stride is 1.
//
// Parallel work and layout:
//   forward      one task per (n, k) output plane; accumulates the plane in a
//                contiguous scratch row-major buffer, then applies the epilogue
//                (bias, residual, the pre-activation's store, the activation)
//                while writing through y's strides.
//   grad_input   one task per (n, c) input plane; gathers every (k, r, s) that
//                reads the plane into a scratch buffer. Each task owns its
//                plane, so no atomics and a fixed summation order.
//   grad_weight  one task per (k, c) filter slice; sums over n, p, q in a fixed
//                order (deterministic). The c == 0 task also sums grad_bias[k].
// The activation's derivative is applied once per (n, k) plane into scratch
// (gy' = gy * act'(y)) and reused by every tap.
//
// Cost: 2 * N * K * P * Q * (C / groups) * R * S flops per pass (forward,
// grad_input, grad_weight each); compute-bound. Accumulation is in float
// (double for float64); float16 and bfloat16 elements are converted on load
// and rounded once on store (cnnk/cpu_types.h), like torch's CPU kernels.
// Limits: the Python layer checks sizes and strides.
#include <algorithm>

#include "cnnk/conv2d.h"
#include "cnnk/cpu_types.h"

namespace cnnk::cpu {
namespace {

// gy' for output plane (n, k) into a contiguous P*Q buffer.
template <typename T>
void masked_grad_plane(const Conv2dGeometry& g, const Tensor4& grad_y, const Tensor4& y,
                       int64_t n, int64_t k, acc_t<T>* out) {
  const T* gy = static_cast<const T*>(grad_y.data);
  const T* yv = static_cast<const T*>(y.data);
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = 0; q < g.Q; ++q) {
      acc_t<T> v = to_acc(gy[grad_y.stride.offset(n, k, p, q)]);
      if (g.activation != Activation::none)
        v = activation_grad(v, to_acc(yv[y.stride.offset(n, k, p, q)]), g.activation);
      out[p * g.Q + q] = v;
    }
}

template <typename T>
Status forward(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias, Tensor4 residual,
               Tensor4 y, Tensor4 preact) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  const T* wp = static_cast<const T*>(w.data);
  const T* bp = static_cast<const T*>(bias.data);
  const T* rp = static_cast<const T*>(residual.data);
  T* yp = static_cast<T*>(y.data);
  T* zp = static_cast<T*>(preact.data);
  const int64_t cg = g.C_g(), kg = g.K_g();
  return parallel_tasks<Acc>(g.N * g.K, g.P * g.Q, [&](int64_t nk, Acc* acc) {
    const int64_t n = nk / g.K, k = nk % g.K;
    const int64_t c0 = (k / kg) * cg;
    std::fill(acc, acc + g.P * g.Q, bp ? to_acc(bp[k * bias.stride]) : Acc(0));
    for (int64_t c = 0; c < cg; ++c)
      for (int64_t r = 0; r < g.R; ++r) {
        const IndexRange rows = conv_valid_outputs(g.P, g.H, r, g.stride_h, g.pad_top, g.dil_h);
        for (int64_t s = 0; s < g.S; ++s) {
          const IndexRange cols =
              conv_valid_outputs(g.Q, g.W, s, g.stride_w, g.pad_left, g.dil_w);
          const Acc wv = to_acc(wp[w.stride.offset(k, c, r, s)]);
          for (int64_t p = rows.lo; p < rows.hi; ++p) {
            const int64_t ih = conv_input_index(p, r, g.stride_h, g.pad_top, g.dil_h);
            const T* xrow = xp + x.stride.offset(n, c0 + c, ih, 0);
            Acc* arow = acc + p * g.Q;
            for (int64_t q = cols.lo; q < cols.hi; ++q)
              arow[q] += wv * to_acc(xrow[conv_input_index(q, s, g.stride_w, g.pad_left,
                                                           g.dil_w) * x.stride.w]);
          }
        }
      }
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        Acc z = acc[p * g.Q + q];
        if (rp) z += to_acc(rp[residual.stride.offset(n, k, p, q)]);
        if (zp) zp[preact.stride.offset(n, k, p, q)] = from_acc<T>(z);
        yp[y.stride.offset(n, k, p, q)] = from_acc<T>(apply_activation(z, g.activation));
      }
  });
}

template <typename T>
Status grad_input(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* wp = static_cast<const T*>(w.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const int64_t cg = g.C_g(), kg = g.K_g();
  // Scratch: the plane's accumulator (H*W), then one masked gy' plane (P*Q).
  return parallel_tasks<Acc>(g.N * g.C, g.H * g.W + g.P * g.Q, [&](int64_t nc, Acc* acc) {
    Acc* gk = acc + g.H * g.W;
    const int64_t n = nc / g.C, c = nc % g.C;
    const int64_t k0 = (c / cg) * kg, cl = c % cg;
    std::fill(acc, acc + g.H * g.W, Acc(0));
    for (int64_t k = k0; k < k0 + kg; ++k) {
      masked_grad_plane<T>(g, grad_y, y, n, k, gk);
      for (int64_t r = 0; r < g.R; ++r) {
        const IndexRange rows = conv_valid_outputs(g.P, g.H, r, g.stride_h, g.pad_top, g.dil_h);
        for (int64_t s = 0; s < g.S; ++s) {
          const IndexRange cols =
              conv_valid_outputs(g.Q, g.W, s, g.stride_w, g.pad_left, g.dil_w);
          const Acc wv = to_acc(wp[w.stride.offset(k, cl, r, s)]);
          for (int64_t p = rows.lo; p < rows.hi; ++p) {
            Acc* arow = acc + conv_input_index(p, r, g.stride_h, g.pad_top, g.dil_h) * g.W;
            const Acc* grow = gk + p * g.Q;
            for (int64_t q = cols.lo; q < cols.hi; ++q)
              arow[conv_input_index(q, s, g.stride_w, g.pad_left, g.dil_w)] += wv * grow[q];
          }
        }
      }
    }
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t iw = 0; iw < g.W; ++iw)
        gxp[grad_x.stride.offset(n, c, h, iw)] = from_acc<T>(acc[h * g.W + iw]);
  });
}

template <typename T>
Status grad_weight(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 x, Tensor4 grad_w,
                 Tensor1 grad_bias) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* gwp = static_cast<T*>(grad_w.data);
  T* gbp = static_cast<T*>(grad_bias.data);
  const int64_t cg = g.C_g(), kg = g.K_g();
  // Scratch: the slice's accumulator (R*S), then one masked gy' plane (P*Q).
  return parallel_tasks<Acc>(g.K * cg, g.R * g.S + g.P * g.Q, [&](int64_t kc, Acc* acc) {
    Acc* gk = acc + g.R * g.S;
    const int64_t k = kc / cg, c = kc % cg;
    const int64_t cin = (k / kg) * cg + c;
    const bool owns_bias = gbp != nullptr && c == 0;
    Acc bias_acc = Acc(0);
    std::fill(acc, acc + g.R * g.S, Acc(0));
    for (int64_t n = 0; n < g.N; ++n) {
      masked_grad_plane<T>(g, grad_y, y, n, k, gk);
      if (owns_bias)
        for (int64_t i = 0; i < g.P * g.Q; ++i) bias_acc += gk[i];
      for (int64_t r = 0; r < g.R; ++r) {
        const IndexRange rows = conv_valid_outputs(g.P, g.H, r, g.stride_h, g.pad_top, g.dil_h);
        for (int64_t s = 0; s < g.S; ++s) {
          const IndexRange cols =
              conv_valid_outputs(g.Q, g.W, s, g.stride_w, g.pad_left, g.dil_w);
          Acc sum = Acc(0);
          for (int64_t p = rows.lo; p < rows.hi; ++p) {
            const int64_t ih = conv_input_index(p, r, g.stride_h, g.pad_top, g.dil_h);
            const T* xrow = xp + x.stride.offset(n, cin, ih, 0);
            const Acc* grow = gk + p * g.Q;
            for (int64_t q = cols.lo; q < cols.hi; ++q)
              sum += grow[q] * to_acc(xrow[conv_input_index(q, s, g.stride_w, g.pad_left,
                                                            g.dil_w) * x.stride.w]);
          }
          acc[r * g.S + s] += sum;
        }
      }
    }
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s)
        gwp[grad_w.stride.offset(k, c, r, s)] = from_acc<T>(acc[r * g.S + s]);
    if (owns_bias) gbp[k * grad_bias.stride] = from_acc<T>(bias_acc);
  });
}

}  // namespace

Status conv2d_direct_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                             Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok || g.N == 0) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return forward<typename decltype(type)::type>(g, x, w, bias, residual, y, preact);
  });
}

Status conv2d_direct_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                Tensor4 w, Tensor4 grad_x) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok || g.N == 0)
    return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_input<typename decltype(type)::type>(g, grad_y, y, w, grad_x);
  });
}

Status conv2d_direct_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                 Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_weight<typename decltype(type)::type>(g, grad_y, y, x, grad_w, grad_bias);
  });
}

}  // namespace cnnk::cpu
