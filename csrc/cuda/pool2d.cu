// pool2d, CUDA: max and average pooling over sliding or adaptive windows,
// forward and input gradient, for f16, bf16, f32 (float accumulators) and f64
// (double). Every tensor is read and written through its Strides4, so NCHW,
// channels_last and non-contiguous views need no copy. No atomics and no
// shared memory: every output element is produced by one thread in a fixed
// order (the backward passes are gathers), so results are bitwise
// reproducible for a given geometry, dtype and layout.
//
// Notation: N batch, C channels, H x W input, P x Q output, b bytes per
// element, s stride; a strip is the E elements of the kernel's output tensor
// that one thread produces.
//
// Thread mapping, shared by the four kernels and chosen by the launcher from
// the strides of the tensor the kernel writes (y forward, grad_x backward):
//   channels fastest (its c stride is 1, channels_last): threads walk
//     (n, row, col, channel strip) with the strip fastest, so a warp reads and
//     writes consecutive channels of neighbouring pixels, and the E channels
//     of a strip share one window. E = 16 / b (8 for f16/bf16, 4 for f32, 2
//     for f64), one 16-byte load or store per tap and tensor, when C % E == 0
//     and every tensor has c stride 1, its other strides multiples of E and a
//     16-byte aligned base; otherwise E = 1 and any strides.
//   columns fastest (NCHW and other views): threads walk (n, c, row, column
//     strip); E = 4 consecutive columns of one row (1 when the row is shorter
//     than 4), which share their window rows and keep their own column
//     windows. A strip's tap loop runs to its longest column window, taps
//     past an element's own window predicated off; the E independent loads
//     per tap keep more bytes in flight than one output per thread would.
//   A 1-D grid of 256-thread blocks, one strip per thread. The launcher
//   splits the batch so that a launch has fewer than 2^31 - 256 strips: the
//   strip index and its decomposition (multiply-shift dividers, no hardware
//   division) stay in 32 bits; memory offsets are int64.
//
// pool2d_forward_kernel<T, kMax, kChannelsLast, E>
//   Algorithm: the window of each output is clipped to the input once (rows
//   and columns: first tap inside the input, step dilation; adaptive windows
//   [floor(p H / P), ceil((p + 1) H / P)), step 1) and then visited rows
//   then columns in increasing order, with no per-tap bounds test (the
//   column strips only predicate off the taps past an element's own window).
//   Max follows torch: the running max starts at -inf with the index of the
//   window's first element, and an element replaces it when greater or NaN
//   (the first maximum wins a tie, the last NaN wins), compared in the
//   accumulator type; indices h * W + w are written when requested. Avg sums
//   in the accumulator and divides by avg_pool_divisor (row factor * column
//   factor).
//   Bound: DRAM bytes ~ x + y (+ indices) = N*C*(H*W*b + P*Q*(b + 8 with
//   indices)), e.g. 2x2/s2 f16 with indices: 4*2 + 2 + 8 = 18 bytes per
//   output; overlapping windows re-read x from L1/L2. Per tap: one load (a
//   16-byte one per strip on the vector path) and a compare-select or an
//   add. Global pooling on NCHW (P = Q = 1) has one thread walk a whole
//   plane (N*C threads): latency-bound when N*C is small.
//
// pool2d_backward_kernel<T, kMax, kChannelsLast, E>
//   Algorithm: a gather. Each grad_x element (n, c, h, w) sums, rows outer
//   and columns inner, over the windows that contain it: adaptive windows
//   p increasing over adaptive_covering_outputs; sliding windows in tap
//   order (taps ascending, so outputs descending), only outputs that read
//   (h, w) at an exact tap. Those form an arithmetic progression of step
//   dil / gcd(s, dil), found once per element (no division inside the
//   loop). Disjoint windows (kernel == stride, no dilation) take their one
//   window p = (h + pad) / s directly. Max adds grad_y where indices ==
//   h * W + w (both loaded unconditionally, then selected, so the two loads
//   overlap); avg adds grad_y / divisor. Every grad_x element is written, 0
//   where no window takes it.
//   Bound: DRAM bytes ~ grad_y (+ indices) + grad_x = N*C*(P*Q*(b + 8 for
//   max) + H*W*b), e.g. 2x2/s2 f16 max: (2 + 8)/4 + 2 = 4.5 bytes per input
//   element; each covering window costs two (max) or one (avg) loads, L1/L2
//   hits but the first. Avg also pays a divisor and an IEEE division per
//   window, to round as torch does.
//
// pool2d_gather_kernel<T, kChannelsLast>: max pooling's double backward,
//   y = x at the indices; see the kernel.
//
// Registers: every kernel is compiled for 4 resident 256-thread blocks (at
// most 64 registers, at least half occupancy) with no spills; the loops over
// covering windows and over a column strip's taps are not unrolled, to stay
// within that (the max gathers with E > 1 use up to all 64).
//
// Limits, for every launcher (else Status::index_overflow): C, H, W, P, Q,
// kernel, stride, padding and dilation at most 2^30 (the gather: the sizes only);
// H*W within int; at most 2^31 - 256 strips per image (a strip count is at
// most the element count, C*P*Q forward, C*H*W backward). Sliding windows,
// with reach_h = (P-1)*s_h + kernel_h*dil_h (likewise reach_w): reach_h,
// H + pad_h + s_h (likewise W), kernel_h*kernel_w and reach_h*W + reach_w
// within int. Adaptive windows: H*P + H + P (likewise W, Q) within int. N is
// unbounded: the launcher splits the batch over several launches.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/pool2d.h"

namespace cnnk {
namespace cuda {
namespace {

constexpr int kThreads = 256;      // every kernel's block size
// Blocks per SM the kernels are compiled for: at most 64 registers, so at
// least half the SM's threads are resident to keep loads in flight.
constexpr int kMinBlocks = 4;
constexpr int kStripW = 4;         // outputs per thread along a row (columns-fastest mapping)
constexpr int64_t kSizeLimit = int64_t{1} << 30;
// Strips per launch: the last block's thread indices stay below 2^31.
constexpr int64_t kMaxStrips = (int64_t{1} << 31) - kThreads;

__device__ __forceinline__ int64_t load_index(const int64_t* p, int64_t i) {
  return __ldg(p + i);
}

// The 16 bytes of consecutive channels one vector-path thread owns.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kLen = 16 / static_cast<int>(sizeof(T));
  T v[kLen];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  Pack<T> r;
  memcpy(&r, &u, sizeof(r));
  return r;
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& r) {
  uint4 u;
  memcpy(&u, &r, sizeof(u));
  *reinterpret_cast<uint4*>(p) = u;
}

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by a multiply-high and a shift
// (Granlund-Montgomery, as torch's IntDivider): a hardware-free division in
// a few instructions. mul = floor(2^32 (2^shift - d) / d) + 1 with 2^shift
// the smallest power of two >= d; n + mulhi(n, mul) < 2^32 for n < 2^31.
struct FastDiv {
  int d;
  unsigned mul, shift;
  __device__ __forceinline__ int operator()(int n) const {
    const unsigned u = static_cast<unsigned>(n);
    return static_cast<int>((__umulhi(u, mul) + u) >> shift);
  }
};

FastDiv fast_div(int64_t d) {
  unsigned shift = 0;
  while ((int64_t{1} << shift) < d) ++shift;
  const uint64_t mul = ((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1;
  return {static_cast<int>(d), static_cast<unsigned>(mul), shift};
}

// ---------------------------------------------------------------------------
// Geometry in int, computed on the host: the kernels read it from the
// constant bank instead of converting the int64 fields in registers.

// One spatial dimension (rows or columns).
struct Dim {
  int in, out;                     // input and output sizes
  int kernel, stride, pad, dil;    // sliding windows; adaptive ones have dil 1
  int span;                        // (kernel - 1) * dil
  int dec;                         // dil / gcd(stride, dil): outputs between exact taps
  int step;                        // backward order: -dec (taps ascending), adaptive +1
  FastDiv win_div;                 // by out: adaptive window bounds (adaptive only)
  FastDiv cover_div;               // by in (adaptive) or stride: covering outputs
};

struct Geom {
  Dim h, w;
  bool adaptive, count_include_pad;
  bool disjoint;         // pool_windows_disjoint: one covering window per element
  int64_t divisor_override;  // 0: none; any other value, negative too, divides
};

// Forward: src x, dst y, ind the indices (data null when not wanted).
// Backward: src grad_y, dst grad_x, ind the forward's indices (max only).
struct Args {
  Geom g;
  Tensor4 src, dst, ind;
  FastDiv d0, d1, d2;  // strip index -> coordinates, fastest dimension first
  int strips;          // strips (threads with work) in this launch
};

// Input taps start, start + dil, ... below end of one output's window,
// clipped to the input (pool_window in int).
struct Window {
  int start, end;
};

__device__ __forceinline__ Window window(int o, const Dim& d, bool adaptive) {
  if (adaptive) return {d.win_div(o * d.in), d.win_div((o + 1) * d.in + d.out - 1)};
  const int s = o * d.stride - d.pad;
  const int end = min(s + d.span + 1, d.in);
  if (s >= 0) return {s, end};
  // First tap inside the input: whole dilation steps (only at the top/left edge).
  return {d.dil == 1 ? 0 : s + (d.dil - 1 - s) / d.dil * d.dil, end};
}

// Taps of a clipped window.
__device__ __forceinline__ int taps(Window win, int dil) {
  if (win.end <= win.start) return 0;
  return dil == 1 ? win.end - win.start : (win.end - win.start - 1) / dil + 1;
}

// One factor of avg_pool_divisor: the window's size along one dimension.
__device__ __forceinline__ int avg_factor(int o, Window win, const Dim& d, const Geom& g) {
  if (g.adaptive || !g.count_include_pad) return win.end - win.start;
  const int s = o * d.stride - d.pad;  // clipped to the padded input only
  return min(s + d.kernel, d.in + d.pad) - s;
}

__device__ __forceinline__ int64_t avg_divisor(const Geom& g, int row_factor, int col_factor) {
  return g.divisor_override != 0 ? g.divisor_override : row_factor * col_factor;
}

// Outputs whose windows contain input index i along one dimension: first,
// first + d.step, ... (count of them), in the backward's summation order.
struct Cover {
  int first, count;
};

__device__ __forceinline__ Cover cover(int i, const Dim& d, bool adaptive, bool disjoint) {
  if (adaptive) {
    const int lo = d.cover_div(i * d.out);
    return {lo, d.cover_div((i + 1) * d.out + d.in - 1) - lo};
  }
  const int t = i + d.pad;
  const int top = d.cover_div(t);  // last output whose window starts at or before i
  if (disjoint) return {top, top < d.out ? 1 : 0};
  // First output whose window still reaches i.
  const int lo = t > d.span ? d.cover_div(t - d.span + d.stride - 1) : 0;
  int hi = min(top, d.out - 1);
  // Dilated windows read i only at an exact tap, (t - o*stride) % dil == 0:
  // the exact outputs are one residue class mod dec; step down to its top
  // (at most dec - 1 steps, or out of range when gcd(stride, dil) misses t).
  if (d.dil > 1) {
    while (hi >= lo && (t - hi * d.stride) % d.dil != 0) --hi;
    return {hi, hi >= lo ? (hi - lo) / d.dec + 1 : 0};
  }
  return {hi, hi >= lo ? hi - lo + 1 : 0};
}

// Coordinates of a strip's first element: the strip runs along c
// (channels fastest) or along col.
struct Strip {
  int n, c, row, col;
};

template <bool kChannelsLast, int E>
__device__ __forceinline__ Strip locate(int s, const Args& a) {
  const int r0 = a.d0(s), i0 = s - r0 * a.d0.d;
  const int r1 = a.d1(r0), i1 = r0 - r1 * a.d1.d;
  const int i3 = a.d2(r1), i2 = r1 - i3 * a.d2.d;
  if constexpr (kChannelsLast) return {i3, i0 * E, i2, i1};  // (n, row, col, c strip)
  return {i3, i2, i1, i0 * E};                               // (n, c, row, col strip)
}

// Running reductions of the forward. Max follows torch: an element replaces
// the max when greater or NaN.
template <typename Acc>
struct MaxReduce {
  Acc v;
  int at;
  __device__ __forceinline__ void init(int first) {
    v = -static_cast<Acc>(INFINITY);
    at = first;
  }
  __device__ __forceinline__ void add(Acc x, int i) {
    if (x > v || isnan(x)) {
      v = x;
      at = i;
    }
  }
};

template <typename Acc>
struct SumReduce {
  Acc v;
  __device__ __forceinline__ void init(int) { v = Acc(0); }
  __device__ __forceinline__ void add(Acc x, int) { v += x; }
};

template <typename T, bool kMax>
using Reduce = std::conditional_t<kMax, MaxReduce<acc_t<T>>, SumReduce<acc_t<T>>>;

// ---------------------------------------------------------------------------
// Forward.

template <typename T, bool kMax, bool kChannelsLast, int E>
__global__ void __launch_bounds__(kThreads, kMinBlocks) pool2d_forward_kernel(const Args a) {
  using Acc = acc_t<T>;
  static_assert(!kChannelsLast || E == 1 || E == Pack<T>::kLen, "vector strips are 16 bytes");
  const int s = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (s >= a.strips) return;
  const Geom& g = a.g;
  const Strip st = locate<kChannelsLast, E>(s, a);
  const T* x = static_cast<const T*>(a.src.data);
  T* y = static_cast<T*>(a.dst.data);
  int64_t* ind = static_cast<int64_t*>(a.ind.data);
  const Strides4 xs = a.src.stride, ys = a.dst.stride, is = a.ind.stride;
  const int W = g.w.in;
  const Window rows = window(st.row, g.h, g.adaptive);
  const int64_t x_dh = int64_t{g.h.dil} * xs.h, x_dw = int64_t{g.w.dil} * xs.w;
  const int64_t xbase = st.n * xs.n + st.c * xs.c + rows.start * xs.h;
  Reduce<T, kMax> red[E];

  if constexpr (kChannelsLast) {
    // The strip's channels share the window: one (vector) load per tap.
    const Window cols = window(st.col, g.w, g.adaptive);
#pragma unroll
    for (int k = 0; k < E; ++k) red[k].init(rows.start * W + cols.start);
    int64_t xr = xbase + cols.start * xs.w;
    for (int r = rows.start; r < rows.end; r += g.h.dil, xr += x_dh) {
      int64_t xo = xr;
      for (int col = cols.start; col < cols.end; col += g.w.dil, xo += x_dw) {
        const int at = r * W + col;
        if constexpr (E == 1) {
          red[0].add(load(x, xo), at);
        } else {
          const Pack<T> v = load_pack(x + xo);
#pragma unroll
          for (int k = 0; k < E; ++k) red[k].add(to_acc(v.v[k]), at);
        }
      }
    }

    const int64_t yo = st.n * ys.n + st.c * ys.c + st.row * ys.h + st.col * ys.w;
    if constexpr (!kMax) {
      const Acc div = static_cast<Acc>(avg_divisor(g, avg_factor(st.row, rows, g.h, g),
                                                   avg_factor(st.col, cols, g.w, g)));
#pragma unroll
      for (int k = 0; k < E; ++k) red[k].v /= div;
    }
    if constexpr (E == 1) {
      y[yo] = from_acc<T>(red[0].v);
    } else {
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < E; ++k) out.v[k] = from_acc<T>(red[k].v);
      store_pack(y + yo, out);
    }
    if constexpr (kMax) {
      if (ind != nullptr) {
        const int64_t io = st.n * is.n + st.c * is.c + st.row * is.h + st.col * is.w;
        if constexpr (E == 1) {
          ind[io] = red[0].at;
        } else {
          longlong2* out = reinterpret_cast<longlong2*>(ind + io);
#pragma unroll
          for (int k = 0; k < E; k += 2) out[k / 2] = make_longlong2(red[k].at, red[k + 1].at);
        }
      }
    }
  } else {
    // E consecutive columns of one row; past the row's end the strip repeats
    // its last column (computed, not stored), so every address stays valid.
    const int Q = g.w.out;
    Window cols[E];
    int64_t xcol[E];
    int jmax = 0;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      cols[k] = window(min(st.col + k, Q - 1), g.w, g.adaptive);
      xcol[k] = cols[k].start * xs.w;
      jmax = max(jmax, taps(cols[k], g.w.dil));
      red[k].init(rows.start * W + cols[k].start);
    }
    int64_t xr = xbase;
    for (int r = rows.start; r < rows.end; r += g.h.dil, xr += x_dh) {
      int64_t xo = xr;
      // The strip's E loads per tap already overlap; unrolling the taps too
      // would cost registers, hence occupancy.
#pragma unroll 1
      for (int j = 0, jd = 0; j < jmax; ++j, jd += g.w.dil, xo += x_dw) {
#pragma unroll
        for (int k = 0; k < E; ++k) {
          const int col = cols[k].start + jd;
          if (col < cols[k].end) red[k].add(load(x, xo + xcol[k]), r * W + col);
        }
      }
    }

    const int row_factor = avg_factor(st.row, rows, g.h, g);
    const int64_t yo = st.n * ys.n + st.c * ys.c + st.row * ys.h;
    const int64_t io = st.n * is.n + st.c * is.c + st.row * is.h;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      const int q = st.col + k;
      if (q < Q) {
        if constexpr (kMax) {
          y[yo + q * ys.w] = from_acc<T>(red[k].v);
          if (ind != nullptr) ind[io + q * is.w] = red[k].at;
        } else {
          const int64_t div = avg_divisor(g, row_factor, avg_factor(q, cols[k], g.w, g));
          y[yo + q * ys.w] = from_acc<T>(red[k].v / static_cast<Acc>(div));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Input gradient.

template <typename T, bool kMax, bool kChannelsLast, int E>
__global__ void __launch_bounds__(kThreads, kMinBlocks) pool2d_backward_kernel(const Args a) {
  using Acc = acc_t<T>;
  static_assert(!kChannelsLast || E == 1 || E == Pack<T>::kLen, "vector strips are 16 bytes");
  const int s = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (s >= a.strips) return;
  const Geom& g = a.g;
  const Strip st = locate<kChannelsLast, E>(s, a);
  const T* gy = static_cast<const T*>(a.src.data);
  T* gx = static_cast<T*>(a.dst.data);
  const int64_t* ind = static_cast<const int64_t*>(a.ind.data);
  const Strides4 gs = a.src.stride, xs = a.dst.stride, is = a.ind.stride;
  const int W = g.w.in;
  const Cover rc = cover(st.row, g.h, g.adaptive, g.disjoint);
  // Offsets of the first covering row and the steps between covering windows.
  const int64_t g_dp = int64_t{g.h.step} * gs.h, g_dq = int64_t{g.w.step} * gs.w;
  const int64_t i_dp = int64_t{g.h.step} * is.h, i_dq = int64_t{g.w.step} * is.w;
  const int64_t gbase = st.n * gs.n + st.c * gs.c + rc.first * gs.h;
  const int64_t ibase = st.n * is.n + st.c * is.c + rc.first * is.h;
  Acc acc[E];
#pragma unroll
  for (int k = 0; k < E; ++k) acc[k] = Acc(0);

  if constexpr (kChannelsLast) {
    // The strip's channels share their covering windows.
    const Cover cc = cover(st.col, g.w, g.adaptive, g.disjoint);
    const int64_t target = st.row * W + st.col;
    int64_t gr = gbase + cc.first * gs.w, ir = ibase + cc.first * is.w;
    for (int i = 0, p = rc.first; i < rc.count; ++i, p += g.h.step, gr += g_dp, ir += i_dp) {
      const int row_factor = kMax ? 0 : avg_factor(p, window(p, g.h, g.adaptive), g.h, g);
      int64_t go = gr, io = ir;
      // A row has few covering windows (about kernel / stride): unrolling
      // would only add remainder code and registers.
#pragma unroll 1
      for (int j = 0, q = cc.first; j < cc.count; ++j, q += g.w.step, go += g_dq, io += i_dq) {
        Acc v[E];
        if constexpr (E == 1) {
          v[0] = load(gy, go);
        } else {
          const Pack<T> pv = load_pack(gy + go);
#pragma unroll
          for (int k = 0; k < E; ++k) v[k] = to_acc(pv.v[k]);
        }
        if constexpr (kMax) {
          // Adding 0 where the index differs equals skipping: the sum starts
          // at +0 and is never -0. Both loads are issued before the select.
          if constexpr (E == 1) {
            acc[0] += load_index(ind, io) == target ? v[0] : Acc(0);
          } else {
#pragma unroll
            for (int k = 0; k < E; k += 2) {
              const longlong2 at = __ldg(reinterpret_cast<const longlong2*>(ind + io) + k / 2);
              acc[k] += at.x == target ? v[k] : Acc(0);
              acc[k + 1] += at.y == target ? v[k + 1] : Acc(0);
            }
          }
        } else {
          const Acc div = static_cast<Acc>(
              avg_divisor(g, row_factor, avg_factor(q, window(q, g.w, g.adaptive), g.w, g)));
#pragma unroll
          for (int k = 0; k < E; ++k) acc[k] += v[k] / div;
        }
      }
    }

    const int64_t xo = st.n * xs.n + st.c * xs.c + st.row * xs.h + st.col * xs.w;
    if constexpr (E == 1) {
      gx[xo] = from_acc<T>(acc[0]);
    } else {
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < E; ++k) out.v[k] = from_acc<T>(acc[k]);
      store_pack(gx + xo, out);
    }
  } else {
    // E consecutive columns of one row: shared covering rows, own covering
    // columns; past the row's end the strip repeats its last column.
    Cover cc[E];
    int64_t gcol[E], icol[E];
    int jmax = 0;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      cc[k] = cover(min(st.col + k, W - 1), g.w, g.adaptive, g.disjoint);
      gcol[k] = cc[k].first * gs.w;
      icol[k] = cc[k].first * is.w;
      jmax = max(jmax, cc[k].count);
    }
    const int target0 = st.row * W + st.col;
    int64_t gr = gbase, ir = ibase;
    for (int i = 0, p = rc.first; i < rc.count; ++i, p += g.h.step, gr += g_dp, ir += i_dp) {
      const int row_factor = kMax ? 0 : avg_factor(p, window(p, g.h, g.adaptive), g.h, g);
      int64_t go = gr, io = ir;
#pragma unroll 1  // few covering windows per row, as above
      for (int j = 0; j < jmax; ++j, go += g_dq, io += i_dq) {
#pragma unroll
        for (int k = 0; k < E; ++k) {
          if (j < cc[k].count) {
            const Acc v = load(gy, go + gcol[k]);
            if constexpr (kMax) {
              acc[k] += load_index(ind, io + icol[k]) == target0 + k ? v : Acc(0);
            } else {
              const int q = cc[k].first + j * g.w.step;
              const int64_t div =
                  avg_divisor(g, row_factor, avg_factor(q, window(q, g.w, g.adaptive), g.w, g));
              acc[k] += v / static_cast<Acc>(div);
            }
          }
        }
      }
    }

    const int64_t xo = st.n * xs.n + st.c * xs.c + st.row * xs.h;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      const int w = st.col + k;
      if (w < W) gx[xo + w * xs.w] = from_acc<T>(acc[k]);
    }
  }
}

// ---------------------------------------------------------------------------
// Gather at max pooling's indices (its double backward): one thread per
// output element, mapped like the forward's E = 1 strips.
//   Bound: DRAM bytes ~ indices + y + the gathered x elements = N*C*P*Q*(8 +
//   2b); the x reads are scattered (one per window), L2 hits when windows
//   overlap.

template <typename T, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads, kMinBlocks) pool2d_gather_kernel(const Args a) {
  const int s = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (s >= a.strips) return;
  const Strip st = locate<kChannelsLast, 1>(s, a);
  const Strides4 xs = a.src.stride, ys = a.dst.stride, is = a.ind.stride;
  const int64_t i = load_index(static_cast<const int64_t*>(a.ind.data),
                               is.offset(st.n, st.c, st.row, st.col));
  const int W = a.g.w.in;
  T v = from_acc<T>(static_cast<acc_t<T>>(NAN));  // an index outside the plane
  if (i >= 0 && i < int64_t{W} * a.g.h.in) {
    const int h = static_cast<int>(i) / W, w = static_cast<int>(i) - h * W;
    v = static_cast<const T*>(a.src.data)[xs.offset(st.n, st.c, h, w)];
  }
  static_cast<T*>(a.dst.data)[ys.offset(st.n, st.c, st.row, st.col)] = v;
}

// ---------------------------------------------------------------------------
// Host side.

// The kernels' int coordinates hold for this dimension: window ends, tap
// offsets and the covering-output numerators stay within int.
bool dim_fits(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad,
              int64_t dil, bool adaptive) {
  if (adaptive) return in * out + in + out <= kIntMax;
  for (int64_t v : {kernel, stride, pad, dil})
    if (v > kSizeLimit) return false;
  // (P-1)*s + kernel*dil bounds every window end and tap, plus one dilation step.
  return (out - 1) * stride + kernel * dil <= kIntMax && in + pad + stride <= kIntMax;
}

bool fits_int(const Pool2dGeometry& g) {
  for (int64_t v : {g.C, g.H, g.W, g.P, g.Q})
    if (v > kSizeLimit) return false;
  if (!product_le({g.H, g.W}, kIntMax) ||
      !dim_fits(g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive) ||
      !dim_fits(g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive))
    return false;
  if (g.adaptive) return true;
  // The first element h * W + w of a window that lies past the input (the
  // max's initial index) stays within int too.
  const int64_t row_reach = (g.P - 1) * g.stride_h + g.kernel_h * g.dil_h;
  const int64_t col_reach = (g.Q - 1) * g.stride_w + g.kernel_w * g.dil_w;
  return product_le({g.kernel_h, g.kernel_w}, kIntMax) &&
         product_le({row_reach, g.W}, kIntMax - col_reach);
}

// The gather reads no window: its sizes and the plane index h * W + w within int.
bool gather_fits_int(const Pool2dGeometry& g) {
  for (int64_t v : {g.C, g.H, g.W, g.P, g.Q})
    if (v > kSizeLimit) return false;
  return product_le({g.H, g.W}, kIntMax);
}

Dim to_dim(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
           bool adaptive) {
  Dim d{};
  d.in = static_cast<int>(in);
  d.out = static_cast<int>(out);
  if (adaptive) {
    d.dil = 1;
    d.step = 1;
    d.win_div = fast_div(out);
    d.cover_div = fast_div(in);
    return d;
  }
  d.kernel = static_cast<int>(kernel);
  d.stride = static_cast<int>(stride);
  d.pad = static_cast<int>(pad);
  d.dil = static_cast<int>(dil);
  d.span = static_cast<int>((kernel - 1) * dil);
  d.dec = static_cast<int>(dil / std::gcd(stride, dil));
  d.step = -d.dec;
  d.cover_div = fast_div(stride);
  return d;
}

Geom to_geom(const Pool2dGeometry& g) {
  Geom r{};
  r.h = to_dim(g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive);
  r.w = to_dim(g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive);
  r.adaptive = g.adaptive;
  r.count_include_pad = g.count_include_pad;
  r.disjoint = pool_windows_disjoint(g);
  r.divisor_override = g.divisor_override;
  return r;
}

// A tensor the vector path can read or write in 16-byte units of e
// consecutive channels: c stride 1, every other offset a multiple of e
// elements, 16-byte aligned base.
bool packs(const Tensor4& t, int64_t e) {
  return t.stride.c == 1 && t.stride.n % e == 0 && t.stride.h % e == 0 && t.stride.w % e == 0 &&
         reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
}

// Images [n0, ...) of a tensor.
template <typename Elem>
Tensor4 from_image(Tensor4 t, int64_t n0) {
  if (t.data != nullptr) t.data = static_cast<Elem*>(t.data) + n0 * t.stride.n;
  return t;
}

// Launches `kernel` over the strips of the kernel's output tensor (N x C x
// rows x cols), in as many launches as keep each below kMaxStrips.
template <typename T>
Status launch(void (*kernel)(Args), Args a, const Pool2dGeometry& g, int64_t rows,
              int64_t cols, bool channels_last, int e, cudaStream_t stream) {
  const int64_t along = channels_last ? ceil_div(g.C, e) : ceil_div(cols, e);
  const int64_t mid = channels_last ? cols : rows, outer = channels_last ? rows : g.C;
  if (!product_le({along, mid}, kMaxStrips) || !product_le({along * mid, outer}, kMaxStrips))
    return Status::index_overflow;
  const int64_t per_image = along * mid * outer, images = kMaxStrips / per_image;
  a.d0 = fast_div(along), a.d1 = fast_div(mid), a.d2 = fast_div(outer);
  const Tensor4 src = a.src, dst = a.dst, ind = a.ind;
  for (int64_t n0 = 0; n0 < g.N; n0 += images) {
    const int64_t strips = (g.N - n0 < images ? g.N - n0 : images) * per_image;
    a.src = from_image<T>(src, n0), a.dst = from_image<T>(dst, n0);
    a.ind = from_image<int64_t>(ind, n0);
    a.strips = static_cast<int>(strips);
    kernel<<<static_cast<unsigned>(ceil_div(strips, kThreads)), kThreads, 0, stream>>>(a);
    if (const Status s = launched(); s != Status::ok) return s;
  }
  return Status::ok;
}

template <typename T, bool kMax>
Status forward_impl(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 ind,
                    cudaStream_t stream) {
  constexpr int V = Pack<T>::kLen;
  Args a{};
  a.g = to_geom(g), a.src = x, a.dst = y, a.ind = ind;
  if (y.stride.c == 1) {
    if (g.C % V == 0 && packs(x, V) && packs(y, V) && (ind.data == nullptr || packs(ind, V)))
      return launch<T>(pool2d_forward_kernel<T, kMax, true, V>, a, g, g.P, g.Q, true, V,
                       stream);
    return launch<T>(pool2d_forward_kernel<T, kMax, true, 1>, a, g, g.P, g.Q, true, 1,
                     stream);
  }
  if (g.Q >= kStripW)
    return launch<T>(pool2d_forward_kernel<T, kMax, false, kStripW>, a, g, g.P, g.Q,
                     false, kStripW, stream);
  return launch<T>(pool2d_forward_kernel<T, kMax, false, 1>, a, g, g.P, g.Q, false, 1,
                   stream);
}

template <typename T, bool kMax>
Status backward_impl(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 ind, Tensor4 grad_x,
                     cudaStream_t stream) {
  constexpr int V = Pack<T>::kLen;
  Args a{};
  a.g = to_geom(g), a.src = grad_y, a.dst = grad_x, a.ind = ind;
  if (grad_x.stride.c == 1) {
    if (g.C % V == 0 && packs(grad_y, V) && packs(grad_x, V) && (!kMax || packs(ind, V)))
      return launch<T>(pool2d_backward_kernel<T, kMax, true, V>, a, g, g.H, g.W, true, V,
                       stream);
    return launch<T>(pool2d_backward_kernel<T, kMax, true, 1>, a, g, g.H, g.W, true, 1,
                     stream);
  }
  if (g.W >= kStripW)
    return launch<T>(pool2d_backward_kernel<T, kMax, false, kStripW>, a, g, g.H, g.W,
                     false, kStripW, stream);
  return launch<T>(pool2d_backward_kernel<T, kMax, false, 1>, a, g, g.H, g.W, false, 1,
                   stream);
}

template <typename T>
Status gather_impl(const Pool2dGeometry& g, Tensor4 x, Tensor4 ind, Tensor4 y,
                   cudaStream_t stream) {
  Args a{};
  a.g = to_geom(g), a.src = x, a.dst = y, a.ind = ind;
  if (y.stride.c == 1)
    return launch<T>(pool2d_gather_kernel<T, true>, a, g, g.P, g.Q, true, 1, stream);
  return launch<T>(pool2d_gather_kernel<T, false>, a, g, g.P, g.Q, false, 1, stream);
}

// The launchers' checks, in conv2d's order, then run(TypeTag<T>) with dtype's
// element type T, unless there is nothing to compute (no element).
template <typename Run>
Status checked_launch(DType dtype, const Pool2dGeometry& g, bool have_data, Run run,
                      bool (*fits)(const Pool2dGeometry&) = fits_int) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N == 0 || g.C == 0) return Status::ok;
  if (!have_data) return Status::bad_argument;
  if (!fits(g)) return Status::index_overflow;
  return dispatch_dtype(dtype, run);
}

}  // namespace

Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices, cudaStream_t stream) {
  return checked_launch(dtype, g, x.data && y.data, [&](auto type) {
    return forward_impl<typename decltype(type)::type, true>(g, x, y, indices, stream);
  });
}

Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x, cudaStream_t stream) {
  return checked_launch(dtype, g, grad_y.data && indices.data && grad_x.data, [&](auto type) {
    return backward_impl<typename decltype(type)::type, true>(g, grad_y, indices, grad_x,
                                                              stream);
  });
}

Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          cudaStream_t stream) {
  return checked_launch(dtype, g, x.data && y.data, [&](auto type) {
    return forward_impl<typename decltype(type)::type, false>(g, x, y, Tensor4{}, stream);
  });
}

Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x, cudaStream_t stream) {
  return checked_launch(dtype, g, grad_y.data && grad_x.data, [&](auto type) {
    return backward_impl<typename decltype(type)::type, false>(g, grad_y, Tensor4{}, grad_x,
                                                               stream);
  });
}

Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y, cudaStream_t stream) {
  return checked_launch(
      dtype, g, x.data && indices.data && y.data,
      [&](auto type) { return gather_impl<typename decltype(type)::type>(g, x, indices, y, stream); },
      gather_fits_int);
}

}  // namespace cuda
}  // namespace cnnk
