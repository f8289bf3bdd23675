// conv2d, depthwise CUDA algorithm: forward, input gradient and weight (+
// bias) gradient for one input channel per group (C/groups == 1) and any
// channel multiplier K_g = K/groups (output channel k reads input channel
// c = k / K_g); f16, bf16, f32 (float accumulators) and f64 (double).
// Every tensor is read and written through its Strides4: NCHW,
// channels_last and non-contiguous views need no copy. No atomics: every
// result is one thread's sum or a fixed-order reduction, so results are
// bitwise reproducible for a given geometry, dtype and GPU.
//
// Filters: 3x3 and 5x5 at stride 1 and 2 without dilation are compile-time
// specialisations (KR x KS taps, stride ST: loops unrolled, the taps in
// registers); everything else (dilation, other sizes, non-square, other
// strides; any padding everywhere) takes the general path (KR = 0), with
// run-time loops. Threads are ordered for the layout of the tensor a kernel
// walks: channels fastest when its channels are contiguous (channels_last:
// a warp reads 32 adjacent channels of a pixel, coalesced), columns fastest
// otherwise (NCHW: a warp reads a run of a row).
//
// depthwise_forward_kernel: a block is 256 threads, each one output row
// segment (n, k, p, q0..q0+COLS-1) of a spatial tile: COLS = 4 adjacent
// columns on the specialised path, whose taps read one input row segment of
// (COLS-1)*ST + KS values per filter row, loaded once into registers and
// reused by every tap and column (sliding window); 1 column on the general
// path, whose tap loops cover only the taps inside the image. Epilogue
// (cnnk/conv2d.h: bias, residual, kept pre-activation, activation) on the
// registers, one pass over the output.
//   Bound: memory. 2*R*S FLOPs per output against one output write and
//   1/K_g input read (x cached): 9 FLOP per element moved for 3x3 at
//   multiplier 1 (~4.5 FLOP/byte in bf16), far below the H100's FMA ridge;
//   bytes ~ x + y + w (+ residual, + z when kept).
//
// depthwise_forward_vec_kernel / depthwise_grad_input_vec_kernel: the
// specialised filters for channels_last tensors at multiplier 1 whose
// channel count, pixel strides and base addresses allow 16-byte vectors
// (vectorisable()): a thread owns V = 16 / sizeof(T) adjacent channels and
// moves them with one vector load or store per pixel (8 channels for
// f16/bf16); the forward slides a window of 2 output columns (V-wide rows
// fill the registers), the weights of a tap are V scalar loads.
//
// depthwise_grad_input_kernel: one thread per input element (n, c, h, w),
// a gather over the flipped filter (no scatter): sum over j < K_g and the
// taps whose output index p = (h + pad_top - r*dil_h) / stride_h is exact and
// inside [0, P) (likewise q) of gy'[n, c*K_g + j, p, q] * w[c*K_g + j, r, s];
// gy' = gy * act'(y) formed on load with the activation a compile-time
// constant inside the loops (a run-time branch between the loads would
// serialise them). Bound: memory; bytes ~ gy (+ y) + grad_x + w.
//
// depthwise_grad_weight_kernel + depthwise_grad_weight_reduce_kernel:
// grad_w[k, r, s] = sum over n, p, q of gy'[n, k, p, q] * x[n, c, ih, iw], a
// per-channel reduction over M = N*P*Q. A block owns a channel tile (32
// channels x 8 pixel lanes when x is channels_last, 1 channel x 256 pixel
// lanes otherwise), a block of taps (all of a specialised filter, 16 on the
// general path) and one split of the pixel range; each thread walks its
// pixels in order with the taps' sums and grad_bias's (the sum of gy') in
// registers, then the block adds its pixel lanes with a fixed tree in shared
// memory, tap by tap. Splits: set by the geometry alone (target ~1056
// blocks, at least 8 chunks of 256 pixels per split, at most 65535): with
// one split the kernel writes grad_w and grad_bias itself; otherwise
// partial sums go to the workspace ([split][K][R*S], then [split][K]) and
// the reduce kernel adds them in split order.
//   Bound: memory; bytes ~ gy (+ y) + x per tap block + 2 * splits * K *
//   (R*S + 1) accumulator words of workspace.
//
// Limits, for every launcher (else Status::index_overflow):
// conv2d_fits_int (cnnk/cuda_conv2d.cuh: sizes, pixel counts and the
// furthest row/column a tap addresses within int); thread and element
// counts and memory offsets are int64.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cnnk/conv2d.h"
#include "cnnk/cuda_conv2d.cuh"
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"

namespace cnnk {
namespace cuda {
namespace {

constexpr int kThreads = 256;              // every kernel's block size
constexpr int kColumns = 4;                // output columns per thread, specialised forward
constexpr int kChannelLanes = 32;          // grad_weight's channels per block, channels_last
constexpr int kGeneralTaps = 16;           // grad_weight's taps per block, general path
constexpr int64_t kTargetBlocks = 132 * 8;  // H100: 132 SMs, several blocks each
constexpr int64_t kMinChunksPerSplit = 8;  // 256-pixel chunks per grad_weight split

// The geometry in int, computed on the host (kernel parameters live in the
// constant bank).
struct DwGeom {
  int N, C, H, W, K, Kg, P, Q, R, S;
  int sh, sw, ph, pw, dh, dw;
  Activation act;
  bool channels_last;  // thread order: channels fastest, else columns fastest
};

// ceil(a / b) for b > 0 and any a, in int.
__device__ __forceinline__ int ceil_div_i(int a, int b) {
  return a > 0 ? (a + b - 1) / b : -(-a / b);
}

// Element e of an (n, channel, row, column) index space, walked channels
// fastest (channels_last) or columns fastest.
struct Element {
  int n, c, row, col;
};
__device__ __forceinline__ Element element(int64_t e, int channels, int rows, int cols,
                                           bool channels_last) {
  Element t;
  if (channels_last) {
    t.c = static_cast<int>(e % channels), e /= channels;
    t.col = static_cast<int>(e % cols), e /= cols;
    t.row = static_cast<int>(e % rows);
    t.n = static_cast<int>(e / rows);
  } else {
    t.col = static_cast<int>(e % cols), e /= cols;
    t.row = static_cast<int>(e % rows), e /= rows;
    t.c = static_cast<int>(e % channels);
    t.n = static_cast<int>(e / channels);
  }
  return t;
}

template <Activation A>
using ActTag = std::integral_constant<Activation, A>;

// body(ActTag<act>{}): the activation as a compile-time constant.
template <typename Body>
__device__ __forceinline__ void with_activation(Activation act, Body&& body) {
  if (act == Activation::relu)
    body(ActTag<Activation::relu>{});
  else if (act == Activation::relu6)
    body(ActTag<Activation::relu6>{});
  else if (act == Activation::silu)
    body(ActTag<Activation::silu>{});
  else
    body(ActTag<Activation::none>{});
}

// gy[go] through the activation's derivative at y[yo] (y unread without one).
template <Activation A, typename T>
__device__ __forceinline__ acc_t<T> masked_grad(const T* gy, const T* y, int64_t go,
                                                int64_t yo) {
  const acc_t<T> v = load(gy, go);
  if constexpr (A == Activation::none)
    return v;
  else
    return activation_grad(v, load(y, yo), A);
}

// ---------------------------------------------------------------------------
// Forward.

struct FwdArgs {
  DwGeom g;
  Tensor4 x, w, y, residual, preact;  // residual, preact optional (null data)
  Tensor1 bias;                       // optional
  int col_tiles;                      // output columns per row, in tiles of COLS
  int64_t threads;                    // N * K * P * col_tiles
};

template <typename T, int KR, int KS, int ST, int COLS>
__global__ void __launch_bounds__(kThreads, 2) depthwise_forward_kernel(const FwdArgs a) {
  using Acc = acc_t<T>;
  const DwGeom& g = a.g;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= a.threads) return;
  const Element t = element(e, g.K, g.P, a.col_tiles, g.channels_last);
  const int k = t.c, p = t.row, q0 = t.col * COLS;
  const T* x = static_cast<const T*>(a.x.data);
  const T* w = static_cast<const T*>(a.w.data);
  const Strides4 xs = a.x.stride, ws = a.w.stride;
  const int64_t xbase = t.n * xs.n + static_cast<int64_t>(k / g.Kg) * xs.c;
  const int64_t wbase = k * ws.n;

  Acc acc[COLS];
#pragma unroll
  for (int i = 0; i < COLS; ++i) acc[i] = Acc(0);
  if constexpr (KR > 0) {
    constexpr int kSpan = (COLS - 1) * ST + KS;  // input columns a filter row reads
    Acc taps[KR * KS];
#pragma unroll
    for (int r = 0; r < KR; ++r)
#pragma unroll
      for (int s = 0; s < KS; ++s) taps[r * KS + s] = load(w, wbase + r * ws.h + s * ws.w);
    const int iw0 = q0 * ST - g.pw;
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      const int ih = p * ST - g.ph + r;
      if (ih < 0 || ih >= g.H) continue;
      const int64_t row = xbase + static_cast<int64_t>(ih) * xs.h;
      Acc xr[kSpan];
#pragma unroll
      for (int j = 0; j < kSpan; ++j) {
        const int iw = iw0 + j;
        xr[j] = (iw >= 0 && iw < g.W) ? load(x, row + static_cast<int64_t>(iw) * xs.w) : Acc(0);
      }
#pragma unroll
      for (int i = 0; i < COLS; ++i)
#pragma unroll
        for (int s = 0; s < KS; ++s) acc[i] += xr[i * ST + s] * taps[r * KS + s];
    }
  } else {
    // Only the taps inside the image: r in [r_lo, r_hi), s in [s_lo, s_hi).
    const int ih0 = p * g.sh - g.ph, iw0 = q0 * g.sw - g.pw;
    const int r_lo = max(0, ceil_div_i(-ih0, g.dh)), r_hi = min(g.R, ceil_div_i(g.H - ih0, g.dh));
    const int s_lo = max(0, ceil_div_i(-iw0, g.dw)), s_hi = min(g.S, ceil_div_i(g.W - iw0, g.dw));
    for (int r = r_lo; r < r_hi; ++r) {
      const int64_t row = xbase + static_cast<int64_t>(ih0 + r * g.dh) * xs.h;
      for (int s = s_lo; s < s_hi; ++s)
        acc[0] += load(x, row + static_cast<int64_t>(iw0 + s * g.dw) * xs.w) *
                  load(w, wbase + r * ws.h + s * ws.w);
    }
  }

  const T* bias = static_cast<const T*>(a.bias.data);
  const T* residual = static_cast<const T*>(a.residual.data);
  T* preact = static_cast<T*>(a.preact.data);
  T* y = static_cast<T*>(a.y.data);
  const Acc b = bias != nullptr ? load(bias, k * a.bias.stride) : Acc(0);
#pragma unroll
  for (int i = 0; i < COLS; ++i) {
    const int q = q0 + i;
    if (q >= g.Q) break;
    Acc v = acc[i] + b;
    if (residual != nullptr) v += load(residual, a.residual.stride.offset(t.n, k, p, q));
    if (preact != nullptr) preact[a.preact.stride.offset(t.n, k, p, q)] = from_acc<T>(v);
    y[a.y.stride.offset(t.n, k, p, q)] = from_acc<T>(apply_activation(v, g.act));
  }
}

// ---------------------------------------------------------------------------
// Input gradient.

struct BwdDataArgs {
  DwGeom g;
  Tensor4 gy, y, w, gx;  // y: read only when an activation is fused
  int64_t threads;       // N * C * H * W
};

template <typename T, int KR, int KS, int ST>
__global__ void __launch_bounds__(kThreads, 2) depthwise_grad_input_kernel(const BwdDataArgs a) {
  using Acc = acc_t<T>;
  const DwGeom& g = a.g;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= a.threads) return;
  const Element t = element(e, g.C, g.H, g.W, g.channels_last);
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* y = static_cast<const T*>(a.y.data);
  const T* w = static_cast<const T*>(a.w.data);
  const Strides4 gs = a.gy.stride, ys = a.y.stride, ws = a.w.stride;
  // Output row p = (th - r*dil_h) / stride_h reads this row through tap r.
  const int th = t.row + g.ph, tw = t.col + g.pw;

  Acc acc = Acc(0);
  with_activation(g.act, [&](auto act) {
    constexpr Activation A = decltype(act)::value;
    for (int j = 0; j < g.Kg; ++j) {
      const int k = t.c * g.Kg + j;
      const int64_t wbase = k * ws.n;
      if constexpr (KR > 0) {
        Acc taps[KR * KS];
#pragma unroll
        for (int r = 0; r < KR; ++r)
#pragma unroll
          for (int s = 0; s < KS; ++s) taps[r * KS + s] = load(w, wbase + r * ws.h + s * ws.w);
#pragma unroll
        for (int r = 0; r < KR; ++r) {
          const int pn = th - r;
          if (pn < 0 || pn % ST != 0 || pn / ST >= g.P) continue;
#pragma unroll
          for (int s = 0; s < KS; ++s) {
            const int qn = tw - s;
            if (qn < 0 || qn % ST != 0 || qn / ST >= g.Q) continue;
            acc += masked_grad<A>(gy, y, gs.offset(t.n, k, pn / ST, qn / ST),
                                  ys.offset(t.n, k, pn / ST, qn / ST)) *
                   taps[r * KS + s];
          }
        }
      } else {
        // th - r*dil_h falls as r grows: the loops stop at the first negative.
        for (int r = 0; r < g.R && th - r * g.dh >= 0; ++r) {
          const int pn = th - r * g.dh;
          if (pn % g.sh != 0 || pn / g.sh >= g.P) continue;
          for (int s = 0; s < g.S && tw - s * g.dw >= 0; ++s) {
            const int qn = tw - s * g.dw;
            if (qn % g.sw != 0 || qn / g.sw >= g.Q) continue;
            acc += masked_grad<A>(gy, y, gs.offset(t.n, k, pn / g.sh, qn / g.sw),
                                  ys.offset(t.n, k, pn / g.sh, qn / g.sw)) *
                   load(w, wbase + r * ws.h + s * ws.w);
          }
        }
      }
    }
  });
  static_cast<T*>(a.gx.data)[a.gx.stride.offset(t.n, t.c, t.row, t.col)] = from_acc<T>(acc);
}

// ---------------------------------------------------------------------------
// channels_last at multiplier 1, vectorised over the channels: a thread owns
// V adjacent channels (16 bytes of each tensor) and moves them with one
// vector load or store; taps and windows as in the scalar kernels.

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void load_pack(const T* p, int64_t i, acc_t<T> (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p + i);
#pragma unroll
  for (int c = 0; c < V; ++c) out[c] = to_acc(pack.v[c]);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const acc_t<T> (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int c = 0; c < V; ++c) pack.v[c] = from_acc<T>(in[c]);
  *reinterpret_cast<Pack<T, V>*>(p + i) = pack;
}

// The V weights of one tap (k0.. k0 + V - 1 are V filters, R*S apart).
template <typename T, int V>
__device__ __forceinline__ void load_taps(const T* w, const Strides4& ws, int k0, int r, int s,
                                          acc_t<T> (&out)[V]) {
#pragma unroll
  for (int c = 0; c < V; ++c) out[c] = load(w, (k0 + c) * ws.n + r * ws.h + s * ws.w);
}

template <typename T, int KR, int KS, int ST, int COLS, int V>
__global__ void __launch_bounds__(kThreads, 1) depthwise_forward_vec_kernel(const FwdArgs a) {
  using Acc = acc_t<T>;
  constexpr int kSpan = (COLS - 1) * ST + KS;
  const DwGeom& g = a.g;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= a.threads) return;
  const Element t = element(e, g.K / V, g.P, a.col_tiles, true);
  const int k0 = t.c * V, p = t.row, q0 = t.col * COLS;
  const T* x = static_cast<const T*>(a.x.data);
  const T* w = static_cast<const T*>(a.w.data);
  const Strides4 xs = a.x.stride;
  const int64_t xbase = t.n * xs.n + static_cast<int64_t>(k0);
  const int iw0 = q0 * ST - g.pw;

  Acc acc[COLS][V];
#pragma unroll
  for (int i = 0; i < COLS; ++i)
#pragma unroll
    for (int c = 0; c < V; ++c) acc[i][c] = Acc(0);
#pragma unroll
  for (int r = 0; r < KR; ++r) {
    const int ih = p * ST - g.ph + r;
    if (ih < 0 || ih >= g.H) continue;
    const int64_t row = xbase + static_cast<int64_t>(ih) * xs.h;
    Acc xr[kSpan][V];
#pragma unroll
    for (int j = 0; j < kSpan; ++j) {
      const int iw = iw0 + j;
      if (iw >= 0 && iw < g.W) {
        load_pack<T, V>(x, row + static_cast<int64_t>(iw) * xs.w, xr[j]);
      } else {
#pragma unroll
        for (int c = 0; c < V; ++c) xr[j][c] = Acc(0);
      }
    }
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      Acc tap[V];
      load_taps<T, V>(w, a.w.stride, k0, r, s, tap);
#pragma unroll
      for (int i = 0; i < COLS; ++i)
#pragma unroll
        for (int c = 0; c < V; ++c) acc[i][c] += xr[i * ST + s][c] * tap[c];
    }
  }

  const T* bias = static_cast<const T*>(a.bias.data);
  const T* residual = static_cast<const T*>(a.residual.data);
  Acc b[V];
#pragma unroll
  for (int c = 0; c < V; ++c) b[c] = bias != nullptr ? load(bias, (k0 + c) * a.bias.stride) : Acc(0);
#pragma unroll
  for (int i = 0; i < COLS; ++i) {
    const int q = q0 + i;
    if (q >= g.Q) break;
    Acc v[V];
    if (residual != nullptr) {
      load_pack<T, V>(residual, a.residual.stride.offset(t.n, k0, p, q), v);
    } else {
#pragma unroll
      for (int c = 0; c < V; ++c) v[c] = Acc(0);
    }
#pragma unroll
    for (int c = 0; c < V; ++c) v[c] += acc[i][c] + b[c];
    if (a.preact.data != nullptr)
      store_pack<T, V>(static_cast<T*>(a.preact.data), a.preact.stride.offset(t.n, k0, p, q), v);
#pragma unroll
    for (int c = 0; c < V; ++c) v[c] = apply_activation(v[c], g.act);
    store_pack<T, V>(static_cast<T*>(a.y.data), a.y.stride.offset(t.n, k0, p, q), v);
  }
}

template <typename T, int KR, int KS, int ST, int V>
__global__ void __launch_bounds__(kThreads, 2) depthwise_grad_input_vec_kernel(
    const BwdDataArgs a) {
  using Acc = acc_t<T>;
  const DwGeom& g = a.g;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= a.threads) return;
  const Element t = element(e, g.C / V, g.H, g.W, true);
  const int c0 = t.c * V;
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* y = static_cast<const T*>(a.y.data);
  const T* w = static_cast<const T*>(a.w.data);
  const int th = t.row + g.ph, tw = t.col + g.pw;

  Acc acc[V];
#pragma unroll
  for (int c = 0; c < V; ++c) acc[c] = Acc(0);
  with_activation(g.act, [&](auto act) {
    constexpr Activation A = decltype(act)::value;
#pragma unroll
    for (int r = 0; r < KR; ++r) {
      const int pn = th - r;
      if (pn < 0 || pn % ST != 0 || pn / ST >= g.P) continue;
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        const int qn = tw - s;
        if (qn < 0 || qn % ST != 0 || qn / ST >= g.Q) continue;
        Acc gv[V], tap[V];
        load_pack<T, V>(gy, a.gy.stride.offset(t.n, c0, pn / ST, qn / ST), gv);
        if constexpr (A != Activation::none) {
          Acc saved[V];
          load_pack<T, V>(y, a.y.stride.offset(t.n, c0, pn / ST, qn / ST), saved);
#pragma unroll
          for (int c = 0; c < V; ++c) gv[c] = activation_grad(gv[c], saved[c], A);
        }
        load_taps<T, V>(w, a.w.stride, c0, r, s, tap);
#pragma unroll
        for (int c = 0; c < V; ++c) acc[c] += gv[c] * tap[c];
      }
    }
  });
  store_pack<T, V>(static_cast<T*>(a.gx.data), a.gx.stride.offset(t.n, c0, t.row, t.col), acc);
}

// ---------------------------------------------------------------------------
// Weight and bias gradient.

struct GwArgs {
  DwGeom g;
  Tensor4 gy, y, x, gw;  // y: read only when an activation is fused
  Tensor1 gb;            // data nullptr: no bias gradient
  // acc_t<T>[splits][K][R*S] then [splits][K]; nullptr: one split, which
  // converts and writes grad_w / grad_bias itself.
  void* partial;
  int M, PQ, RS;  // output pixels in all, per image; taps
  int mper;       // pixels per split (a multiple of 256)
  int lanes;      // channels per block: kChannelLanes (channels_last) or 1
};

template <typename T, int KR, int KS, int ST>
__global__ void __launch_bounds__(kThreads, 1) depthwise_grad_weight_kernel(const GwArgs a) {
  using Acc = acc_t<T>;
  constexpr int kTaps = KR > 0 ? KR * KS : kGeneralTaps;
  __shared__ Acc lanes_sum[kThreads];
  const DwGeom& g = a.g;
  const int rows = kThreads / a.lanes;  // pixel lanes, a power of two
  const int tx = threadIdx.x % a.lanes, ty = threadIdx.x / a.lanes;
  const int k = blockIdx.x * a.lanes + tx;
  const bool active = k < g.K;
  const int tap0 = blockIdx.y * kTaps;
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* y = static_cast<const T*>(a.y.data);
  const T* x = static_cast<const T*>(a.x.data);
  const Strides4 gs = a.gy.stride, ys = a.y.stride, xs = a.x.stride;

  // Row and column offsets of the block's taps (compile-time when specialised).
  int tap_h[kTaps], tap_w[kTaps];
  bool tap_in[kTaps];
#pragma unroll
  for (int i = 0; i < kTaps; ++i) {
    const int tap = tap0 + i;
    tap_in[i] = KR > 0 || tap < a.RS;
    tap_h[i] = KR > 0 ? i / KS : (tap / g.S) * g.dh;
    tap_w[i] = KR > 0 ? i % KS : (tap % g.S) * g.dw;
  }
  const int sh = KR > 0 ? ST : g.sh, sw = KR > 0 ? ST : g.sw;

  Acc acc[kTaps], bias = Acc(0);
#pragma unroll
  for (int i = 0; i < kTaps; ++i) acc[i] = Acc(0);
  const int split = static_cast<int>(blockIdx.z);
  const int m_end = min(a.M, (split + 1) * a.mper);
  if (active) {
    const int64_t xchan = static_cast<int64_t>(k / g.Kg) * xs.c;
    for (int m = split * a.mper + ty; m < m_end; m += rows) {
      const int n = m / a.PQ, pq = m - n * a.PQ, p = pq / g.Q, q = pq - p * g.Q;
      Acc gv = load(gy, gs.offset(n, k, p, q));
      if (g.act != Activation::none) gv = activation_grad(gv, load(y, ys.offset(n, k, p, q)), g.act);
      bias += gv;
      const int ih0 = p * sh - g.ph, iw0 = q * sw - g.pw;
      const int64_t xbase = n * xs.n + xchan;
#pragma unroll
      for (int i = 0; i < kTaps; ++i) {
        const int ih = ih0 + tap_h[i], iw = iw0 + tap_w[i];
        if (tap_in[i] && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
          acc[i] += gv * load(x, xbase + static_cast<int64_t>(ih) * xs.h +
                                     static_cast<int64_t>(iw) * xs.w);
      }
    }
  }

  // Adds the block's pixel lanes of one sum with a fixed tree; thread ty == 0
  // of each channel gets the total.
  auto block_sum = [&](Acc v) {
    lanes_sum[threadIdx.x] = v;
    __syncthreads();
    for (int half = rows / 2; half > 0; half /= 2) {
      if (ty < half) lanes_sum[threadIdx.x] += lanes_sum[threadIdx.x + half * a.lanes];
      __syncthreads();
    }
    const Acc total = lanes_sum[tx];
    __syncthreads();  // read before the next sum overwrites
    return total;
  };
  const bool writer = active && ty == 0;
  Acc* partial = static_cast<Acc*>(a.partial);
#pragma unroll
  for (int i = 0; i < kTaps; ++i) {
    if (!tap_in[i]) continue;  // uniform over the block
    const Acc total = block_sum(acc[i]);
    if (!writer) continue;
    const int tap = tap0 + i;
    if (partial != nullptr) {
      partial[(static_cast<int64_t>(blockIdx.z) * g.K + k) * a.RS + tap] = total;
    } else {
      const int r = tap / g.S;
      static_cast<T*>(a.gw.data)[a.gw.stride.offset(k, 0, r, tap - r * g.S)] = from_acc<T>(total);
    }
  }
  if (blockIdx.y != 0 || a.gb.data == nullptr) return;
  const Acc total = block_sum(bias);
  if (!writer) return;
  if (partial != nullptr)
    partial[static_cast<int64_t>(gridDim.z) * g.K * a.RS + static_cast<int64_t>(blockIdx.z) * g.K +
            k] = total;
  else
    static_cast<T*>(a.gb.data)[k * a.gb.stride] = from_acc<T>(total);
}

// Sums the splits' partial weight (and bias) gradients in split order.
template <typename T>
__global__ void __launch_bounds__(kThreads) depthwise_grad_weight_reduce_kernel(const GwArgs a,
                                                                                int splits) {
  using Acc = acc_t<T>;
  const Acc* partial = static_cast<const Acc*>(a.partial);
  const int64_t KRS = static_cast<int64_t>(a.g.K) * a.RS;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  Acc v = Acc(0);
  if (e < KRS) {
    for (int s = 0; s < splits; ++s) v += partial[s * KRS + e];
    const int k = static_cast<int>(e / a.RS), tap = static_cast<int>(e - k * int64_t{a.RS});
    const int r = tap / a.g.S;
    static_cast<T*>(a.gw.data)[a.gw.stride.offset(k, 0, r, tap - r * a.g.S)] = from_acc<T>(v);
  } else if (e < KRS + a.g.K && a.gb.data != nullptr) {
    const int k = static_cast<int>(e - KRS);
    for (int s = 0; s < splits; ++s) v += partial[splits * KRS + s * a.g.K + k];
    static_cast<T*>(a.gb.data)[k * a.gb.stride] = from_acc<T>(v);
  }
}

// ---------------------------------------------------------------------------
// Host side.

DwGeom to_geom(const Conv2dGeometry& g, const Tensor4& walked, int64_t channels) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {i(g.N),        i(g.C),        i(g.H),     i(g.W),        i(g.K),        i(g.K_g()),
          i(g.P),        i(g.Q),        i(g.R),     i(g.S),        i(g.stride_h), i(g.stride_w),
          i(g.pad_top),  i(g.pad_left), i(g.dil_h), i(g.dil_w),    g.activation,
          walked.stride.c == 1 && channels > 1};
}

// The specialisation that takes g: body(filter) with the filter's
// (KR, KS, ST) as integral constants, KR = 0 for the general path.
template <int KR, int KS, int ST>
struct Filter {
  static constexpr int kr = KR, ks = KS, st = ST;
};
template <typename Body>
Status with_filter(const Conv2dGeometry& g, Body&& body) {
  const bool plain = g.stride_h == g.stride_w && g.dil_h == 1 && g.dil_w == 1 && g.R == g.S;
  if (plain && g.R == 3 && g.stride_h == 1) return body(Filter<3, 3, 1>{});
  if (plain && g.R == 3 && g.stride_h == 2) return body(Filter<3, 3, 2>{});
  if (plain && g.R == 5 && g.stride_h == 1) return body(Filter<5, 5, 1>{});
  if (plain && g.R == 5 && g.stride_h == 2) return body(Filter<5, 5, 2>{});
  return body(Filter<0, 0, 0>{});
}

int64_t blocks_for(int64_t threads) { return ceil_div(threads, kThreads); }

// How grad_weight splits its pixel range; a function of the geometry only.
struct GwPlan {
  int64_t tap_blocks, splits, mper;
  size_t workspace_bytes;
};

GwPlan plan_grad_weight(DType dtype, const Conv2dGeometry& g) {
  GwPlan plan{};
  const int64_t RS = g.R * g.S, M = g.N * g.P * g.Q;
  const bool specialised = with_filter(g, [](auto f) {
    return decltype(f)::kr > 0 ? Status::ok : Status::bad_argument;
  }) == Status::ok;
  plan.tap_blocks = specialised ? 1 : ceil_div(RS, kGeneralTaps);
  const int64_t tiles = ceil_div(g.K, kChannelLanes) * plan.tap_blocks;
  const int64_t splits = std::max<int64_t>(
      1, std::min({ceil_div(kTargetBlocks, tiles), ceil_div(M, kMinChunksPerSplit * kThreads),
                   kMaxGridY}));
  plan.mper = ceil_div(ceil_div(M, splits), kThreads) * kThreads;
  plan.splits = M > 0 ? ceil_div(M, plan.mper) : 1;
  const size_t acc_bytes = dtype == DType::float64 ? sizeof(double) : sizeof(float);
  plan.workspace_bytes =
      plan.splits > 1 ? static_cast<size_t>(plan.splits * g.K * (RS + 1)) * acc_bytes : 0;
  return plan;
}

// Channels per 16-byte vector of T.
template <typename T>
constexpr int kVector = 16 / static_cast<int>(sizeof(T));

// Whether the vectorised kernels take these tensors: multiplier 1, channels
// a multiple of V, and every given tensor channels_last with its pixel
// strides and base 16-byte aligned (a vector never straddles an alignment).
template <typename T>
bool vectorisable(const Conv2dGeometry& g, std::initializer_list<const Tensor4*> tensors) {
  constexpr int V = kVector<T>;
  if (g.K_g() != 1 || g.C % V != 0) return false;
  for (const Tensor4* t : tensors) {
    if (t->data == nullptr) continue;
    if (t->stride.c != 1 || t->stride.n % V != 0 || t->stride.h % V != 0 ||
        t->stride.w % V != 0 || reinterpret_cast<std::uintptr_t>(t->data) % 16 != 0)
      return false;
  }
  return true;
}

template <typename T>
Status forward_impl(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias,
                    Tensor4 residual, Tensor4 y, Tensor4 preact, cudaStream_t stream) {
  FwdArgs a{};
  a.g = to_geom(g, x, g.C), a.x = x, a.w = w, a.y = y, a.bias = bias;
  a.residual = residual, a.preact = preact;
  const bool vector = vectorisable<T>(g, {&x, &y, &residual, &preact});
  return with_filter(g, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kr > 0) {
      if (vector) {
        // Two columns: the V-wide window of a row already fills the registers.
        constexpr int kCols = 2, V = kVector<T>;
        a.col_tiles = static_cast<int>(ceil_div(g.Q, kCols));
        a.threads = g.N * (g.K / V) * g.P * a.col_tiles;
        const int64_t blocks = blocks_for(a.threads);
        if (blocks > kMaxGridX) return Status::index_overflow;
        depthwise_forward_vec_kernel<T, F::kr, F::ks, F::st, kCols, V>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
        return launched();
      }
    }
    constexpr int kCols = F::kr > 0 ? kColumns : 1;
    a.col_tiles = static_cast<int>(ceil_div(g.Q, kCols));
    a.threads = g.N * g.K * g.P * a.col_tiles;
    const int64_t blocks = blocks_for(a.threads);
    if (blocks > kMaxGridX) return Status::index_overflow;
    depthwise_forward_kernel<T, F::kr, F::ks, F::st, kCols>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
    return launched();
  });
}

template <typename T>
Status grad_input_impl(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                       Tensor4 grad_x, cudaStream_t stream) {
  BwdDataArgs a{};
  a.g = to_geom(g, grad_x, g.C), a.gy = grad_y, a.y = y, a.w = w, a.gx = grad_x;
  const bool vector = vectorisable<T>(g, {&grad_y, &y, &grad_x});
  return with_filter(g, [&](auto f) {
    using F = decltype(f);
    constexpr int V = F::kr > 0 ? kVector<T> : 1;
    a.threads = g.N * g.C * g.H * g.W / (vector && F::kr > 0 ? V : 1);
    const int64_t blocks = blocks_for(a.threads);
    if (blocks > kMaxGridX) return Status::index_overflow;
    if constexpr (F::kr > 0) {
      if (vector) {
        depthwise_grad_input_vec_kernel<T, F::kr, F::ks, F::st, V>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
        return launched();
      }
    }
    depthwise_grad_input_kernel<T, F::kr, F::ks, F::st>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
    return launched();
  });
}

template <typename T>
Status grad_weight_impl(const Conv2dGeometry& g, const GwPlan& plan, Tensor4 grad_y, Tensor4 y,
                        Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias, void* workspace,
                        cudaStream_t stream) {
  GwArgs a{};
  a.g = to_geom(g, x, g.C), a.gy = grad_y, a.y = y, a.x = x, a.gw = grad_w, a.gb = grad_bias;
  a.partial = plan.splits > 1 ? workspace : nullptr;
  a.PQ = static_cast<int>(g.P * g.Q), a.M = static_cast<int>(g.N * g.P * g.Q);
  a.RS = static_cast<int>(g.R * g.S), a.mper = static_cast<int>(plan.mper);
  a.lanes = a.g.channels_last ? kChannelLanes : 1;
  const int64_t reduce_blocks = blocks_for(g.K * (g.R * g.S + 1));
  const int64_t channel_blocks = ceil_div(g.K, a.lanes);
  if (channel_blocks > kMaxGridX || plan.tap_blocks > kMaxGridY || reduce_blocks > kMaxGridX)
    return Status::index_overflow;
  const dim3 grid(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(plan.tap_blocks),
                  static_cast<unsigned>(plan.splits));
  const Status s = with_filter(g, [&](auto f) {
    using F = decltype(f);
    depthwise_grad_weight_kernel<T, F::kr, F::ks, F::st><<<grid, kThreads, 0, stream>>>(a);
    return launched();
  });
  if (s != Status::ok || a.partial == nullptr) return s;
  depthwise_grad_weight_reduce_kernel<T>
      <<<static_cast<unsigned>(reduce_blocks), kThreads, 0, stream>>>(
          a, static_cast<int>(plan.splits));
  return launched();
}

// The checks every launcher makes beyond the shared ones.
Status check_depthwise(DType dtype, const Conv2dGeometry& g) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.C_g() != 1) return Status::bad_argument;
  return conv2d_fits_int(g) ? Status::ok : Status::index_overflow;
}

}  // namespace

Status conv2d_depthwise_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                                cudaStream_t stream) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok) return s;
  if (Status s = check_depthwise(dtype, g); s != Status::ok || g.N == 0) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return forward_impl<typename decltype(type)::type>(g, x, w, bias, residual, y, preact,
                                                       stream);
  });
}

Status conv2d_depthwise_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                   Tensor4 y, Tensor4 w, Tensor4 grad_x, cudaStream_t stream) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok) return s;
  if (Status s = check_depthwise(dtype, g); s != Status::ok || g.N == 0) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_input_impl<typename decltype(type)::type>(g, grad_y, y, w, grad_x, stream);
  });
}

size_t conv2d_depthwise_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g) {
  if (check_conv2d_geometry(g) != Status::ok || check_depthwise(dtype, g) != Status::ok) return 0;
  return plan_grad_weight(dtype, g).workspace_bytes;
}

Status conv2d_depthwise_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                    Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                    Workspace workspace, cudaStream_t stream) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  if (Status s = check_depthwise(dtype, g); s != Status::ok) return s;
  return run_grad_weight_plan(
      dtype, g, plan_grad_weight, workspace, [&](auto type, const GwPlan& plan) {
        return grad_weight_impl<typename decltype(type)::type>(g, plan, grad_y, y, x, grad_w,
                                                               grad_bias, workspace.data, stream);
      });
}

}  // namespace cuda
}  // namespace cnnk
