// conv2d, depthwise algorithm, C++ CPU launchers (OpenMP): one input channel
// per group (C/groups == 1), any channel multiplier m = K/groups; output
// channel k = c * m + j reads input channel c = k / m.
//
// Two paths, both with the kernels of depthwise_planes.h (compiled once per
// instruction set and chosen at run time, never -march=native).
//
// Planes (NCHW, any view, every dtype, any multiplier): a task owns whole
// planes. It widens the planes it reads into zero-padded Acc scratch planes,
// so the plane kernels run with no bounds tests: the taps sit in registers,
// specialised at compile time for 3x3 and 5x5 at stride 1 and 2, and the
// loop over an output row runs in vector lanes.
//   forward      task (n, block of input channels): pad x's planes, one
//                output plane per (c, j) started at the bias, then the
//                epilogue (residual, pre-activation, activation) on the store.
//   grad_input   task (n, block of input channels). Stride 1: a gather, the
//                forward plane kernel over the padded gy' plane with the
//                flipped filter. Larger strides: each gy' element scattered
//                onto the padded input plane the task owns.
//   grad_weight  task (block of input channels) over every image in order:
//                per tap a sum over P*Q in fixed vector lanes, then over n in
//                order; grad_bias is the sum of the same gy' planes.
// gy' = gy * act'(saved) is formed while the gy plane is packed. Channel
// blocks: 16 channels (a 64-byte line of fp32) when x is channels_last, so
// the planes a task packs share cache lines; one channel otherwise; fewer
// when the scratch planes would pass ~256 KB (L2).
//
// Pixels (channels_last float and double, multiplier 1, C >= 8): vectorised
// over the channels, every tap read in place (a null tap pointer in the
// padding), the weight transposed to taps[t][c] once.
//   forward      task (n, output row): per pixel the taps in order, then the
//                epilogue.
//   grad_input   task (n, input row): per input pixel a gather of the taps
//                whose output pixel exists (the stride divides the offset),
//                from gy' formed once into a (N, P, Q, K) buffer.
//   grad_weight  task (n, block of 64 channels): the image's tap and bias
//                sums pixel by pixel; then per block the images' sums added
//                in image order.
// Either way each result's sum order depends only on the geometry, never on
// the threads. A window far larger than the input (padded planes that would
// dwarf the tensors) runs the direct kernels (planes_fit).
//
// Cost: 2 * N * K * P * Q * R * S flops per pass against about
// (N*C*H*W + N*K*P*Q) elements moved: 2*R*S/(1 + 1/m) flops per element
// loaded, memory-bound on most CPUs for 3x3. Accumulation in float (double
// for float64); float16 and bfloat16 load-widen and round once on store
// (cnnk/cpu_types.h). Limits: the Python layer checks sizes and strides.
#include <type_traits>

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

// The epilogue over `count` outputs z_in (bias included), strides in
// elements: z = z_in + residual, preact = z, y = act(z). The activation and
// unit strides are template arguments so that the loop vectorises.
template <typename T, Activation A, bool Unit>
void epilogue_span(const acc_t<T>* z_in, int64_t count, const T* r, int64_t rs, T* z,
                   int64_t zs, T* y, int64_t ys) {
  if constexpr (Unit) rs = zs = ys = 1;
  for (int64_t i = 0; i < count; ++i) {
    acc_t<T> v = z_in[i];
    if (r) v += to_acc(r[i * rs]);
    if (z) z[i * zs] = from_acc<T>(v);
    y[i * ys] = from_acc<T>(apply_activation(v, A));
  }
}

template <typename T, bool Unit>
void epilogue_span(Activation act, const acc_t<T>* z_in, int64_t count, const T* r, int64_t rs,
                   T* z, int64_t zs, T* y, int64_t ys) {
  switch (act) {
    case Activation::relu:
      return epilogue_span<T, Activation::relu, Unit>(z_in, count, r, rs, z, zs, y, ys);
    case Activation::relu6:
      return epilogue_span<T, Activation::relu6, Unit>(z_in, count, r, rs, z, zs, y, ys);
    case Activation::silu:
      return epilogue_span<T, Activation::silu, Unit>(z_in, count, r, rs, z, zs, y, ys);
    default:
      return epilogue_span<T, Activation::none, Unit>(z_in, count, r, rs, z, zs, y, ys);
  }
}

template <typename T>
void epilogue(Activation act, const acc_t<T>* z_in, int64_t count, const T* r, int64_t rs, T* z,
              int64_t zs, T* y, int64_t ys) {
  if ((r == nullptr || rs == 1) && (z == nullptr || zs == 1) && ys == 1)
    epilogue_span<T, true>(act, z_in, count, r, rs, z, zs, y, ys);
  else
    epilogue_span<T, false>(act, z_in, count, r, rs, z, zs, y, ys);
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
    epilogue<T>(act, orow, Q, rrow, rw, zrow, zw, yrow, yw);
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

// Channels_last, float and double, multiplier 1: pixels vectorised over the
// channels (the tensor's contiguous dimension), every tap read in place.
// (float16 and bfloat16 take the planes: they widen once when packed.)
template <typename T>
constexpr bool has_channels_last_path = std::is_same_v<T, acc_t<T>>;
bool channels_last_path(const Conv2dGeometry& g, const Tensor4& t) {
  return g.K_g() == 1 && t.stride.c == 1 && g.C >= 8;
}

// Scratch elements of type T that hold `count` tap pointers.
template <typename T>
int64_t pointer_slots(int64_t count) {
  return ceil_div(count * static_cast<int64_t>(sizeof(const T*)),
                  static_cast<int64_t>(sizeof(T)));
}

// The weight as taps[t * C + c] (t = r * S + s), and each tap's input
// pointer for one pixel (null where the tap falls in the padding).
template <typename T>
AlignedBuffer<T> transposed_taps(const Conv2dGeometry& g, const Tensor4& w) {
  const T* wp = static_cast<const T*>(w.data);
  AlignedBuffer<T> taps = allocate_aligned<T>(g.R * g.S * g.C);
  if (taps)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t t = 0; t < g.R * g.S; ++t)
        taps[t * g.C + c] = wp[w.stride.offset(c, 0, t / g.S, t % g.S)];
  return taps;
}

template <typename T>
Status forward_channels_last(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias,
                             Tensor4 residual, Tensor4 y, Tensor4 preact) {
  const T* xp = static_cast<const T*>(x.data);
  const T* bp = static_cast<const T*>(bias.data);
  const T* rp = static_cast<const T*>(residual.data);
  T* yp = static_cast<T*>(y.data);
  T* zp = static_cast<T*>(preact.data);
  const int64_t RS = g.R * g.S;
  const AlignedBuffer<T> taps = transposed_taps<T>(g, w);
  if (!taps) return Status::out_of_memory;
  const PlaneKernels<T>& kernels = plane_kernels<T>();
  // Scratch: the RS tap pointers (at the cache-line-aligned start), then one
  // pixel's C accumulators.
  const int64_t pointers = pointer_slots<T>(RS);
  return parallel_tasks<T>(
      g.N * g.P, g.C + pointers,
      [&](int64_t np, T* scratch) {
        const int64_t n = np / g.P, p = np % g.P;
        const T** rows = reinterpret_cast<const T**>(scratch);
        T* out = scratch + pointers;
        for (int64_t q = 0; q < g.Q; ++q) {
          for (int64_t t = 0; t < RS; ++t) {
            const int64_t ih = conv_input_index(p, t / g.S, g.stride_h, g.pad_top, g.dil_h);
            const int64_t iw = conv_input_index(q, t % g.S, g.stride_w, g.pad_left, g.dil_w);
            rows[t] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                          ? xp + x.stride.offset(n, 0, ih, iw) : nullptr;
          }
          for (int64_t c = 0; c < g.C; ++c) out[c] = bp ? bp[c * bias.stride] : T(0);
          kernels.pixel(rows, taps.get(), RS, g.C, out);
          const T* rpix = rp ? rp + residual.stride.offset(n, 0, p, q) : nullptr;
          T* zpix = zp ? zp + preact.stride.offset(n, 0, p, q) : nullptr;
          T* ypix = yp + y.stride.offset(n, 0, p, q);
          epilogue<T>(g.activation, out, g.C, rpix, residual.stride.c, zpix, preact.stride.c,
                      ypix, y.stride.c);
        }
      },
      g.Q * g.C * RS);
}

// gy' = gy * act'(saved) as a contiguous channels_last (N, P, Q, K) buffer.
template <typename T>
AlignedBuffer<T> masked_grad_channels_last(const Conv2dGeometry& g, const Tensor4& grad_y,
                                           const Tensor4& y) {
  const T* gyp = static_cast<const T*>(grad_y.data);
  const T* yp = static_cast<const T*>(y.data);
  AlignedBuffer<T> out = allocate_aligned<T>(g.N * g.P * g.Q * g.K);
  if (!out) return out;
  T* o = out.get();
  const Status s = parallel_tasks<T>(
      g.N * g.P, 1,
      [&](int64_t np, T*) {
        const int64_t n = np / g.P, p = np % g.P;
        for (int64_t q = 0; q < g.Q; ++q) {
          T* opix = o + (np * g.Q + q) * g.K;
          const T* gpix = gyp + grad_y.stride.offset(n, 0, p, q);
          if (yp == nullptr || g.activation == Activation::none) {
            for (int64_t k = 0; k < g.K; ++k) opix[k] = gpix[k * grad_y.stride.c];
          } else {
            const T* ypix = yp + y.stride.offset(n, 0, p, q);
            for (int64_t k = 0; k < g.K; ++k)
              opix[k] = activation_grad(gpix[k * grad_y.stride.c], ypix[k * y.stride.c],
                                        g.activation);
          }
        }
      },
      g.Q * g.K);
  return s == Status::ok ? std::move(out) : AlignedBuffer<T>();
}

template <typename T>
Status grad_input_channels_last(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                                Tensor4 grad_x) {
  T* gxp = static_cast<T*>(grad_x.data);
  const int64_t RS = g.R * g.S;
  const AlignedBuffer<T> taps = transposed_taps<T>(g, w);
  const AlignedBuffer<T> gk = masked_grad_channels_last<T>(g, grad_y, y);
  if (!taps || !gk) return Status::out_of_memory;
  const PlaneKernels<T>& kernels = plane_kernels<T>();
  const int64_t pointers = pointer_slots<T>(RS);
  // Input pixel (h, w) gathers tap (r, s) from output pixel
  // ((h + pad_top - r dil_h) / stride_h, ...) when that divides exactly.
  return parallel_tasks<T>(
      g.N * g.H, g.C + pointers,
      [&](int64_t nh, T* scratch) {
        const int64_t n = nh / g.H, h = nh % g.H;
        const T** rows = reinterpret_cast<const T**>(scratch);
        T* acc = scratch + pointers;
        for (int64_t iw = 0; iw < g.W; ++iw) {
          for (int64_t t = 0; t < RS; ++t) {
            const int64_t ph = h + g.pad_top - (t / g.S) * g.dil_h;
            const int64_t qw = iw + g.pad_left - (t % g.S) * g.dil_w;
            const bool hit = ph >= 0 && qw >= 0 && ph % g.stride_h == 0 &&
                             qw % g.stride_w == 0 && ph / g.stride_h < g.P &&
                             qw / g.stride_w < g.Q;
            rows[t] = hit ? gk.get() + ((n * g.P + ph / g.stride_h) * g.Q + qw / g.stride_w) * g.C
                          : nullptr;
          }
          std::fill(acc, acc + g.C, T(0));
          kernels.pixel(rows, taps.get(), RS, g.C, acc);
          T* xpix = gxp + grad_x.stride.offset(n, 0, h, iw);
          for (int64_t c = 0; c < g.C; ++c) xpix[c * grad_x.stride.c] = acc[c];
        }
      },
      g.W * g.C * RS);
}

template <typename T>
Status grad_weight_channels_last(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 x,
                                 Tensor4 grad_w, Tensor1 grad_bias) {
  const T* xp = static_cast<const T*>(x.data);
  T* gwp = static_cast<T*>(grad_w.data);
  T* gbp = static_cast<T*>(grad_bias.data);
  const int64_t RS = g.R * g.S;
  const AlignedBuffer<T> gk = masked_grad_channels_last<T>(g, grad_y, y);
  if (!gk) return Status::out_of_memory;
  const PlaneKernels<T>& kernels = plane_kernels<T>();
  // Task (n, block of `count` <= cw channels) sums image n's pixels: RS rows
  // of count tap sums, then count bias sums at RS * cw; the images' sums are
  // then added in image order (a fixed order whatever the threads).
  const int64_t cw = std::min<int64_t>(g.C, 64);
  const int64_t blocks = ceil_div(g.C, cw);
  const int64_t pointers = pointer_slots<T>(RS);
  const int64_t sums = (RS + 1) * cw;
  const AlignedBuffer<T> parts = allocate_aligned<T>(g.N * blocks * sums);
  if (!parts) return Status::out_of_memory;
  const Status s = parallel_tasks<T>(
      g.N * blocks, pointers,
      [&](int64_t task, T* scratch) {
        const int64_t n = task / blocks, c0 = (task % blocks) * cw;
        const int64_t count = std::min(cw, g.C - c0);
        T* part = parts.get() + task * sums;
        const T** rows = reinterpret_cast<const T**>(scratch);
        std::fill(part, part + sums, T(0));
        T* bias_part = part + RS * cw;
        for (int64_t p = 0; p < g.P; ++p)
          for (int64_t q = 0; q < g.Q; ++q) {
            for (int64_t t = 0; t < RS; ++t) {
              const int64_t ih = conv_input_index(p, t / g.S, g.stride_h, g.pad_top, g.dil_h);
              const int64_t iw = conv_input_index(q, t % g.S, g.stride_w, g.pad_left, g.dil_w);
              rows[t] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                            ? xp + x.stride.offset(n, c0, ih, iw) : nullptr;
            }
            const T* gpix = gk.get() + ((n * g.P + p) * g.Q + q) * g.C + c0;
            kernels.pixel_weight(rows, gpix, RS, count, part);
            for (int64_t c = 0; c < count; ++c) bias_part[c] += gpix[c];
          }
      },
      g.P * g.Q * cw * RS);
  if (s != Status::ok) return s;
  return parallel_tasks<T>(
      blocks, sums,
      [&](int64_t block, T* total) {
        const int64_t c0 = block * cw, count = std::min(cw, g.C - c0);
        std::fill(total, total + sums, T(0));
        for (int64_t n = 0; n < g.N; ++n) {
          const T* part = parts.get() + (n * blocks + block) * sums;
          for (int64_t i = 0; i < sums; ++i) total[i] += part[i];
        }
        for (int64_t c = 0; c < count; ++c) {
          for (int64_t t = 0; t < RS; ++t)
            gwp[grad_w.stride.offset(c0 + c, 0, t / g.S, t % g.S)] = total[t * count + c];
          if (gbp) gbp[(c0 + c) * grad_bias.stride] = total[RS * cw + c];
        }
      },
      g.N * sums);
}

Status check_depthwise(const Conv2dGeometry& g) {
  return g.C_g() == 1 ? Status::ok : Status::bad_argument;
}

// Whether the padded planes stay within a small multiple of the planes they
// pad: a window far larger than the input (huge padding or dilation) would
// make them huge, and the direct kernels, which visit only the taps inside
// the input, take that geometry instead.
bool planes_fit(const Conv2dGeometry& g) {
  const double rows = static_cast<double>(std::max(
      (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1, g.H + (g.R - 1) * g.dil_h));
  const double cols = static_cast<double>(std::max(
      (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1, g.W + (g.S - 1) * g.dil_w));
  const double planes = static_cast<double>(g.H * g.W + g.P * g.Q);
  return rows * cols <= 4.0 * planes + 4096.0;
}

}  // namespace

Status conv2d_depthwise_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok || g.N == 0) return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if constexpr (has_channels_last_path<T>)
      if (channels_last_path(g, x))
        return forward_channels_last<T>(g, x, w, bias, residual, y, preact);
    if (!planes_fit(g)) return conv2d_direct_forward(dtype, g, x, w, bias, residual, y, preact);
    return forward<T>(g, x, w, bias, residual, y, preact);
  });
}

Status conv2d_depthwise_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                   Tensor4 y, Tensor4 w, Tensor4 grad_x) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok || g.N == 0)
    return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if constexpr (has_channels_last_path<T>)
      if (channels_last_path(g, grad_x))
        return grad_input_channels_last<T>(g, grad_y, y, w, grad_x);
    if (!planes_fit(g)) return conv2d_direct_grad_input(dtype, g, grad_y, y, w, grad_x);
    return grad_input<T>(g, grad_y, y, w, grad_x);
  });
}

Status conv2d_depthwise_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                    Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  if (Status s = check_depthwise(g); s != Status::ok) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if constexpr (has_channels_last_path<T>)
      if (channels_last_path(g, x) && g.N > 0)
        return grad_weight_channels_last<T>(g, grad_y, y, x, grad_w, grad_bias);
    if (!planes_fit(g))
      return conv2d_direct_grad_weight(dtype, g, grad_y, y, x, grad_w, grad_bias);
    return grad_weight<T>(g, grad_y, y, x, grad_w, grad_bias);
  });
}

}  // namespace cnnk::cpu
