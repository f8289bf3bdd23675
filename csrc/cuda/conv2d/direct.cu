// conv2d, "direct" CUDA algorithm: forward, input gradient and weight (+ bias)
// gradient, for f16, bf16, f32 (float accumulators) and f64 (double).
// Every tensor is read and written through its Strides4, so NCHW,
// channels_last and non-contiguous views need no copy. No atomics anywhere:
// every output element is produced by one thread summing in a fixed order,
// and the split weight-gradient reduction is summed in split order, so the
// results are bitwise reproducible for a given geometry, dtype and GPU.
//
// Notation: N batch, C/K input/output channels, G groups, C_g = C/G,
// K_g = K/G, H x W input, P x Q output, R x S filter, J = C_g*R*S (length of
// one output's reduction), FLOPs = 2*N*K*P*Q*C_g*R*S for each of the three.
//
// conv2d_forward_kernel<T, KT> (KT = 8, 4 or 1 output channels per thread,
// the smallest that covers min(K_g, 8)).
//   Algorithm: a thread computes one output pixel (n, p, q) for KT output
//   channels of one group, so each x value it loads feeds KT FMAs. A block
//   is 256 consecutive flattened pixels m = (n, p, q) (adjacent threads take
//   adjacent q: NCHW loads and stores coalesce) and one KT-channel tile. The
//   block stages the tile's weights in 8 KiB chunks, converted to the
//   accumulator type and laid out [channel][tap][KT], so a thread reads the
//   KT weights of a tap with one or two 16-byte shared loads that the warp
//   broadcasts. A chunk holds whole filters of several input channels
//   (8192 / (KT * acc bytes * R*S) of them; when one filter does not fit,
//   part of one filter). Loops: filter rows and columns restricted to the
//   thread's in-image range (computed once, no per-tap test), innermost the
//   chunk's channels (constant address steps, 4 loads in flight). Epilogue
//   (cnnk/conv2d.h) fuses bias, residual and activation and keeps z when
//   asked: one pass writes y (and z). Blocks are ordered channel
//   tile fastest, so the blocks in flight share their x pixels in L2.
//   Bound: instruction issue and load latency of the inner loop (1 global +
//   KT/4 shared loads per KT FMAs); DRAM bytes ~ x + y + w (x is re-read
//   K/KT times, mostly from L2; + residual and z when given). Depthwise-like
//   shapes (C_g*R*S small) are
//   latency-bound: few taps per thread to overlap.
//
// conv2d_grad_input_kernel<T, CT> (CT = 8, 4 or 1 input channels per thread).
//   Algorithm: the transpose of the forward as a gather (no scatter, no
//   atomics): a thread computes one input element (n, h, w) for CT input
//   channels of one group, summing over the group's k and the taps (r, s)
//   whose output index p = (h + pad_h - r*dil_h) / stride_h is exact and in
//   [0, P) (likewise q). The exact taps form an arithmetic progression of
//   step stride/gcd(stride, dil); a thread finds its first one once and
//   walks the progressions, so the inner loop has no division or
//   divisibility test. gy' = gy * act'(y) is formed on the fly, with the
//   activation a compile-time constant inside the loops (a run-time branch
//   between the loads would serialize them). Blocks, weight staging (taps
//   j = (k, r, s), channel tile CT) and block order as in the forward. Every
//   grad_x element is written (0 where no output reads it).
//   Bound: as the forward, with 1/(stride_h*stride_w) of the taps useful per
//   thread; DRAM bytes ~ gy (+ y) + grad_x + w.
//
// conv2d_grad_weight_kernel<T, Cfg> + conv2d_grad_weight_reduce_kernel<T>.
//   Algorithm: per group, grad_w is the product of gy' (K_g x M) with the
//   gathered, zero-padded input (M x J), M = N*P*Q. A block owns a BK x BJ
//   tile of (k, j = (c, r, s)) of one group (blockIdx.x) and one contiguous
//   range of m (its split, blockIdx.y), walked in chunks of BM: each thread
//   loads its gy' and x elements of the next chunk into registers (one m per
//   thread, advanced incrementally; (c, r, s) of the tile's columns in a
//   shared table) while the block computes the current chunk from shared
//   memory, each thread accumulating a TK x TJ micro-tile from 16-byte (or
//   8-byte) shared loads. Configurations (by K_g):
//     wide      (K_g >= 32): BK 64, BJ 64, TK 4, TJ 4, BM 16
//     narrow    (K_g 2..31): BK 8,  BJ 32, TK 2, TJ 2, BM 64, 4 thread groups
//     depthwise (K_g 1):     BK 1,  BJ 16, TK 1, TJ 1, BM 256, 16 thread groups
//   For small tiles the 256 threads form groups that each cover the whole
//   tile, take disjoint rows of every chunk and are summed in group order at
//   the end: smaller tiles rather than idle rows for small K_g or J. Blocks
//   of the first j tile also sum gy' for the bias from the gy' chunk they
//   staged (fixed lanes, fixed shuffle tree).
//   Splits: set by the geometry alone (not the device), so that
//   tiles * splits reaches ~1056 blocks (132 SMs x 8), with at least 16
//   chunks per split and at most 65535 splits. With one split the kernel
//   converts and writes grad_w / grad_bias itself and needs no workspace;
//   otherwise it writes float/double partial sums to the workspace
//   ([split][K][J], then [split][K] for the bias) and the reduce kernel (one
//   thread per output element) sums them in split order, converts and writes.
//   Bound: shared-load / FMA issue of the micro-tile (wide: 2 vector loads
//   per 16 FMAs) and the latency of the gathers; DRAM bytes ~ gy (+ y) + x
//   (x re-read per k tile, gy per j tile, mostly from L2) + 2 * splits *
//   K * (J + 1) accumulator words of workspace.
//
// Limits, for every launcher (else Status::index_overflow): every size,
// P*Q, H*W, N*P*Q, N*H*W, C_g*R*S and K_g*R*S below 2^30, and the furthest
// row/column a tap addresses within int, since pixel, channel and tap
// indices are int; memory offsets are int64 throughout.

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include "cnnk/conv2d.h"
#include "cnnk/cuda_conv2d.cuh"
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"

namespace cnnk {
namespace cuda {
namespace {

constexpr int kThreads = 256;                  // every kernel's block size
constexpr int kWeightSmemBytes = 8192;         // forward/grad_input weight chunk
constexpr int64_t kTargetBlocks = 132 * 8;     // H100: 132 SMs, several blocks each
constexpr int64_t kMinChunksPerSplit = 16;     // amortizes a split's partial sums


CNNK_HOST_DEVICE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
CNNK_HOST_DEVICE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// N accumulators read or written as one aligned unit, so shared-memory
// accesses become 16-byte (or 8-byte) vector instructions.
template <typename A, int N>
struct alignas(N * sizeof(A) >= 16 ? 16 : N * sizeof(A)) Vec {
  A v[N];
};

// Shared geometry in int, computed on the host: the kernels read it from the
// constant bank instead of converting the int64 fields in registers.
struct Geom {
  int N, H, W, P, Q, R, S, RS;
  int sh, sw, ph, pw, dh, dw;
  int Cg, Kg;
  Activation act;
};

// ceil(a / b) for b > 0 and any a, in int.
__device__ __forceinline__ int ceil_div_i(int a, int b) {
  return a > 0 ? (a + b - 1) / b : -(-a / b);
}

// A weight chunk of the forward / grad_input kernels: `ch` reduction
// channels x `taps` filter taps, at most `capacity` taps in all. Whole
// filters when one fits (the usual case), else `capacity` taps of one channel.
struct WeightChunk {
  int ch, taps;
};
WeightChunk weight_chunk(int capacity, int rs) {
  return rs <= capacity ? WeightChunk{capacity / rs, rs} : WeightChunk{1, capacity};
}

// Stages reduction channels [c0, c0 + cn) x taps [t0, t0 + tn) of a
// TILE-wide channel tile as sw[cl * tn + tl].v[tile channel], converted to
// the accumulator type; tile channels past tile_count are zero. Adjacent
// threads take adjacent taps (contiguous in w for the usual layouts).
template <typename T, int TILE>
__device__ __forceinline__ void stage_weights(Vec<acc_t<T>, TILE>* sw, const Tensor4& wt,
                                              int64_t base, int64_t ch_stride,
                                              int64_t tile_stride, int tile_count, int c0,
                                              int cn, int t0, int tn, int S) {
  const T* w = static_cast<const T*>(wt.data);
  for (int e = threadIdx.x; e < cn * tn; e += kThreads) {
    const int cl = e / tn, t = t0 + e - cl * tn, r = t / S;
    const int64_t off =
        base + (c0 + cl) * ch_stride + r * wt.stride.h + (t - r * S) * wt.stride.w;
    Vec<acc_t<T>, TILE> v;
#pragma unroll
    for (int i = 0; i < TILE; ++i)
      v.v[i] = i < tile_count ? load(w, off + i * tile_stride) : acc_t<T>(0);
    sw[e] = v;
  }
}

// ---------------------------------------------------------------------------
// Forward.

struct FwdArgs {
  Geom g;
  Tensor4 x, w, y;
  Tensor1 bias;
  Tensor4 residual, preact;  // optional (null data): added to z; where z is kept
  int64_t x_dh, x_dw;   // x offset between adjacent filter taps
  int M, PQ;            // output pixels in all, per image
  int ktiles, ctiles;   // KT-channel tiles per group, in all
  WeightChunk chunk;
};

template <typename T, int KT>
__global__ void __launch_bounds__(kThreads, 2) conv2d_forward_kernel(const FwdArgs a) {
  using Acc = acc_t<T>;
  constexpr int kTaps = kWeightSmemBytes / (KT * static_cast<int>(sizeof(Acc)));
  __shared__ Vec<Acc, KT> sw[kTaps];
  const Geom& g = a.g;
  const T* x = static_cast<const T*>(a.x.data);
  const Strides4 xs = a.x.stride, ys = a.y.stride;

  // Channel tile fastest: the blocks in flight share their x pixels in L2.
  const int ct = static_cast<int>(blockIdx.x % a.ctiles);
  const int grp = ct / a.ktiles;
  const int kb = grp * g.Kg + (ct - grp * a.ktiles) * KT;  // first output channel
  const int kcnt = min(KT, (grp + 1) * g.Kg - kb);
  const int m = static_cast<int>(blockIdx.x / a.ctiles) * kThreads + threadIdx.x;
  const bool active = m < a.M;
  const int n = active ? m / a.PQ : 0;
  const int pq = active ? m - n * a.PQ : 0;
  const int p = pq / g.Q, q = pq - p * g.Q;
  // Taps reading inside the image: r in [r_lo, r_hi), s in [s_lo, s_hi).
  const int ih0 = p * g.sh - g.ph, iw0 = q * g.sw - g.pw;
  const int r_lo = max(0, ceil_div_i(-ih0, g.dh));
  const int r_hi = active ? min(g.R, ceil_div_i(g.H - ih0, g.dh)) : 0;
  const int s_lo = max(0, ceil_div_i(-iw0, g.dw));
  const int s_hi = min(g.S, ceil_div_i(g.W - iw0, g.dw));
  const int64_t xoff = n * xs.n + grp * g.Cg * xs.c + ih0 * xs.h + iw0 * xs.w;

  Acc acc[KT];
#pragma unroll
  for (int i = 0; i < KT; ++i) acc[i] = Acc(0);

  for (int c0 = 0; c0 < g.Cg; c0 += a.chunk.ch) {
    const int cn = min(a.chunk.ch, g.Cg - c0);
    for (int t0 = 0; t0 < g.RS; t0 += a.chunk.taps) {
      const int tn = min(a.chunk.taps, g.RS - t0);
      __syncthreads();  // the previous chunk's readers are done
      stage_weights<T, KT>(sw, a.w, kb * a.w.stride.n, a.w.stride.c, a.w.stride.n, kcnt, c0,
                           cn, t0, tn, g.S);
      __syncthreads();
      const int r_end = min(r_hi, (t0 + tn - 1) / g.S + 1);
      for (int r = max(r_lo, t0 / g.S); r < r_end; ++r) {
        const int s_end = min(s_hi, t0 + tn - r * g.S);
        for (int s = max(s_lo, t0 - r * g.S); s < s_end; ++s) {
          // Innermost over the chunk's channels: no bounds logic, x pointer
          // and weight index advance by constant steps.
          const T* xp = x + (xoff + c0 * xs.c + r * a.x_dh + s * a.x_dw);
          const Vec<Acc, KT>* wp = sw + (r * g.S + s - t0);
#pragma unroll 4
          for (int cl = 0; cl < cn; ++cl) {
            const Acc xv = load(xp, cl * xs.c);
            const Vec<Acc, KT> wv = wp[cl * tn];
#pragma unroll
            for (int i = 0; i < KT; ++i) acc[i] += xv * wv.v[i];
          }
        }
      }
    }
  }

  if (active) {
    const T* bias = static_cast<const T*>(a.bias.data);
    const T* residual = static_cast<const T*>(a.residual.data);
    T* preact = static_cast<T*>(a.preact.data);
    T* y = static_cast<T*>(a.y.data);
    const Strides4 rs = a.residual.stride, zs = a.preact.stride;
    const int64_t yoff = n * ys.n + kb * ys.c + p * ys.h + q * ys.w;
    const int64_t roff = rs.offset(n, kb, p, q), zoff = zs.offset(n, kb, p, q);
#pragma unroll
    for (int i = 0; i < KT; ++i) {
      if (i < kcnt) {
        Acc v = acc[i];
        if (bias != nullptr) v += load(bias, (kb + i) * a.bias.stride);
        if (residual != nullptr) v += load(residual, roff + i * rs.c);
        if (preact != nullptr) preact[zoff + i * zs.c] = from_acc<T>(v);
        y[yoff + i * ys.c] = from_acc<T>(apply_activation(v, g.act));
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Input gradient.

struct BwdDataArgs {
  Geom g;
  Tensor4 gy, y, w, gx;  // y: forward output, read only when an activation is fused
  int64_t gy_q, y_q;     // offset change of one step along the s progression
  int M, HW;             // input pixels in all, per image
  int ctiles_g, ctiles;  // CT-channel tiles per group, in all
  WeightChunk chunk;
  // Consecutive exact taps differ by r_step (s_step) taps and their output
  // rows (columns) by p_dec (q_dec).
  int r_step, p_dec, s_step, q_dec;
};

template <Activation A>
using ActTag = std::integral_constant<Activation, A>;

// First tap t >= lo of the progression (step `step`) whose output index
// (o0 - t*dil) / stride is exact; `none` when no tap is exact.
__device__ __forceinline__ int first_exact_tap(int o0, int lo, int dil, int stride, int step,
                                               int none) {
  for (int t = 0; t < step; ++t)
    if ((o0 - t * dil) % stride == 0) return t + ceil_div_i(max(0, lo - t), step) * step;
  return none;
}

template <typename T, int CT>
__global__ void __launch_bounds__(kThreads, 2) conv2d_grad_input_kernel(const BwdDataArgs a) {
  using Acc = acc_t<T>;
  constexpr int kTaps = kWeightSmemBytes / (CT * static_cast<int>(sizeof(Acc)));
  constexpr int kUnroll = sizeof(Acc) == 8 ? 2 : 4;  // loads in flight within 128 registers
  __shared__ Vec<Acc, CT> sw[kTaps];
  const Geom& g = a.g;
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* y = static_cast<const T*>(a.y.data);
  const Strides4 gs = a.gy.stride, ys = a.y.stride, xs = a.gx.stride;

  const int ct = static_cast<int>(blockIdx.x % a.ctiles);
  const int grp = ct / a.ctiles_g;
  const int c0 = (ct - grp * a.ctiles_g) * CT;  // first input channel within the group
  const int ccnt = min(CT, g.Cg - c0);
  const int m = static_cast<int>(blockIdx.x / a.ctiles) * kThreads + threadIdx.x;
  const bool active = m < a.M;
  const int n = active ? m / a.HW : 0;
  const int hw = active ? m - n * a.HW : 0;
  const int h = hw / g.W, wi = hw - h * g.W;
  // Tap r reaches output row (th0 - r*dil_h) / stride_h: inside [0, P) for
  // r in [r_lo, r_hi), exact on the progression from r_first; same for s.
  const int th0 = h + g.ph, tw0 = wi + g.pw;
  const int r_lo = max(0, ceil_div_i(th0 - (g.P - 1) * g.sh, g.dh));
  const int r_hi = active ? min(g.R, th0 / g.dh + 1) : 0;
  const int r_first = first_exact_tap(th0, r_lo, g.dh, g.sh, a.r_step, g.R);
  const int p_first = (th0 - r_first * g.dh) / g.sh;
  const int s_lo = max(0, ceil_div_i(tw0 - (g.Q - 1) * g.sw, g.dw));
  const int s_hi = min(g.S, tw0 / g.dw + 1);
  const int s_first = first_exact_tap(tw0, s_lo, g.dw, g.sw, a.s_step, g.S);
  const int q_first = (tw0 - s_first * g.dw) / g.sw;
  const int64_t gbase = n * gs.n + grp * g.Kg * gs.c + q_first * gs.w;
  const int64_t ybase = n * ys.n + grp * g.Kg * ys.c + q_first * ys.w;

  Acc acc[CT];
#pragma unroll
  for (int i = 0; i < CT; ++i) acc[i] = Acc(0);

  // The reduction, with the activation fixed at compile time: a branch on it
  // between the inner loop's loads would serialize them.
  auto reduce = [&](auto act) {
    constexpr Activation A = decltype(act)::value;
    for (int k0 = 0; k0 < g.Kg; k0 += a.chunk.ch) {
      const int kn = min(a.chunk.ch, g.Kg - k0);
      for (int t0 = 0; t0 < g.RS; t0 += a.chunk.taps) {
        const int tn = min(a.chunk.taps, g.RS - t0);
        __syncthreads();  // the previous chunk's readers are done
        stage_weights<T, CT>(sw, a.w, grp * g.Kg * a.w.stride.n + c0 * a.w.stride.c,
                             a.w.stride.n, a.w.stride.c, ccnt, k0, kn, t0, tn, g.S);
        __syncthreads();
        // Walk the exact taps inside the chunk's rows; the catch-up steps are
        // taken only when a filter is split over chunks.
        int r = r_first, p = p_first;
        if (r < t0 / g.S) {
          const int u = ceil_div_i(t0 / g.S - r, a.r_step);
          r += u * a.r_step;
          p -= u * a.p_dec;
        }
        const int r_end = min(r_hi, (t0 + tn - 1) / g.S + 1);
        for (; r < r_end; r += a.r_step, p -= a.p_dec) {
          int s = s_first, u = 0;
          if (s < t0 - r * g.S) {
            u = ceil_div_i(t0 - r * g.S - s, a.s_step);
            s += u * a.s_step;
          }
          const int s_end = min(s_hi, t0 + tn - r * g.S);
          int64_t go = gbase + k0 * gs.c + p * gs.h - u * a.gy_q;
          int64_t yo = ybase + k0 * ys.c + p * ys.h - u * a.y_q;
          for (; s < s_end; s += a.s_step, go -= a.gy_q, yo -= a.y_q) {
            // Innermost over the chunk's output channels, as in the forward.
            const Vec<Acc, CT>* wp = sw + (r * g.S + s - t0);
#pragma unroll kUnroll
            for (int kl = 0; kl < kn; ++kl) {
              Acc gv = load(gy, go + kl * gs.c);
              if constexpr (A != Activation::none)
                gv = activation_grad(gv, load(y, yo + kl * ys.c), A);
              const Vec<Acc, CT> wv = wp[kl * tn];
#pragma unroll
              for (int i = 0; i < CT; ++i) acc[i] += gv * wv.v[i];
            }
          }
        }
      }
    }
  };
  if (g.act == Activation::relu)
    reduce(ActTag<Activation::relu>{});
  else if (g.act == Activation::relu6)
    reduce(ActTag<Activation::relu6>{});
  else if (g.act == Activation::silu)
    reduce(ActTag<Activation::silu>{});
  else
    reduce(ActTag<Activation::none>{});

  if (active) {
    T* gx = static_cast<T*>(a.gx.data);
    const int64_t xoff = n * xs.n + (grp * g.Cg + c0) * xs.c + h * xs.h + wi * xs.w;
#pragma unroll
    for (int i = 0; i < CT; ++i)
      if (i < ccnt) gx[xoff + i * xs.c] = from_acc<T>(acc[i]);
  }
}

// ---------------------------------------------------------------------------
// Weight and bias gradient.

// Smallest odd multiple of v that is >= b (b a multiple of v).
__host__ __device__ constexpr int padded_stride(int b, int v) {
  return (b / v) % 2 == 0 ? b + v : b;
}

template <int BK_, int BJ_, int TK_, int TJ_, int BM_>
struct GwConfig {
  static constexpr int BK = BK_, BJ = BJ_, TK = TK_, TJ = TJ_, BM = BM_;
  static constexpr int TPG = (BK / TK) * (BJ / TJ);  // threads per group (one tile)
  static constexpr int MG = kThreads / TPG;          // thread groups
  static constexpr int MPG = BM / MG;                // chunk rows per group
  static constexpr int GYE = (BK * BM + kThreads - 1) / kThreads;  // gy' loads per thread
  static constexpr int XE = BM * BJ / kThreads;                    // x loads per thread
  // Bias: BL adjacent lanes of one warp sum one k row of the gy' chunk.
  static constexpr int BL = kThreads / BK < 32 ? kThreads / BK : 32;
  static_assert(BK % TK == 0 && BJ % TJ == 0 && kThreads % TPG == 0, "tile split");
  static_assert(BM % MG == 0 && kThreads % BM == 0 && (BM * BJ) % kThreads == 0, "chunk");
  static_assert(MG == 1 || BK * BJ <= kThreads, "one thread per output sums the groups");
  static_assert(BM % BL == 0 && (BK * BL) % 32 == 0, "bias lanes fill whole warps");
};
using GwWide = GwConfig<64, 64, 4, 4, 16>;
using GwNarrow = GwConfig<8, 32, 2, 2, 64>;
using GwDepthwise = GwConfig<1, 16, 1, 1, 256>;

struct GwArgs {
  Geom g;
  Tensor4 gy, y, x, gw;  // y: forward output, read only when an activation is fused
  Tensor1 gb;            // data nullptr: no bias gradient
  // acc_t<T>[splits][K][J] then [splits][K]; nullptr: one split, which
  // converts and writes grad_w / grad_bias itself.
  void* partial;
  int M, PQ;             // output pixels in all, per image
  int mper;              // pixels per split, a multiple of BM
  int K, J;
  int ktiles, jtiles;
};

template <typename T, typename Cfg>
__global__ void __launch_bounds__(kThreads, 2) conv2d_grad_weight_kernel(const GwArgs a) {
  using Acc = acc_t<T>;
  constexpr int BK = Cfg::BK, BJ = Cfg::BJ, TK = Cfg::TK, TJ = Cfg::TJ, BM = Cfg::BM;
  // Row strides: odd multiples of the micro-tile vector, so that the
  // staging stores (adjacent threads, adjacent rows) spread over the banks
  // while the vector loads stay aligned.
  constexpr int BKP = padded_stride(BK, TK), BJP = padded_stride(BJ, TJ);
  static_assert(BM * BKP * sizeof(Acc) % alignof(Vec<Acc, TJ>) == 0, "x chunk alignment");
  constexpr int kStage = BM * (BKP + BJP);
  constexpr int kRed = Cfg::MG > 1 ? Cfg::MG * BK * BJ : 0;
  __shared__ alignas(16) Acc smem[kStage > kRed ? kStage : kRed];
  // Per tile column j = (c, r, s): x channel offset, r*dil_h, s*dil_w; per
  // tile row k: channel offsets in gy and y. Tables rather than registers:
  // the compiler would otherwise keep one offset per loaded element live
  // across the whole m loop.
  __shared__ int64_t col_x[BJ], row_gy[BK], row_y[BK];
  __shared__ int col_ih[BJ], col_iw[BJ];
  Acc* gys = smem;             // [BM][BKP] gy' chunk
  Acc* xsm = smem + BM * BKP;  // [BM][BJP] gathered x chunk

  const Geom& g = a.g;
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* y = static_cast<const T*>(a.y.data);
  const T* x = static_cast<const T*>(a.x.data);
  const Strides4 gs = a.gy.stride, ys = a.y.stride, xs = a.x.stride;
  const bool masked = g.act != Activation::none;

  const int jt = static_cast<int>(blockIdx.x % a.jtiles);
  const int kt = static_cast<int>(blockIdx.x / a.jtiles % a.ktiles);
  const int grp = static_cast<int>(blockIdx.x / a.jtiles / a.ktiles);
  const int k0 = kt * BK, jb = jt * BJ;
  const bool bias_block = a.gb.data != nullptr && jt == 0;
  const int m_begin = static_cast<int>(blockIdx.y) * a.mper;
  const int m_end = min(a.M, m_begin + a.mper);

  const int tid = threadIdx.x;
  const int mm = tid % BM;  // the one chunk row this thread loads
  const int gid = tid / Cfg::TPG, lt = tid % Cfg::TPG;
  const int tk = lt / (BJ / TJ), tj = lt % (BJ / TJ);
  const int bk = tid / Cfg::BL, bl = tid % Cfg::BL;  // bias row and lane

  if (tid < BJ && jb + tid < a.J) {
    const int j = jb + tid, c = j / g.RS, rs = j - c * g.RS, r = rs / g.S;
    col_x[tid] = (grp * g.Cg + c) * xs.c;
    col_ih[tid] = r * g.dh;
    col_iw[tid] = (rs - r * g.S) * g.dw;
  }
  if (tid < BK) {
    row_gy[tid] = (grp * g.Kg + k0 + tid) * gs.c;
    row_y[tid] = (grp * g.Kg + k0 + tid) * ys.c;
  }
  __syncthreads();

  // Position (n, p, q) of this thread's row m = chunk start + mm, advanced
  // chunk by chunk, dividing only when it leaves its output row.
  int n = (m_begin + mm) / a.PQ;
  int p = (m_begin + mm - n * a.PQ) / g.Q;
  int q = m_begin + mm - n * a.PQ - p * g.Q;
  Acc gyr[Cfg::GYE], xr[Cfg::XE];
  // Loads the elements of row m (zero when m >= m_end or out of the image).
  auto load_chunk = [&](int m) {
    const bool mv = m < m_end;
    const int64_t gyb = n * gs.n + p * gs.h + q * gs.w;
    const int64_t yb = n * ys.n + p * ys.h + q * ys.w;
    // All loads before any mask: a branch between loads would serialize them.
    auto gy_ok = [&](int i) {
      const int e = tid + i * kThreads;
      return mv && e < BK * BM && k0 + e / BM < g.Kg;
    };
#pragma unroll
    for (int i = 0; i < Cfg::GYE; ++i)
      gyr[i] = gy_ok(i) ? load(gy, gyb + row_gy[(tid + i * kThreads) / BM]) : Acc(0);
    if (masked) {
      Acc yv[Cfg::GYE];
#pragma unroll
      for (int i = 0; i < Cfg::GYE; ++i)
        yv[i] = gy_ok(i) ? load(y, yb + row_y[(tid + i * kThreads) / BM]) : Acc(0);
#pragma unroll
      for (int i = 0; i < Cfg::GYE; ++i) gyr[i] = activation_grad(gyr[i], yv[i], g.act);
    }
    const int ih0 = p * g.sh - g.ph, iw0 = q * g.sw - g.pw;
#pragma unroll
    for (int i = 0; i < Cfg::XE; ++i) {
      const int jj = tid / BM + i * (kThreads / BM);
      Acc v = Acc(0);
      if (mv && jb + jj < a.J) {
        const int ih = ih0 + col_ih[jj], iw = iw0 + col_iw[jj];
        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
          v = load(x, n * xs.n + col_x[jj] + ih * xs.h + iw * xs.w);
      }
      xr[i] = v;
    }
  };
  load_chunk(m_begin + mm);

  Acc acc[TK][TJ];
#pragma unroll
  for (int i = 0; i < TK; ++i)
#pragma unroll
    for (int j = 0; j < TJ; ++j) acc[i][j] = Acc(0);
  Acc bsum = Acc(0);

  for (int mc = m_begin; mc < m_end; mc += BM) {
#pragma unroll
    for (int i = 0; i < Cfg::GYE; ++i) {
      const int e = tid + i * kThreads;
      if (e < BK * BM) gys[mm * BKP + e / BM] = gyr[i];
    }
#pragma unroll
    for (int i = 0; i < Cfg::XE; ++i) xsm[mm * BJP + tid / BM + i * (kThreads / BM)] = xr[i];
    __syncthreads();

    if (mc + BM < m_end) {  // the next chunk's loads overlap this chunk's math
      q += BM;
      if (q >= g.Q) {
        const int dp = q / g.Q;
        q -= dp * g.Q;
        p += dp;
        if (p >= g.P) {
          const int dn = p / g.P;
          p -= dn * g.P;
          n += dn;
        }
      }
      load_chunk(mc + BM + mm);
    }

    if (bias_block && tid < BK * Cfg::BL) {
#pragma unroll
      for (int u = 0; u < BM / Cfg::BL; ++u) bsum += gys[(u * Cfg::BL + bl) * BKP + bk];
    }

#pragma unroll
    for (int u = 0; u < Cfg::MPG; ++u) {
      const int row = gid * Cfg::MPG + u;
      const Vec<Acc, TK> av = *reinterpret_cast<const Vec<Acc, TK>*>(gys + row * BKP + tk * TK);
      const Vec<Acc, TJ> bv = *reinterpret_cast<const Vec<Acc, TJ>*>(xsm + row * BJP + tj * TJ);
#pragma unroll
      for (int i = 0; i < TK; ++i)
#pragma unroll
        for (int j = 0; j < TJ; ++j) acc[i][j] += av.v[i] * bv.v[j];
    }
    __syncthreads();
  }

  // Writes the finished sum of tile element (kk, jj).
  auto store = [&](int kk, int jj, Acc v) {
    const int k = k0 + kk, j = jb + jj;
    if (k >= g.Kg || j >= a.J) return;
    const int kg = grp * g.Kg + k;
    if (a.partial != nullptr) {
      static_cast<Acc*>(a.partial)[(static_cast<int64_t>(blockIdx.y) * a.K + kg) * a.J + j] = v;
    } else {
      const int c = j / g.RS, rs = j - c * g.RS, r = rs / g.S;
      const Strides4 ws = a.gw.stride;
      static_cast<T*>(a.gw.data)[kg * ws.n + c * ws.c + r * ws.h + (rs - r * g.S) * ws.w] =
          from_acc<T>(v);
    }
  };
  if (Cfg::MG == 1) {
#pragma unroll
    for (int i = 0; i < TK; ++i)
#pragma unroll
      for (int j = 0; j < TJ; ++j) store(tk * TK + i, tj * TJ + j, acc[i][j]);
  } else {
    // The groups park their tiles in the staging memory (idle: the chunk
    // loop ends with a barrier); one thread per tile element sums them in
    // group order.
#pragma unroll
    for (int i = 0; i < TK; ++i)
#pragma unroll
      for (int j = 0; j < TJ; ++j) smem[(gid * BK + tk * TK + i) * BJ + tj * TJ + j] = acc[i][j];
    __syncthreads();
    if (tid < BK * BJ) {
      Acc v = Acc(0);
      for (int gi = 0; gi < Cfg::MG; ++gi) v += smem[gi * BK * BJ + tid];
      store(tid / BJ, tid % BJ, v);
    }
  }

  if (bias_block && tid < BK * Cfg::BL) {  // whole warps: BK*BL is a multiple of 32
#pragma unroll
    for (int off = Cfg::BL / 2; off > 0; off /= 2)
      bsum += __shfl_xor_sync(0xffffffffu, bsum, off);
    const int k = k0 + bk;
    if (bl == 0 && k < g.Kg) {
      const int kg = grp * g.Kg + k;
      if (a.partial != nullptr)
        static_cast<Acc*>(a.partial)[(static_cast<int64_t>(gridDim.y) * a.J + blockIdx.y) * a.K +
                                     kg] = bsum;
      else
        static_cast<T*>(a.gb.data)[kg * a.gb.stride] = from_acc<T>(bsum);
    }
  }
}

// Sums the splits' partial weight (and bias) gradients in split order.
template <typename T>
__global__ void __launch_bounds__(kThreads) conv2d_grad_weight_reduce_kernel(const GwArgs a,
                                                                             int splits) {
  using Acc = acc_t<T>;
  const Acc* partial = static_cast<const Acc*>(a.partial);
  const Geom& g = a.g;
  const int64_t KJ = static_cast<int64_t>(a.K) * a.J;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  Acc v = Acc(0);
  if (e < KJ) {
    for (int s = 0; s < splits; ++s) v += partial[s * KJ + e];
    const int k = static_cast<int>(e / a.J), j = static_cast<int>(e - k * int64_t{a.J});
    const int c = j / g.RS, rs = j - c * g.RS, r = rs / g.S;
    const Strides4 ws = a.gw.stride;
    static_cast<T*>(a.gw.data)[k * ws.n + c * ws.c + r * ws.h + (rs - r * g.S) * ws.w] =
        from_acc<T>(v);
  } else if (e < KJ + a.K && a.gb.data != nullptr) {
    const int k = static_cast<int>(e - KJ);
    for (int s = 0; s < splits; ++s) v += partial[splits * KJ + s * a.K + k];
    static_cast<T*>(a.gb.data)[k * a.gb.stride] = from_acc<T>(v);
  }
}

// ---------------------------------------------------------------------------
// Host side.

Geom to_geom(const Conv2dGeometry& g) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {i(g.N),        i(g.H),        i(g.W),       i(g.P),        i(g.Q),
          i(g.R),        i(g.S),        i(g.R * g.S), i(g.stride_h), i(g.stride_w),
          i(g.pad_top),  i(g.pad_left), i(g.dil_h),   i(g.dil_w),    i(g.C_g()),
          i(g.K_g()),    g.activation};
}

size_t acc_size(DType dtype) {
  return dtype == DType::float64 ? sizeof(double) : sizeof(float);
}

template <typename T, int KT>
Status forward_launch(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias,
                      Tensor4 residual, Tensor4 y, Tensor4 preact, cudaStream_t stream) {
  constexpr int kTaps = kWeightSmemBytes / (KT * static_cast<int>(sizeof(acc_t<T>)));
  FwdArgs a{};
  a.g = to_geom(g), a.x = x, a.w = w, a.y = y, a.bias = bias;
  a.residual = residual, a.preact = preact;
  a.x_dh = g.dil_h * x.stride.h, a.x_dw = g.dil_w * x.stride.w;
  a.PQ = a.g.P * a.g.Q, a.M = a.g.N * a.PQ;
  a.ktiles = static_cast<int>(ceil_div(a.g.Kg, KT));
  const int64_t ctiles = g.groups * a.ktiles, blocks = ctiles * ceil_div(a.M, kThreads);
  if (blocks > kMaxGridX) return Status::index_overflow;
  a.ctiles = static_cast<int>(ctiles), a.chunk = weight_chunk(kTaps, a.g.RS);
  conv2d_forward_kernel<T, KT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return launched();
}

template <typename T>
Status forward_impl(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias,
                    Tensor4 residual, Tensor4 y, Tensor4 preact, cudaStream_t stream) {
  const int64_t kg = g.K_g();
  if (kg >= 5) return forward_launch<T, 8>(g, x, w, bias, residual, y, preact, stream);
  if (kg >= 2) return forward_launch<T, 4>(g, x, w, bias, residual, y, preact, stream);
  return forward_launch<T, 1>(g, x, w, bias, residual, y, preact, stream);
}

template <typename T, int CT>
Status grad_input_launch(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                         Tensor4 grad_x, cudaStream_t stream) {
  constexpr int kTaps = kWeightSmemBytes / (CT * static_cast<int>(sizeof(acc_t<T>)));
  BwdDataArgs a{};
  a.g = to_geom(g), a.gy = grad_y, a.y = y, a.w = w, a.gx = grad_x;
  a.HW = a.g.H * a.g.W, a.M = a.g.N * a.HW;
  a.ctiles_g = static_cast<int>(ceil_div(a.g.Cg, CT));
  const int64_t ctiles = g.groups * a.ctiles_g, blocks = ctiles * ceil_div(a.M, kThreads);
  if (blocks > kMaxGridX) return Status::index_overflow;
  a.ctiles = static_cast<int>(ctiles), a.chunk = weight_chunk(kTaps, a.g.RS);
  // Taps r and r + step reach exact output rows together when step*dil is a
  // multiple of stride: step = stride / gcd(stride, dil).
  const int gh = std::gcd(a.g.sh, a.g.dh), gw = std::gcd(a.g.sw, a.g.dw);
  a.r_step = a.g.sh / gh, a.p_dec = a.g.dh / gh;
  a.s_step = a.g.sw / gw, a.q_dec = a.g.dw / gw;
  a.gy_q = a.q_dec * grad_y.stride.w, a.y_q = a.q_dec * y.stride.w;
  conv2d_grad_input_kernel<T, CT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  return launched();
}

template <typename T>
Status grad_input_impl(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                       Tensor4 grad_x, cudaStream_t stream) {
  const int64_t cg = g.C_g();
  if (cg >= 5) return grad_input_launch<T, 8>(g, grad_y, y, w, grad_x, stream);
  if (cg >= 2) return grad_input_launch<T, 4>(g, grad_y, y, w, grad_x, stream);
  return grad_input_launch<T, 1>(g, grad_y, y, w, grad_x, stream);
}

// How conv2d_grad_weight splits its work; the workspace size comes from here.
enum class GwKind { wide, narrow, depthwise };
struct GwPlan {
  GwKind kind;
  int64_t tiles, splits, mper;
  size_t workspace_bytes;
};

template <typename Cfg>
GwPlan plan_with(GwKind kind, DType dtype, const Conv2dGeometry& g) {
  GwPlan plan{};
  plan.kind = kind;
  const int64_t m = g.N * g.P * g.Q;
  plan.tiles = g.groups * ceil_div(g.K_g(), Cfg::BK) *
               ceil_div(g.reduction_size(), Cfg::BJ);
  // Enough blocks to fill the GPU, each split at least kMinChunksPerSplit chunks.
  const int64_t splits = imax(1, imin(imin(ceil_div(kTargetBlocks, plan.tiles),
                                           ceil_div(m, kMinChunksPerSplit * Cfg::BM)),
                                      kMaxGridY));
  plan.mper = ceil_div(ceil_div(m, splits), Cfg::BM) * Cfg::BM;
  plan.splits = m > 0 ? ceil_div(m, plan.mper) : 1;
  plan.workspace_bytes =
      plan.splits > 1
          ? static_cast<size_t>(plan.splits * g.K * (g.reduction_size() + 1)) *
                acc_size(dtype)
          : 0;
  return plan;
}

GwPlan plan_grad_weight(DType dtype, const Conv2dGeometry& g) {
  const int64_t kg = g.K_g();
  if (kg >= 32) return plan_with<GwWide>(GwKind::wide, dtype, g);
  if (kg >= 2) return plan_with<GwNarrow>(GwKind::narrow, dtype, g);
  return plan_with<GwDepthwise>(GwKind::depthwise, dtype, g);
}

template <typename T, typename Cfg>
Status grad_weight_launch(const Conv2dGeometry& g, const GwPlan& plan, Tensor4 grad_y,
                          Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                          void* workspace, cudaStream_t stream) {
  const int64_t reduce_blocks = ceil_div(g.K * (g.reduction_size() + 1), kThreads);
  if (plan.tiles > kMaxGridX || reduce_blocks > kMaxGridX) return Status::index_overflow;
  GwArgs a{};
  a.g = to_geom(g), a.gy = grad_y, a.y = y, a.x = x, a.gw = grad_w, a.gb = grad_bias;
  a.partial = plan.splits > 1 ? workspace : nullptr;
  a.PQ = a.g.P * a.g.Q, a.M = a.g.N * a.PQ, a.mper = static_cast<int>(plan.mper);
  a.K = static_cast<int>(g.K), a.J = a.g.Cg * a.g.RS;
  a.ktiles = static_cast<int>(ceil_div(a.g.Kg, Cfg::BK));
  a.jtiles = static_cast<int>(ceil_div(a.J, Cfg::BJ));
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits));
  conv2d_grad_weight_kernel<T, Cfg><<<grid, kThreads, 0, stream>>>(a);
  const Status s = launched();
  if (s != Status::ok || a.partial == nullptr) return s;
  conv2d_grad_weight_reduce_kernel<T><<<static_cast<unsigned>(reduce_blocks), kThreads, 0,
                                        stream>>>(a, static_cast<int>(plan.splits));
  return launched();
}

template <typename T>
Status grad_weight_impl(const Conv2dGeometry& g, const GwPlan& plan, Tensor4 grad_y, Tensor4 y,
                        Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias, void* workspace,
                        cudaStream_t stream) {
  switch (plan.kind) {
    case GwKind::wide:
      return grad_weight_launch<T, GwWide>(g, plan, grad_y, y, x, grad_w, grad_bias, workspace,
                                           stream);
    case GwKind::narrow:
      return grad_weight_launch<T, GwNarrow>(g, plan, grad_y, y, x, grad_w, grad_bias,
                                             workspace, stream);
    case GwKind::depthwise:
      return grad_weight_launch<T, GwDepthwise>(g, plan, grad_y, y, x, grad_w, grad_bias,
                                                workspace, stream);
  }
  return Status::bad_argument;
}

}  // namespace

Status conv2d_direct_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                             Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                             cudaStream_t stream) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (x.data == nullptr || w.data == nullptr || y.data == nullptr) return Status::bad_argument;
  if (!conv2d_fits_int(g)) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    return forward_impl<typename decltype(type)::type>(g, x, w, bias, residual, y, preact,
                                                       stream);
  });
}

Status conv2d_direct_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                Tensor4 w, Tensor4 grad_x, cudaStream_t stream) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (grad_y.data == nullptr || w.data == nullptr || grad_x.data == nullptr ||
      (g.activation != Activation::none && y.data == nullptr))
    return Status::bad_argument;
  if (!conv2d_fits_int(g)) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_input_impl<typename decltype(type)::type>(g, grad_y, y, w, grad_x, stream);
  });
}

size_t conv2d_direct_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g) {
  if (check_conv2d_geometry(g) != Status::ok || !supported_dtype(dtype) || !conv2d_fits_int(g)) return 0;
  return plan_grad_weight(dtype, g).workspace_bytes;
}

Status conv2d_direct_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y,
                                 Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                 Workspace workspace, cudaStream_t stream) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (grad_w.data == nullptr) return Status::bad_argument;
  if (g.N > 0 && (grad_y.data == nullptr || x.data == nullptr ||
                  (g.activation != Activation::none && y.data == nullptr)))
    return Status::bad_argument;
  if (!conv2d_fits_int(g)) return Status::index_overflow;
  return run_grad_weight_plan(
      dtype, g, plan_grad_weight, workspace, [&](auto type, const GwPlan& plan) {
        return grad_weight_impl<typename decltype(type)::type>(g, plan, grad_y, y, x, grad_w,
                                                               grad_bias, workspace.data, stream);
      });
}

}  // namespace cuda
}  // namespace cnnk
