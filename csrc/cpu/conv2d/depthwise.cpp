// conv2d, depthwise algorithm, C++ CPU launchers (OpenMP): one input channel
// per group (C/groups == 1), any channel multiplier m = K/groups; output
// channel k = c * m + j reads input channel c = k / m.
//
// Algorithm: a task owns whole planes. It widens the planes it reads into
// zero-padded Acc scratch planes (any strides, any dtype: NCHW,
// channels_last and non-contiguous views take the same path), so the plane
// kernels (depthwise_planes.h, compiled once per instruction set and chosen
// at run time, never -march=native) run with no bounds tests: the taps sit
// in registers, specialised at compile time for 3x3 and 5x5 at stride 1 and
// 2, and the loop over an output row runs in vector lanes.
//   forward      task (n, block of input channels): pad x's planes, one
//                output plane per (c, j) started at the bias, then the
//                epilogue (residual, pre-activation, activation) on the store.
//   grad_input   task (n, block of input channels). Stride 1: a gather, the
//                forward plane kernel over the padded gy' plane with the
//                flipped filter. Larger strides: each gy' element scattered
//                onto the padded input plane the task owns.
//   grad_weight  task (block of input channels) over every image in order:
//                per tap a sum over P*Q in fixed vector lanes, then over n in
//                order; grad_bias is the sum of the same gy' planes. The sum
//                order depends only on the geometry, never on the threads.
// gy' = gy * act'(saved) is formed while the gy plane is packed.
// Channel blocks: 16 channels (a 64-byte line of fp32) when x is
// channels_last, so the planes a task packs share cache lines; one channel
// otherwise; fewer when the scratch planes would pass ~256 KB (L2).
//
// Cost: 2 * N * K * P * Q * R * S flops per pass against about
// (N*C*H*W + N*K*P*Q) elements moved: 2*R*S/(1 + 1/m) flops per element
// loaded, memory-bound on most CPUs for 3x3. Accumulation in float (double
// for float64); float16 and bfloat16 load-widen and round once on store
// (cnnk/cpu_types.h). Limits: the Python layer checks sizes and strides.
#include "cnnk/conv2d.h"
#include "cnnk/cpu_gemm.h"
#include "cnnk/cpu_types.h"
#include "depthwise_planes.h"

namespace cnnk::cpu {
namespace {

using depthwise::PlaneKernels;

template <typename Acc>
const PlaneKernels<Acc>& plane_kernels() {
  static const PlaneKernels<Acc> chosen = [] {
#if defined(__x86_64__)
    if (gemm::isa() != gemm::Isa::portable) return depthwise::avx2_kernels<Acc>();
#endif
    return depthwise::portable_kernels<Acc>();
  }();
  return chosen;
}

// Scratch budget of one task, in elements (about L2).
constexpr int64_t kScratchElements = int64_t{1} << 16;

int64_t channel_block(const Tensor4& x, int64_t C, int64_t per_channel) {
  const int64_t wanted = (x.stride.c == 1 && C > 1) ? 16 : 1;
  return std::max<int64_t>(1, std::min({wanted, C, kScratchElements / per_channel}));
}

// dst[i * Wd + j] = src[i - off_h, j - off_w] (0 outside src's rows x cols),
// times act'(saved) when `saved` is given (gy' = gy * act'(saved)).
template <typename T>
void pack_plane(const T* src, int64_t sh, int64_t sw, int64_t rows, int64_t cols,
                const T* saved, int64_t saved_h, int64_t saved_w, Activation act,
                acc_t<T>* dst, int64_t Hd, int64_t Wd, int64_t off_h, int64_t off_w) {
  using Acc = acc_t<T>;
  for (int64_t i = 0; i < Hd; ++i) {
    Acc* drow = dst + i * Wd;
    const int64_t si = i - off_h;
    if (si < 0 || si >= rows) {
      std::fill(drow, drow + Wd, Acc(0));
      continue;
    }
    const int64_t lo = std::clamp<int64_t>(off_w, 0, Wd);
    const int64_t hi = std::clamp<int64_t>(off_w + cols, lo, Wd);
    std::fill(drow, drow + lo, Acc(0));
    std::fill(drow + hi, drow + Wd, Acc(0));
    const T* srow = src + si * sh;
    if (saved == nullptr || act == Activation::none) {
      for (int64_t j = lo; j < hi; ++j) drow[j] = to_acc(srow[(j - off_w) * sw]);
    } else {
      const T* yrow = saved + si * saved_h;
      for (int64_t j = lo; j < hi; ++j)
        drow[j] = activation_grad(to_acc(srow[(j - off_w) * sw]),
                                  to_acc(yrow[(j - off_w) * saved_w]), act);
    }
  }
}

// The epilogue of output plane (n, k) from out (P x Q, bias included):
// z = out + residual, preact = z, y = act(z); row pointers and strides in
// locals so that the row loops keep them in registers.
template <typename T>
void store_output_plane(const acc_t<T>* out, int64_t P, int64_t Q, int64_t n, int64_t k,
                        const Tensor4& residual, const Tensor4& preact, const Tensor4& y,
                        Activation act) {
  using Acc = acc_t<T>;
  const T* rp = static_cast<const T*>(residual.data);
  T* zp = static_cast<T*>(preact.data);
  T* yp = static_cast<T*>(y.data);
  const int64_t rw = residual.stride.w, zw = preact.stride.w, yw = y.stride.w;
  for (int64_t p = 0; p < P; ++p) {
    const Acc* orow = out + p * Q;
    const T* rrow = rp ? rp + residual.stride.offset(n, k, p, 0) : nullptr;
    T* zrow = zp ? zp + preact.stride.offset(n, k, p, 0) : nullptr;
    T* yrow = yp + y.stride.offset(n, k, p, 0);
    for (int64_t q = 0; q < Q; ++q) {
      Acc z = orow[q];
      if (rrow) z += to_acc(rrow[q * rw]);
      if (zrow) zrow[q * zw] = from_acc<T>(z);
      yrow[q * yw] = from_acc<T>(apply_activation(z, act));
    }
  }
}

template <typename T>
Status forward(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias, Tensor4 residual,
               Tensor4 y, Tensor4 preact) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  const T* wp = static_cast<const T*>(w.data);
  const T* bp = static_cast<const T*>(bias.data);
  const int64_t m = g.K_g(), RS = g.R * g.S, PQ = g.P * g.Q;
  const int64_t Hp = (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1;
  const int64_t Wp = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1;
  const int64_t cb = channel_block(x, g.C, Hp * Wp + PQ + RS);
  const int64_t blocks = ceil_div(g.C, cb);
  const PlaneKernels<Acc>& kernels = plane_kernels<Acc>();
  const depthwise::PlaneGeometry pg{g.R, g.S, g.stride_h, g.stride_w, g.dil_h, g.dil_w};
  return parallel_tasks<Acc>(
      g.N * blocks, cb * Hp * Wp + PQ + RS,
      [&](int64_t task, Acc* scratch) {
        const int64_t n = task / blocks, c0 = (task % blocks) * cb;
        const int64_t c1 = std::min(g.C, c0 + cb);
        Acc* out = scratch + cb * Hp * Wp;
        Acc* taps = out + PQ;
        for (int64_t c = c0; c < c1; ++c)
          pack_plane<T>(xp + x.stride.offset(n, c, 0, 0), x.stride.h, x.stride.w, g.H, g.W,
                        nullptr, 0, 0, Activation::none, scratch + (c - c0) * Hp * Wp, Hp, Wp,
                        g.pad_top, g.pad_left);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t k = c * m; k < (c + 1) * m; ++k) {
            for (int64_t t = 0; t < RS; ++t)
              taps[t] = to_acc(wp[w.stride.offset(k, 0, t / g.S, t % g.S)]);
            std::fill(out, out + PQ, bp ? to_acc(bp[k * bias.stride]) : Acc(0));
            kernels.forward(pg, scratch + (c - c0) * Hp * Wp, Wp, taps, out, g.P, g.Q);
            store_output_plane<T>(out, g.P, g.Q, n, k, residual, preact, y, g.activation);
          }
      },
      cb * m * PQ * RS);
}

template <typename T>
Status grad_input(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                  Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const T* yp = static_cast<const T*>(y.data);
  const T* wp = static_cast<const T*>(w.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const int64_t m = g.K_g(), RS = g.R * g.S, PQ = g.P * g.Q;
  const bool gather = g.stride_h == 1 && g.stride_w == 1;
  // Gather: gy' padded so that grad_x[h, w] = sum over flipped taps (r', s')
  // of G[h + r' dil_h, w + s' dil_w], G[i, j] = gy'[i - off_h, j - off_w].
  // Scatter: the accumulator is the forward's padded input plane.
  const int64_t off_h = (g.R - 1) * g.dil_h - g.pad_top;
  const int64_t off_w = (g.S - 1) * g.dil_w - g.pad_left;
  const int64_t Hs = gather ? g.H + (g.R - 1) * g.dil_h
                            : (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1;
  const int64_t Ws = gather ? g.W + (g.S - 1) * g.dil_w
                            : (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1;
  const int64_t HW = gather ? g.H * g.W : Hs * Ws;  // the accumulator plane
  const int64_t gy_plane = gather ? Hs * Ws : PQ;
  const int64_t scratch_size = HW + gy_plane + RS;
  const int64_t cb = channel_block(grad_x, g.C, scratch_size);
  const int64_t blocks = ceil_div(g.C, cb);
  const PlaneKernels<Acc>& kernels = plane_kernels<Acc>();
  const depthwise::PlaneGeometry pg{g.R, g.S, g.stride_h, g.stride_w, g.dil_h, g.dil_w};
  return parallel_tasks<Acc>(
      g.N * blocks, scratch_size,
      [&](int64_t task, Acc* acc) {
        const int64_t n = task / blocks, c0 = (task % blocks) * cb;
        const int64_t c1 = std::min(g.C, c0 + cb);
        Acc* gk = acc + HW;
        Acc* taps = gk + gy_plane;
        for (int64_t c = c0; c < c1; ++c) {
          std::fill(acc, acc + HW, Acc(0));
          for (int64_t k = c * m; k < (c + 1) * m; ++k) {
            const T* saved = yp ? yp + y.stride.offset(n, k, 0, 0) : nullptr;
            const T* gy = gyp + grad_y.stride.offset(n, k, 0, 0);
            if (gather) {
              for (int64_t t = 0; t < RS; ++t)  // flipped
                taps[RS - 1 - t] = to_acc(wp[w.stride.offset(k, 0, t / g.S, t % g.S)]);
              pack_plane<T>(gy, grad_y.stride.h, grad_y.stride.w, g.P, g.Q, saved, y.stride.h,
                            y.stride.w, g.activation, gk, Hs, Ws, off_h, off_w);
              kernels.forward(pg, gk, Ws, taps, acc, g.H, g.W);
            } else {
              for (int64_t t = 0; t < RS; ++t)
                taps[t] = to_acc(wp[w.stride.offset(k, 0, t / g.S, t % g.S)]);
              pack_plane<T>(gy, grad_y.stride.h, grad_y.stride.w, g.P, g.Q, saved, y.stride.h,
                            y.stride.w, g.activation, gk, g.P, g.Q, 0, 0);
              kernels.scatter(pg, gk, g.P, g.Q, taps, acc, Ws);
            }
          }
          // Scatter: input pixel (h, w) is padded (h + pad_top, w + pad_left);
          // rows and columns past the plane are read by no tap.
          const int64_t xw = grad_x.stride.w;
          for (int64_t h = 0; h < g.H; ++h) {
            T* gxrow = gxp + grad_x.stride.offset(n, c, h, 0);
            const int64_t i = gather ? h : h + g.pad_top;
            const Acc* arow = gather ? acc + h * g.W : acc + i * Ws + g.pad_left;
            const int64_t valid =
                gather ? g.W : (i < Hs ? std::clamp<int64_t>(Ws - g.pad_left, 0, g.W) : 0);
            for (int64_t iw = 0; iw < valid; ++iw) gxrow[iw * xw] = from_acc<T>(arow[iw]);
            for (int64_t iw = valid; iw < g.W; ++iw) gxrow[iw * xw] = from_acc<T>(Acc(0));
          }
        }
      },
      cb * m * PQ * RS);
}

template <typename T>
Status grad_weight(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 x,
                   Tensor4 grad_w, Tensor1 grad_bias) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const T* yp = static_cast<const T*>(y.data);
  const T* xp = static_cast<const T*>(x.data);
  T* gwp = static_cast<T*>(grad_w.data);
  T* gbp = static_cast<T*>(grad_bias.data);
  const int64_t m = g.K_g(), RS = g.R * g.S, PQ = g.P * g.Q;
  const int64_t Hp = (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1;
  const int64_t Wp = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1;
  // Per channel: its padded x plane, its m sums of RS taps and a bias.
  const int64_t cb = channel_block(x, g.C, Hp * Wp + m * (RS + 1));
  const int64_t blocks = ceil_div(g.C, cb);
  const PlaneKernels<Acc>& kernels = plane_kernels<Acc>();
  const depthwise::PlaneGeometry pg{g.R, g.S, g.stride_h, g.stride_w, g.dil_h, g.dil_w};
  return parallel_tasks<Acc>(
      blocks, Hp * Wp + PQ + cb * m * (RS + 1),
      [&](int64_t block, Acc* scratch) {
        const int64_t c0 = block * cb, c1 = std::min(g.C, c0 + cb);
        Acc* gk = scratch + Hp * Wp;
        Acc* sums = gk + PQ;  // (c - c0, j): RS weight sums, then the bias sum
        std::fill(sums, sums + cb * m * (RS + 1), Acc(0));
        for (int64_t n = 0; n < g.N; ++n)
          for (int64_t c = c0; c < c1; ++c) {
            pack_plane<T>(xp + x.stride.offset(n, c, 0, 0), x.stride.h, x.stride.w, g.H, g.W,
                          nullptr, 0, 0, Activation::none, scratch, Hp, Wp, g.pad_top,
                          g.pad_left);
            for (int64_t k = c * m; k < (c + 1) * m; ++k) {
              pack_plane<T>(gyp + grad_y.stride.offset(n, k, 0, 0), grad_y.stride.h,
                            grad_y.stride.w, g.P, g.Q,
                            yp ? yp + y.stride.offset(n, k, 0, 0) : nullptr, y.stride.h,
                            y.stride.w, g.activation, gk, g.P, g.Q, 0, 0);
              Acc* own = sums + (k - c0 * m) * (RS + 1);
              kernels.weight(pg, scratch, Wp, gk, g.P, g.Q, own);
              if (gbp) own[RS] += kernels.sum(gk, PQ);
            }
          }
        for (int64_t k = c0 * m; k < c1 * m; ++k) {
          const Acc* own = sums + (k - c0 * m) * (RS + 1);
          for (int64_t t = 0; t < RS; ++t)
            gwp[grad_w.stride.offset(k, 0, t / g.S, t % g.S)] = from_acc<T>(own[t]);
          if (gbp) gbp[k * grad_bias.stride] = from_acc<T>(own[RS]);
        }
      },
      g.N * cb * m * PQ * RS);
}

Status check_depthwise(const Conv2dGeometry& g) {
  return g.C_g() == 1 ? Status::ok : Status::bad_argument;
}

}  // namespace

Status conv2d_depthwise_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok || g.N == 0) return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return forward<typename decltype(type)::type>(g, x, w, bias, residual, y, preact);
  });
}

Status conv2d_depthwise_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                   Tensor4 y, Tensor4 w, Tensor4 grad_x) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok || g.N == 0)
    return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_input<typename decltype(type)::type>(g, grad_y, y, w, grad_x);
  });
}

Status conv2d_depthwise_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                    Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_weight<typename decltype(type)::type>(g, grad_y, y, x, grad_w, grad_bias);
  });
}

}  // namespace cnnk::cpu
