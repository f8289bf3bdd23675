// conv2d, "implicit_gemm" CUDA algorithm on tensor cores: forward, input
// gradient and weight (+ bias) gradient as GEMMs whose operands are gathered
// from the tensors as they are loaded (no patch matrix), plus the im2col
// algorithm's patch kernels. f16 and bf16 run mma.sync.m16n8k16 (fp32
// accumulators); f32 runs mma.sync.m16n8k8 on TF32 (inputs rounded with
// cvt.rna) when allow_tf32, and is Status::unsupported_dtype otherwise, as
// is f64: Python routes those to the direct algorithm. Built for sm_80 and
// sm_90a (mma.sync runs on Hopper's tensor cores at Ampere's instruction
// shape; no wgmma). Every tensor is read and written through its Strides4.
// No atomics: results are bitwise reproducible for a geometry, dtype and GPU.
//
// Notation: N batch, C/K input/output channels, G groups, C_g = C/G,
// K_g = K/G, H x W input, P x Q output, R x S filter.
// FLOPs = 2*N*K*P*Q*C_g*R*S for each of the three GEMMs.
//
// The GEMM core (one for the three kernels, in cnnk/cuda_mma.cuh, which the
// Gram kernels share). A block computes a BM x BN tile of C = A * B over
// the reduction in k-tiles of 64 bytes (32 f16/bf16 or 16 f32 elements). Operands go global -> shared through a 3-stage ring
// (cp.async.cg 16-byte copies, the tile two ahead in flight while one is
// computed; operand chunks that need arithmetic on the way -- the
// activation derivative, the bias column -- are stored from registers),
// shared -> registers by ldmatrix.x4 (.trans for reduction-major tiles;
// 4-byte loads for reduction-major f32, which ldmatrix cannot transpose),
// then MI x NI mma per warp and 32-byte k-step. Tiles are rows of 16-byte
// chunks with an XOR swizzle (cnnk/implicit_gemm.h), so cp.async stores and
// ldmatrix phases are free of bank conflicts without padding.
//   tile   BM x BN   warps (each)      stage    3 stages  HMMA per k-tile-loop
//   big    128 x 128  8 (64 x 32)      16 KiB   48 KiB    32 (sm_80 and sm_90a)
//   small  64 x 64    4 (32 x 32)       8 KiB   24 KiB    16 (sm_80 and sm_90a)
// Static shared memory (<= 48 KiB, no opt-in). Registers (ptxas, f16 and
// f32, sm_80 / sm_90a) and resident blocks per SM (64 K registers,
// >= 164 KiB shared), from benchmarks/static_check.py:
//   forward      big 146-158 -> 1 (8 warps)    small 104-114 -> 4 (16 warps)
//   grad_input   big 140-159 -> 1 (8 warps)    small 107-116 -> 4 (16 warps)
//   grad_weight  big 175-196 -> 1 (8 warps)    small 160-167 -> 3 (12 warps)
//   (no spills anywhere).
// The big tile is used when the GEMM's N side exceeds 64 and it still
// yields >= 264 blocks (two per H100 SM); else the small one. Blocks run
// N tiles fastest, so the blocks in flight share their A rows in L2.
//
// Operand loads. Each operand has a 16-byte path and a generic one, chosen
// per launch: the 16-byte path when the reduction's channel (the GEMM row's
// channel for grad_weight) has stride 1, the channel count per group is a
// multiple of 8 (f32: 4), and the pointer and the other strides are
// multiples of 16 bytes -- channels_last tensors; everything else (NCHW,
// odd channel counts, non-contiguous views) gathers element by element,
// adjacent threads on adjacent pixels (coalesced in NCHW), into the same
// shared tiles. Anything outside the input (padding, partial tiles) is 0:
// cp.async with src-size 0, or a zero element.
//
// implicit_gemm_mma_forward_kernel<T, Tile>.
//   GEMM per group (blockIdx.y): M = N*P*Q output pixels, N = K_g, reduction
//   j = (r*S + s)*C_g + c (channel innermost: contiguous in channels_last).
//   A[m, j] = x[n, grp*C_g + c, p*sh - ph + r*dh, q*sw - pw + s*dw];
//   B[j, k] = w[grp*K_g + k, c, r, s] (16-byte path: channels_last weight).
//   Epilogue, one pass: z = acc + bias[k] + residual[n, k, p, q]; preact = z;
//   y = act(z); element stores through y's strides.
//   Bytes: x (re-read per N tile, from L2) + w + y (+ residual, preact).
//   Arithmetic intensity ~ C_g*R*S*K_g / (C_g + K_g) FLOP per byte in 16-bit
//   (ResNet-50 3x3, C = K = 64: ~290): tensor-core bound for wide layers,
//   memory- and latency-bound for narrow ones (small C_g, K_g).
//
// implicit_gemm_mma_grad_input_kernel<T, Tile>.
//   The transposed problem as a gather (no scatter, no atomics): M = N*H*W
//   input pixels, N = C_g, reduction j = (r*S + s)*K_g + k.
//   A[m, j] = act'(gy)[n, grp*K_g + k, p, q] with p*sh - ph + r*dh = h (exact
//   and in [0, P); likewise q), else 0, the derivative applied from `y` as
//   it is loaded (16-byte loads of gy and y in registers when vectorisable);
//   B[j, c] = w[grp*K_g + k, c, r, s] (16-byte path only for a weight whose
//   k has stride 1, e.g. a (C, K, R, S)-permuted copy; else element-wise,
//   from L2).
//   Bytes: gy (+ y) + w + grad_x. Limit: with stride > 1 only
//   1/(sh*sw) of the taps are exact; the others are zero chunks that still
//   go through the tensor cores.
//
// implicit_gemm_mma_grad_weight_kernel<T, Tile> +
// implicit_gemm_grad_weight_reduce_kernel<T>.
//   GEMM per group (blockIdx.z): M = K_g, N = J + 1 columns, J = C_g*R*S
//   (j = (r*S + s)*C_g + c), reduction over the N*P*Q output pixels, with
//   reduction-major (transposed) tiles: A[k, m] = act'(gy)[n, k, p, q],
//   B[m, j] = x[n, c, ih, iw] for j < J, and B[m, J] = 1, so that column J
//   of the product is grad_bias (fused, same fixed-order scheme; left out
//   when no bias gradient is asked for). Split over the pixels
//   (blockIdx.y): the split count depends on the geometry and dtype only
//   (tiles * splits ~ 264 blocks, >= 8 k-tiles per split); with one split the
//   kernel writes grad_w / grad_bias, else fp32 partials [split][K][J + 1]
//   in the workspace, which the reduce kernel (one thread per element) sums
//   in split order.
//   Bytes: gy (+ y) re-read per column tile, x per row tile (mostly L2),
//   + 2 * splits * K * (J + 1) * 4 of workspace.
//
// conv2d_im2col_kernel<T> / conv2d_col2im_kernel<T> (all four dtypes).
//   patches (N, G*J, P, Q), patches[n, grp*J + j, p, q] = x[n, grp*C_g + c, ih, iw]
//   or 0, j = patch_column_index(c, r, s) (cnnk/conv2d.h); col2im is its adjoint as a gather: each
//   grad_x element sums, in (r, s) order, the patch entries that read it.
//   Memory-bound, one thread per written element: im2col reads <= x once per
//   tap (N*C*R*S*P*Q reads, mostly L1/L2 hits) and writes N*C*R*S*P*Q
//   elements; col2im reads the N*C*R*S*P*Q patch elements and writes N*C*H*W.
//
// Limits (else Status::index_overflow): every size, N*P*Q, N*H*W, C*R*S,
// K*R*S and K*(C_g*R*S + 1) below 2^30, the furthest row/column a tap
// addresses within int, G <= 65535 and (grad_weight) splits <= 65535;
// memory offsets are int64.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cnnk/conv2d.h"
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/cuda_mma.cuh"
#include "cnnk/implicit_gemm.h"

namespace cnnk {
namespace cuda {
namespace {

constexpr int64_t kTargetBlocks = 132 * 2;  // H100: 132 SMs, two 256-thread blocks each
constexpr int kMinKTilesPerSplit = 8;       // grad_weight: amortizes a split's partial sums

// The big tile is not bounded to two blocks per SM (128 registers): the
// forward's silu epilogue, grad_input's masked loads (gy and y in registers)
// and grad_weight's pixel decodes need more (the forward spilled on sm_80).
using BigTile = Tile<128, 128, 2, 4, 1>;  // 8 warps of 64 x 32; 48 KiB of stages
using SmallTile = Tile<64, 64, 2, 2, 4>;  // 4 warps of 32 x 32; 24 KiB of stages
// Three small grad_weight blocks per SM.
using GradWeightSmallTile = Tile<64, 64, 2, 2, 3>;

// How an operand tile is filled: 16-byte cp.async (contiguous, aligned
// runs, nothing to compute on the way), 16-byte loads through registers
// (contiguous, with the activation derivative applied), or element by
// element (any strides or channel counts).
enum class LoadMode : int { async, masked, generic };

// ---------------------------------------------------------------------------
// Operand sources: where a GEMM operand element lives in its tensor.

// Geometry in int (the kernels' index type), from the host.
struct Geom {
  int N, H, W, P, Q, R, S;
  int sh, sw, ph, pw, dh, dw;
  int Cg, Kg;
  Activation act;
};


template <typename T>
__device__ __forceinline__ T masked(T grad, T saved, Activation act) {
  return from_acc<T>(activation_grad(to_acc(grad), to_acc(saved), act));
}

// x gathered by output pixel m (a row of the forward's A, of grad_weight's
// B) and tap (r, s, c) (c within the group): what both operands share.
template <typename T>
struct InputGather {
  const T* x;
  Strides4 xs;
  int64_t group_offset;  // grp * C_g * xs.c
  const Geom* g;
  int M;
  struct Row {
    int64_t off;  // offset of (n, group's first channel, ih0, iw0)
    int ih0, iw0;
    bool in;
  };
  __device__ Row row(int m) const {
    Row r{0, 0, 0, m < M};
    if (r.in) {
      const Pixel px = pixel_of(m, g->P, g->Q);
      r.ih0 = px.h * g->sh - g->ph, r.iw0 = px.w * g->sw - g->pw;
      r.off = px.n * xs.n + group_offset + int64_t{r.ih0} * xs.h + int64_t{r.iw0} * xs.w;
    }
    return r;
  }
  // Offset of element (row, tap) in x; false where it is padding.
  __device__ bool locate(const Row& r, const Tap& t, int64_t& off) const {
    const int ih = r.ih0 + t.r * g->dh, iw = r.iw0 + t.s * g->dw;
    off = r.off + int64_t{t.r} * g->dh * xs.h + int64_t{t.s} * g->dw * xs.w + int64_t{t.c} * xs.c;
    return r.in && static_cast<unsigned>(ih) < static_cast<unsigned>(g->H) &&
           static_cast<unsigned>(iw) < static_cast<unsigned>(g->W);
  }
  __device__ const T* chunk_at(const Row& r, const Tap& t) const {
    int64_t off;
    return locate(r, t, off) ? x + off : nullptr;
  }
  __device__ T element_at(const Row& r, const Tap& t) const {
    int64_t off;
    return locate(r, t, off) ? __ldg(x + off) : zero<T>();
  }
  __device__ const T* base() const { return x; }
};

// Forward A: x gathered by output pixel m (row) and reduction index
// j = (r, s, c) (c within the group).
template <typename T>
struct ForwardInput : InputGather<T> {
  using Row = typename InputGather<T>::Row;
  __device__ const T* chunk(const Row& r, const Tap& t) const { return this->chunk_at(r, t); }
  __device__ T element(const Row& r, const Tap& t) const { return this->element_at(r, t); }
  __device__ uint4 masked_chunk(const Row&, const Tap&) const { return uint4{}; }
};

// Forward B: w[k, c, r, s] by output channel k (row, within the group) and
// reduction index j = (r, s, c). grad_input B: w[k, c, r, s] by input
// channel c (row) and j = (r, s, k). `row_stride` / `inner_stride` are the
// strides of the row index and of the reduction's channel.
template <typename T>
struct Weight {
  const T* w;
  int64_t group_offset, row_stride, inner_stride, tap_h, tap_w;
  int rows;  // K_g or C_g
  struct Row {
    int64_t off;
    bool in;
  };
  __device__ Row row(int i) const { return {group_offset + int64_t{i} * row_stride, i < rows}; }
  __device__ const T* chunk(const Row& r, const Tap& t) const {
    return r.in ? w + (r.off + t.r * tap_h + t.s * tap_w + t.c) : nullptr;
  }
  __device__ T element(const Row& r, const Tap& t) const {
    return r.in ? __ldg(w + (r.off + t.r * tap_h + t.s * tap_w + t.c * inner_stride)) : zero<T>();
  }
  __device__ uint4 masked_chunk(const Row&, const Tap&) const { return uint4{}; }
  __device__ const T* base() const { return w; }
};

// grad_input A: gy' = act'(gy) gathered by input pixel (n, h, w) (row) and
// j = (r, s, k): gy[n, k, p, q] with p * sh - ph + r * dh = h (exact, in
// range; likewise q), else 0.
template <typename T>
struct GradInputGy {
  const T* gy;
  const T* y;  // the saved tensor of the activation's derivative
  Strides4 gs, ys;
  int64_t gy_group, y_group;  // grp * K_g * (gs.c, ys.c)
  const Geom* g;
  int M;
  struct Row {
    int n, hp, wp;  // n (-1 past the last pixel), h + ph, w + pw
  };
  __device__ Row row(int m) const {
    if (m >= M) return {-1, 0, 0};
    const Pixel px = pixel_of(m, g->H, g->W);
    return {px.n, px.h + g->ph, px.w + g->pw};
  }
  __device__ bool source(const Row& r, const Tap& t, int& p, int& q) const {
    p = transposed_source(r.hp, t.r, g->sh, g->dh, g->P);
    q = transposed_source(r.wp, t.s, g->sw, g->dw, g->Q);
    return r.n >= 0 && p >= 0 && q >= 0;
  }
  __device__ int64_t gy_offset(const Row& r, int p, int q, int k) const {
    return r.n * gs.n + gy_group + int64_t{k} * gs.c + int64_t{p} * gs.h + int64_t{q} * gs.w;
  }
  __device__ int64_t y_offset(const Row& r, int p, int q, int k) const {
    return r.n * ys.n + y_group + int64_t{k} * ys.c + int64_t{p} * ys.h + int64_t{q} * ys.w;
  }
  __device__ const T* chunk(const Row& r, const Tap& t) const {
    int p, q;
    return source(r, t, p, q) ? gy + gy_offset(r, p, q, t.c) : nullptr;
  }
  __device__ uint4 masked_chunk(const Row& r, const Tap& t) const {
    int p, q;
    Chunk<T> gv{}, yv;
    if (source(r, t, p, q)) {
      gv.bits = __ldg(reinterpret_cast<const uint4*>(gy + gy_offset(r, p, q, t.c)));
      yv.bits = __ldg(reinterpret_cast<const uint4*>(y + y_offset(r, p, q, t.c)));
#pragma unroll
      for (int u = 0; u < kChunkBytes / static_cast<int>(sizeof(T)); ++u)
        gv.v[u] = masked(gv.v[u], yv.v[u], g->act);
    }
    return gv.bits;
  }
  __device__ T element(const Row& r, const Tap& t) const {
    int p, q;
    if (!source(r, t, p, q)) return zero<T>();
    const T v = __ldg(gy + gy_offset(r, p, q, t.c));
    return g->act == Activation::none ? v : masked(v, __ldg(y + y_offset(r, p, q, t.c)), g->act);
  }
  __device__ const T* base() const { return gy; }
};

// Fills a normal tile (E GEMM rows x 64 reduction bytes) from a source:
// each thread owns kPer chunks, the same ones in every k-tile; their rows
// are resolved once. async / masked modes give 4 adjacent threads the 4
// chunks of a row (64 contiguous bytes); generic mode gives adjacent threads
// adjacent rows (adjacent pixels: coalesced in NCHW) and walks the 8 (or 4)
// elements of a chunk with an incremental tap.
template <typename T, int E, int kThreads, typename Source>
struct NormalLoader {
  static constexpr int kElems = kChunkBytes / sizeof(T);
  static constexpr int kBK = kTileBytes / sizeof(T);
  static constexpr int kPer = 4 * E / kThreads;
  static_assert(kPer >= 1 && 4 * E % kThreads == 0, "whole chunks per thread");
  const Source& src;
  LoadMode mode;
  int J, inner, S;  // reduction length, its channel count, filter width
  typename Source::Row rows[kPer];
  int offsets[kPer], chunks[kPer];

  __device__ NormalLoader(const Source& source, LoadMode load_mode, int row0, int J_, int inner_,
                          int S_)
      : src(source), mode(load_mode), J(J_), inner(inner_), S(S_) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = threadIdx.x + i * kThreads;
      const int row = mode == LoadMode::generic ? e % E : e >> 2;
      chunks[i] = mode == LoadMode::generic ? e / E : e & 3;
      offsets[i] = normal_tile_offset(row, chunks[i]);
      rows[i] = src.row(row0 + row);
    }
  }

  __device__ void load(char* tile, int kt) {
    if (mode != LoadMode::generic) {
      // One chunk column per thread: J is a multiple of kElems here, so a
      // chunk is all inside or all past the reduction, and one tap.
      const int j = kt * kBK + chunks[0] * kElems;
      const bool inside = j < J;
      const Tap t = tap_of(inside ? j : 0, inner, S);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        if (mode == LoadMode::async) {
          const T* p = inside ? src.chunk(rows[i], t) : nullptr;
          cp_async_16(tile + offsets[i], p != nullptr ? p : src.base(), p != nullptr);
        } else {
          *reinterpret_cast<uint4*>(tile + offsets[i]) =
              inside ? src.masked_chunk(rows[i], t) : uint4{};
        }
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int j = kt * kBK + chunks[i] * kElems;
      Tap t = tap_of(j < J ? j : 0, inner, S);
      Chunk<T> v;
#pragma unroll
      for (int u = 0; u < kElems; ++u) {
        v.v[u] = j + u < J ? src.element(rows[i], t) : zero<T>();
        next_tap(t, inner, S);
      }
      *reinterpret_cast<uint4*>(tile + offsets[i]) = v.bits;
    }
  }
};

// ---------------------------------------------------------------------------
// Forward.

struct ForwardArgs {
  Geom g;
  Tensor4 x, w, y, residual, preact;
  Tensor1 bias;
  int M, J;       // N*P*Q output pixels, C_g*R*S reduction
  int tiles_n;    // BN tiles over K_g
  LoadMode x_mode, w_mode;
};

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks)
    implicit_gemm_mma_forward_kernel(const __grid_constant__ ForwardArgs a) {
  __shared__ __align__(128) char smem[Tile::kSmemBytes];
  const Geom& g = a.g;
  const int grp = blockIdx.y;
  const int tm = blockIdx.x / a.tiles_n, tn = blockIdx.x - tm * a.tiles_n;
  const int m0 = tm * Tile::BM, n0 = tn * Tile::BN;

  const ForwardInput<T> xsrc{{static_cast<const T*>(a.x.data), a.x.stride,
                              int64_t{grp} * g.Cg * a.x.stride.c, &g, a.M}};
  const Weight<T> wsrc{static_cast<const T*>(a.w.data), int64_t{grp} * g.Kg * a.w.stride.n,
                       a.w.stride.n, a.w.stride.c, a.w.stride.h, a.w.stride.w, g.Kg};
  NormalLoader<T, Tile::BM, Tile::kThreads, ForwardInput<T>> la(xsrc, a.x_mode, m0, a.J, g.Cg,
                                                                 g.S);
  NormalLoader<T, Tile::BN, Tile::kThreads, Weight<T>> lb(wsrc, a.w_mode, n0, a.J, g.Cg, g.S);
  Accumulators<Tile> acc;
  gemm_main_loop<T, Tile, false>(acc, smem, 0, static_cast<int>(ceil_div(a.J, kTileBytes / sizeof(T))),
                                 la, lb);

  // Epilogue: z = acc + bias + residual; preact = z; y = act(z).
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp % Tile::WM, wn = warp / Tile::WM;
  const T* bias = static_cast<const T*>(a.bias.data);
  const T* residual = static_cast<const T*>(a.residual.data);
  T* y = static_cast<T*>(a.y.data);
  T* preact = static_cast<T*>(a.preact.data);
  const Strides4 ys = a.y.stride, rs = a.residual.stride, zs = a.preact.stride;
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + acc_row<Tile>(wm, mi, half * 2, lane);
      if (m >= a.M) continue;
      const Pixel px = pixel_of(m, g.P, g.Q);
#pragma unroll
      for (int ni = 0; ni < Tile::NI; ++ni) {
#pragma unroll
        for (int e = half * 2; e < half * 2 + 2; ++e) {
          const int kk = n0 + acc_col<Tile>(wn, ni, e, lane);
          if (kk >= g.Kg) continue;
          const int k = grp * g.Kg + kk;
          float z = acc[mi][ni][e];
          if (bias != nullptr) z += load(bias, k * a.bias.stride);
          if (residual != nullptr) z += load(residual, rs.offset(px.n, k, px.h, px.w));
          if (preact != nullptr) preact[zs.offset(px.n, k, px.h, px.w)] = from_acc<T>(z);
          y[ys.offset(px.n, k, px.h, px.w)] = from_acc<T>(apply_activation(z, g.act));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Input gradient.

struct GradInputArgs {
  Geom g;
  Tensor4 gy, y, w, gx;
  int M, J;       // N*H*W input pixels, K_g*R*S reduction
  int tiles_n;    // BN tiles over C_g
  LoadMode gy_mode, w_mode;
};

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks)
    implicit_gemm_mma_grad_input_kernel(const __grid_constant__ GradInputArgs a) {
  __shared__ __align__(128) char smem[Tile::kSmemBytes];
  const Geom& g = a.g;
  const int grp = blockIdx.y;
  const int tm = blockIdx.x / a.tiles_n, tn = blockIdx.x - tm * a.tiles_n;
  const int m0 = tm * Tile::BM, n0 = tn * Tile::BN;

  const GradInputGy<T> gsrc{static_cast<const T*>(a.gy.data),
                            static_cast<const T*>(a.y.data),
                            a.gy.stride,
                            a.y.stride,
                            int64_t{grp} * g.Kg * a.gy.stride.c,
                            int64_t{grp} * g.Kg * a.y.stride.c,
                            &g,
                            a.M};
  const Weight<T> wsrc{static_cast<const T*>(a.w.data), int64_t{grp} * g.Kg * a.w.stride.n,
                       a.w.stride.c, a.w.stride.n, a.w.stride.h, a.w.stride.w, g.Cg};
  NormalLoader<T, Tile::BM, Tile::kThreads, GradInputGy<T>> la(gsrc, a.gy_mode, m0, a.J, g.Kg,
                                                                g.S);
  NormalLoader<T, Tile::BN, Tile::kThreads, Weight<T>> lb(wsrc, a.w_mode, n0, a.J, g.Kg, g.S);
  Accumulators<Tile> acc;
  gemm_main_loop<T, Tile, false>(acc, smem, 0, static_cast<int>(ceil_div(a.J, kTileBytes / sizeof(T))),
                                 la, lb);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp % Tile::WM, wn = warp / Tile::WM;
  T* gx = static_cast<T*>(a.gx.data);
  const Strides4 xs = a.gx.stride;
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + acc_row<Tile>(wm, mi, half * 2, lane);
      if (m >= a.M) continue;
      const Pixel px = pixel_of(m, g.H, g.W);
#pragma unroll
      for (int ni = 0; ni < Tile::NI; ++ni) {
#pragma unroll
        for (int e = half * 2; e < half * 2 + 2; ++e) {
          const int c = n0 + acc_col<Tile>(wn, ni, e, lane);
          if (c < g.Cg) gx[xs.offset(px.n, grp * g.Cg + c, px.h, px.w)] = from_acc<T>(acc[mi][ni][e]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Weight (and bias) gradient.

// grad_weight operands in transposed tiles: reduction rows are output
// pixels m, chunks run along the GEMM index (output channel k for A,
// column j = (r, s, c) for B).

// A: gy'[n, k, p, q] by pixel m and output channel k (within the group).
template <typename T>
struct GradWeightGy {
  const T* gy;
  const T* y;
  Strides4 gs, ys;
  int64_t gy_group, y_group;
  const Geom* g;
  int M;
  struct Col {
    int k;
  };
  __device__ Col col(int k) const { return {k}; }
  struct Row {
    int64_t gy_off, y_off;
    bool in;
  };
  __device__ Row row(int m) const {
    Row r{0, 0, m < M};
    if (r.in) {
      const Pixel px = pixel_of(m, g->P, g->Q);
      r.gy_off = px.n * gs.n + gy_group + int64_t{px.h} * gs.h + int64_t{px.w} * gs.w;
      r.y_off = px.n * ys.n + y_group + int64_t{px.h} * ys.h + int64_t{px.w} * ys.w;
    }
    return r;
  }
  __device__ const T* chunk(const Row& r, const Col& c) const {
    return r.in && c.k < g->Kg ? gy + (r.gy_off + c.k) : nullptr;
  }
  __device__ uint4 masked_chunk(const Row& r, const Col& c) const {
    Chunk<T> gv{}, yv;
    if (r.in && c.k < g->Kg) {
      gv.bits = __ldg(reinterpret_cast<const uint4*>(gy + (r.gy_off + c.k)));
      yv.bits = __ldg(reinterpret_cast<const uint4*>(y + (r.y_off + c.k)));
#pragma unroll
      for (int u = 0; u < kChunkBytes / static_cast<int>(sizeof(T)); ++u)
        gv.v[u] = masked(gv.v[u], yv.v[u], g->act);
    }
    return gv.bits;
  }
  // Element u of the chunk starting at column c.
  __device__ T element(const Row& r, const Col& c, int u) const {
    const int k = c.k + u;
    if (!r.in || k >= g->Kg) return zero<T>();
    const T v = __ldg(gy + (r.gy_off + int64_t{k} * gs.c));
    return g->act == Activation::none ? v : masked(v, __ldg(y + (r.y_off + int64_t{k} * ys.c)), g->act);
  }
  __device__ bool constant(const Col&) const { return false; }
  __device__ const T* base() const { return gy; }
};

// B: x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] by pixel m and column
// j = (r, s, c); column J (when the bias gradient is asked for) is all ones,
// so the GEMM's column J is sum_m gy'[k, m]: grad_bias.
template <typename T>
struct GradWeightInput : InputGather<T> {
  using Row = typename InputGather<T>::Row;
  int J, columns;  // columns: J + 1 with the bias, else J
  struct Col {
    int j;
    Tap t;
  };
  __device__ Col col(int j) const { return {j, tap_of(j < J ? j : 0, this->g->Cg, this->g->S)}; }
  // Columns past J are constant chunks (ones for the bias column, zeros
  // after it); async mode sends them through masked_chunk.
  __device__ bool constant(const Col& c) const { return c.j >= J; }
  __device__ const T* chunk(const Row& r, const Col& c) const { return this->chunk_at(r, c.t); }
  __device__ uint4 masked_chunk(const Row& r, const Col& c) const {
    Chunk<T> v{};
    if (r.in && c.j == J && c.j < columns) v.v[0] = from_acc<T>(acc_t<T>(1));
    return v.bits;
  }
  __device__ T element(const Row& r, Col c, int u) const {
    const int j = c.j + u;
    if (j >= J) return r.in && j == J && j < columns ? from_acc<T>(acc_t<T>(1)) : zero<T>();
    Tap t = c.t;
    for (int i = 0; i < u; ++i) next_tap(t, this->g->Cg, this->g->S);
    return this->element_at(r, t);
  }
};

// Fills a transposed tile (64 reduction bytes' worth of pixel rows x E GEMM
// indices): each thread owns kPer chunks at fixed columns, whose state is
// resolved once; their pixel rows are resolved per k-tile. async / masked
// modes give adjacent threads adjacent chunks of a row (contiguous
// channels); generic mode gives adjacent threads adjacent pixels.
template <typename T, int E, int kThreads, typename Source>
struct TransposedLoader {
  static constexpr int kElems = kChunkBytes / sizeof(T);
  static constexpr int kBK = kTileBytes / sizeof(T);
  static constexpr int kRowChunks = E / kElems;
  static constexpr int kPer = kBK * kRowChunks / kThreads;
  static_assert(kPer >= 1 && kBK * kRowChunks % kThreads == 0, "whole chunks per thread");
  static_assert(kRowChunks % 8 == 0, "the swizzle needs rows of 8 chunks or more");
  const Source& src;
  LoadMode mode;
  typename Source::Col cols[kPer];
  int rows[kPer], chunks[kPer];

  __device__ TransposedLoader(const Source& source, LoadMode load_mode, int col0)
      : src(source), mode(load_mode) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = threadIdx.x + i * kThreads;
      rows[i] = mode == LoadMode::generic ? e % kBK : e / kRowChunks;
      chunks[i] = mode == LoadMode::generic ? e / kBK : e % kRowChunks;
      cols[i] = src.col(col0 + chunks[i] * kElems);
    }
  }

  __device__ void load(char* tile, int kt) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const typename Source::Row r = src.row(kt * kBK + rows[i]);
      char* dst = tile + transposed_tile_offset(rows[i], chunks[i], kRowChunks);
      if (mode == LoadMode::generic) {
        Chunk<T> v;
#pragma unroll
        for (int u = 0; u < kElems; ++u) v.v[u] = src.element(r, cols[i], u);
        *reinterpret_cast<uint4*>(dst) = v.bits;
      } else if (mode == LoadMode::masked || src.constant(cols[i])) {
        *reinterpret_cast<uint4*>(dst) = src.masked_chunk(r, cols[i]);
      } else {
        const T* p = src.chunk(r, cols[i]);
        cp_async_16(dst, p != nullptr ? p : src.base(), p != nullptr);
      }
    }
  }
};

struct GradWeightArgs {
  Geom g;
  Tensor4 gy, y, x, gw;
  Tensor1 gb;
  float* partial;  // [split][K][J + 1], or null with one split
  int M, J, K;     // N*P*Q pixels, C_g*R*S, all output channels
  int columns;     // GEMM columns: J + 1 with the bias, J without
  int tiles_n;     // BN tiles over J + 1 columns
  int kt_per_split, kt_total;
  LoadMode gy_mode, x_mode;
};

// Writes grad_w[k, j] (j < J) or grad_bias[k] (j == J) of group grp.
template <typename T>
__device__ __forceinline__ void store_weight_grad(const GradWeightArgs& a, int k, int j, float v) {
  const Geom& g = a.g;
  if (j == a.J) {
    static_cast<T*>(a.gb.data)[k * a.gb.stride] = from_acc<T>(v);
    return;
  }
  const Tap t = tap_of(j, g.Cg, g.S);
  const Strides4 ws = a.gw.stride;
  static_cast<T*>(a.gw.data)[k * ws.n + t.c * ws.c + t.r * ws.h + t.s * ws.w] = from_acc<T>(v);
}

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, Tile::kMinBlocks)
    implicit_gemm_mma_grad_weight_kernel(const __grid_constant__ GradWeightArgs a) {
  __shared__ __align__(128) char smem[Tile::kSmemBytes];
  const Geom& g = a.g;
  const int split = blockIdx.y, grp = blockIdx.z;
  const int tm = blockIdx.x / a.tiles_n, tn = blockIdx.x - tm * a.tiles_n;
  const int m0 = tm * Tile::BM, n0 = tn * Tile::BN;

  const GradWeightGy<T> gsrc{static_cast<const T*>(a.gy.data),
                             static_cast<const T*>(a.y.data),
                             a.gy.stride,
                             a.y.stride,
                             int64_t{grp} * g.Kg * a.gy.stride.c,
                             int64_t{grp} * g.Kg * a.y.stride.c,
                             &g,
                             a.M};
  const GradWeightInput<T> xsrc{{static_cast<const T*>(a.x.data), a.x.stride,
                                 int64_t{grp} * g.Cg * a.x.stride.c, &g, a.M},
                                a.J, a.columns};
  TransposedLoader<T, Tile::BM, Tile::kThreads, GradWeightGy<T>> la(gsrc, a.gy_mode, m0);
  TransposedLoader<T, Tile::BN, Tile::kThreads, GradWeightInput<T>> lb(xsrc, a.x_mode, n0);
  const int kt_begin = split * a.kt_per_split;
  const int kt_end = min(a.kt_total, kt_begin + a.kt_per_split);
  Accumulators<Tile> acc;
  gemm_main_loop<T, Tile, true>(acc, smem, kt_begin, kt_end, la, lb);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp % Tile::WM, wn = warp / Tile::WM;
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
#pragma unroll
    for (int ni = 0; ni < Tile::NI; ++ni) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kk = m0 + acc_row<Tile>(wm, mi, e, lane), j = n0 + acc_col<Tile>(wn, ni, e, lane);
        if (kk >= g.Kg || j >= a.columns) continue;
        const int k = grp * g.Kg + kk;
        if (a.partial != nullptr)
          a.partial[(int64_t{split} * a.K + k) * (a.J + 1) + j] = acc[mi][ni][e];
        else
          store_weight_grad<T>(a, k, j, acc[mi][ni][e]);
      }
    }
  }
}

// Sums the splits' partial gradients in split order: one thread per
// element of grad_w (and grad_bias).
template <typename T>
__global__ void __launch_bounds__(256, 4)
    implicit_gemm_grad_weight_reduce_kernel(const GradWeightArgs a, int splits) {
  const int64_t per_split = int64_t{a.K} * (a.J + 1);
  const int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (e >= per_split) return;
  const int k = static_cast<int>(e / (a.J + 1)), j = static_cast<int>(e - int64_t{k} * (a.J + 1));
  if (j >= a.columns) return;
  float v = 0.0f;
  for (int s = 0; s < splits; ++s) v += a.partial[s * per_split + e];
  store_weight_grad<T>(a, k, j, v);
}

// ---------------------------------------------------------------------------
// im2col / col2im.

struct PatchArgs {
  Geom g;
  Tensor4 x, patches;  // x: the image (grad_x for col2im), patches (N, G*J, P, Q)
  int J, C, columns;  // columns: G * J
  int64_t count;      // elements of the written tensor
  bool taps_channels_last;  // the patch columns' order (cnnk::patch_column)
};

// patches[n, grp*J + j, p, q] = x[n, grp*C_g + c, ih, iw] or 0, j naming (c, r, s).
template <typename T>
__global__ void __launch_bounds__(256, 4) conv2d_im2col_kernel(const PatchArgs a) {
  const Geom& g = a.g;
  const T* x = static_cast<const T*>(a.x.data);
  T* patches = static_cast<T*>(a.patches.data);
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < a.count;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = e / (int64_t{g.P} * g.Q);  // n * G*J + column
    const int pq = static_cast<int>(e - row * g.P * g.Q);
    const int n = static_cast<int>(row / a.columns);
    const int col = static_cast<int>(row - int64_t{n} * a.columns);
    const int grp = col / a.J, jj = col - grp * a.J;
    const PatchColumn tap = patch_column(jj, g.Cg, g.R, g.S, a.taps_channels_last);
    const int c = static_cast<int>(tap.c), r = static_cast<int>(tap.r), s = static_cast<int>(tap.s);
    const int p = pq / g.Q, q = pq - p * g.Q;
    const int ih = p * g.sh - g.ph + r * g.dh, iw = q * g.sw - g.pw + s * g.dw;
    T v = zero<T>();
    if (static_cast<unsigned>(ih) < static_cast<unsigned>(g.H) &&
        static_cast<unsigned>(iw) < static_cast<unsigned>(g.W))
      v = __ldg(x + a.x.stride.offset(n, grp * g.Cg + c, ih, iw));
    patches[a.patches.stride.offset(n, col, p, q)] = v;
  }
}

// grad_x[n, ch, h, w] = sum over the taps (r, s) whose output (p, q) reads
// it of grad_patches[n, grp*J + j(c, r, s), p, q], in (r, s) order.
template <typename T>
__global__ void __launch_bounds__(256, 4) conv2d_col2im_kernel(const PatchArgs a) {
  const Geom& g = a.g;
  const T* patches = static_cast<const T*>(a.patches.data);
  T* gx = static_cast<T*>(a.x.data);
  const int64_t HW = int64_t{g.H} * g.W;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < a.count;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t plane = e / HW;
    const int hw = static_cast<int>(e - plane * HW);
    const int n = static_cast<int>(plane / a.C), ch = static_cast<int>(plane - int64_t{n} * a.C);
    const int h = hw / g.W, w = hw - h * g.W;
    const int grp = ch / g.Cg, c = ch - grp * g.Cg;
    const int col0 = grp * a.J;
    acc_t<T> sum = acc_t<T>(0);
    for (int r = 0; r < g.R; ++r) {
      const int p = transposed_source(h + g.ph, r, g.sh, g.dh, g.P);
      if (p < 0) continue;
      for (int s = 0; s < g.S; ++s) {
        const int q = transposed_source(w + g.pw, s, g.sw, g.dw, g.Q);
        const int col = col0 + static_cast<int>(patch_column_index(c, r, s, g.Cg, g.R, g.S,
                                                                    a.taps_channels_last));
        if (q >= 0) sum += load(patches, a.patches.stride.offset(n, col, p, q));
      }
    }
    gx[a.x.stride.offset(n, ch, h, w)] = from_acc<T>(sum);
  }
}

// ---------------------------------------------------------------------------
// Host side.

// The kernels' int indices hold: every size, pixel count and reduction
// length below 2^30, and the furthest row/column a tap addresses within int.
bool fits_int(const Conv2dGeometry& g) {
  constexpr int64_t kLimit = kIntMax / 2;
  const int64_t sizes[] = {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w,
                           g.pad_top, g.pad_left, g.dil_h, g.dil_w};
  for (int64_t v : sizes)
    if (v > kLimit) return false;
  return product_le({g.N, g.P, g.Q}, kLimit) && product_le({g.N, g.H, g.W}, kLimit) &&
         product_le({g.C, g.R, g.S}, kLimit) && product_le({g.K, g.R, g.S}, kLimit) &&
         product_le({g.K, g.C_g() * g.R * g.S + 1}, kLimit) &&
         (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + g.H + g.pad_top <= kIntMax &&
         (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + g.W + g.pad_left <= kIntMax;
}

Geom to_geom(const Conv2dGeometry& g) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {i(g.N),        i(g.H),        i(g.W),       i(g.P),        i(g.Q),
          i(g.R),        i(g.S),        i(g.stride_h), i(g.stride_w), i(g.pad_top),
          i(g.pad_left), i(g.dil_h),    i(g.dil_w),   i(g.C_g()),    i(g.K_g()),
          g.activation};
}


// The big tile when its columns are used and it still gives every SM a
// few blocks; else the small one (more blocks, less waste on narrow K_g).
bool use_big_tile(int64_t rows, int64_t cols, int64_t groups) {
  return cols > 64 && ceil_div(rows, BigTile::BM) * ceil_div(cols, BigTile::BN) * groups >=
                          kTargetBlocks;
}

template <typename T, typename Tile>
Status forward_launch(const Conv2dGeometry& g, const ForwardArgs& args, cudaStream_t stream) {
  ForwardArgs a = args;
  a.tiles_n = static_cast<int>(ceil_div(a.g.Kg, Tile::BN));
  const int64_t tiles = ceil_div(a.M, Tile::BM) * a.tiles_n;
  if (tiles > kMaxGridX || g.groups > kMaxGridY) return Status::index_overflow;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(g.groups));
  implicit_gemm_mma_forward_kernel<T, Tile><<<grid, Tile::kThreads, 0, stream>>>(a);
  return launched();
}

template <typename T>
Status forward_impl(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias,
                    Tensor4 residual, Tensor4 y, Tensor4 preact, cudaStream_t stream) {
  constexpr int kElems = kChunkBytes / sizeof(T);
  ForwardArgs a{};
  a.g = to_geom(g), a.x = x, a.w = w, a.y = y, a.residual = residual, a.preact = preact;
  a.bias = bias;
  a.M = static_cast<int>(g.N * g.P * g.Q), a.J = static_cast<int>(g.reduction_size());
  a.x_mode = vector_ready(x.data, x.stride.c, g.C_g(), {x.stride.n, x.stride.h, x.stride.w}, kElems)
                 ? LoadMode::async
                 : LoadMode::generic;
  a.w_mode = vector_ready(w.data, w.stride.c, g.C_g(), {w.stride.n, w.stride.h, w.stride.w}, kElems)
                 ? LoadMode::async
                 : LoadMode::generic;
  return use_big_tile(a.M, g.K_g(), g.groups) ? forward_launch<T, BigTile>(g, a, stream)
                                              : forward_launch<T, SmallTile>(g, a, stream);
}

// The A operand's mode for gy (and y when an activation is fused).
LoadMode gy_mode(const Conv2dGeometry& g, const Tensor4& gy, const Tensor4& y, int elems) {
  const bool gy_vec = vector_ready(gy.data, gy.stride.c, g.K_g(),
                                   {gy.stride.n, gy.stride.h, gy.stride.w}, elems);
  if (g.activation == Activation::none) return gy_vec ? LoadMode::async : LoadMode::generic;
  const bool y_vec = vector_ready(y.data, y.stride.c, g.K_g(), {y.stride.n, y.stride.h, y.stride.w}, elems);
  return gy_vec && y_vec ? LoadMode::masked : LoadMode::generic;
}

template <typename T, typename Tile>
Status grad_input_launch(const Conv2dGeometry& g, const GradInputArgs& args,
                         cudaStream_t stream) {
  GradInputArgs a = args;
  a.tiles_n = static_cast<int>(ceil_div(a.g.Cg, Tile::BN));
  const int64_t tiles = ceil_div(a.M, Tile::BM) * a.tiles_n;
  if (tiles > kMaxGridX || g.groups > kMaxGridY) return Status::index_overflow;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(g.groups));
  implicit_gemm_mma_grad_input_kernel<T, Tile><<<grid, Tile::kThreads, 0, stream>>>(a);
  return launched();
}

template <typename T>
Status grad_input_impl(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                       Tensor4 grad_x, cudaStream_t stream) {
  constexpr int kElems = kChunkBytes / sizeof(T);
  GradInputArgs a{};
  a.g = to_geom(g), a.gy = grad_y, a.y = y, a.w = w, a.gx = grad_x;
  a.M = static_cast<int>(g.N * g.H * g.W), a.J = static_cast<int>(g.K_g() * g.R * g.S);
  a.gy_mode = gy_mode(g, grad_y, y, kElems);
  // The weight's reduction channel is k: contiguous only in a (C, K, R, S)-
  // style permuted copy (w.stride.n == 1).
  a.w_mode = vector_ready(w.data, w.stride.n, g.K_g(), {w.stride.c, w.stride.h, w.stride.w}, kElems)
                 ? LoadMode::async
                 : LoadMode::generic;
  return use_big_tile(a.M, g.C_g(), g.groups) ? grad_input_launch<T, BigTile>(g, a, stream)
                                              : grad_input_launch<T, SmallTile>(g, a, stream);
}

// How grad_weight splits the reduction over pixels; the workspace size
// comes from here, and depends on the geometry and dtype only.
struct GradWeightPlan {
  bool big;
  int64_t tiles, kt_total, kt_per_split, splits;
  size_t workspace_bytes;
};

template <typename Tile>
GradWeightPlan plan_grad_weight_with(bool big, int elem_bytes, const Conv2dGeometry& g) {
  GradWeightPlan p{};
  p.big = big;
  const int64_t columns = g.reduction_size() + 1;
  p.tiles = ceil_div(g.K_g(), Tile::BM) * ceil_div(columns, Tile::BN);
  p.kt_total = ceil_div(g.N * g.P * g.Q, kTileBytes / elem_bytes);
  const int64_t wanted = ceil_div(kTargetBlocks, p.tiles * g.groups);
  const int64_t most = std::max<int64_t>(1, p.kt_total / kMinKTilesPerSplit);
  const int64_t splits = wanted < most ? wanted : most;
  p.kt_per_split = std::max<int64_t>(1, ceil_div(p.kt_total, splits > kMaxGridY ? kMaxGridY : splits));
  p.splits = p.kt_total > 0 ? ceil_div(p.kt_total, p.kt_per_split) : 1;
  p.workspace_bytes =
      p.splits > 1 ? static_cast<size_t>(p.splits * g.K * columns) * sizeof(float) : 0;
  return p;
}

GradWeightPlan plan_grad_weight(DType dtype, const Conv2dGeometry& g) {
  const int elem_bytes = dtype == DType::float32 ? 4 : 2;
  return g.K_g() > 64 && g.reduction_size() + 1 > 64
             ? plan_grad_weight_with<BigTile>(true, elem_bytes, g)
             : plan_grad_weight_with<GradWeightSmallTile>(false, elem_bytes, g);
}

template <typename T, typename Tile>
Status grad_weight_launch(const Conv2dGeometry& g, const GradWeightPlan& plan,
                          const GradWeightArgs& args, cudaStream_t stream) {
  GradWeightArgs a = args;
  // Tiled over J + 1 columns with or without the bias, as the plan (and so
  // the workspace size) is; without it the last column is never stored.
  a.tiles_n = static_cast<int>(ceil_div(a.J + 1, Tile::BN));
  a.kt_total = static_cast<int>(plan.kt_total), a.kt_per_split = static_cast<int>(plan.kt_per_split);
  const int64_t reduce_blocks = ceil_div(g.K * (a.J + 1), 256);
  if (plan.tiles > kMaxGridX || plan.splits > kMaxGridY || g.groups > kMaxGridY ||
      reduce_blocks > kMaxGridX)
    return Status::index_overflow;
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits),
                  static_cast<unsigned>(g.groups));
  implicit_gemm_mma_grad_weight_kernel<T, Tile><<<grid, Tile::kThreads, 0, stream>>>(a);
  const Status s = launched();
  if (s != Status::ok || a.partial == nullptr) return s;
  implicit_gemm_grad_weight_reduce_kernel<T>
      <<<static_cast<unsigned>(reduce_blocks), 256, 0, stream>>>(a, static_cast<int>(plan.splits));
  return launched();
}

template <typename T>
Status grad_weight_impl(const Conv2dGeometry& g, const GradWeightPlan& plan, Tensor4 grad_y,
                        Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias, void* workspace,
                        cudaStream_t stream) {
  constexpr int kElems = kChunkBytes / sizeof(T);
  GradWeightArgs a{};
  a.g = to_geom(g), a.gy = grad_y, a.y = y, a.x = x, a.gw = grad_w, a.gb = grad_bias;
  a.partial = plan.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  a.M = static_cast<int>(g.N * g.P * g.Q), a.J = static_cast<int>(g.reduction_size());
  a.K = static_cast<int>(g.K);
  a.columns = a.J + (grad_bias.data != nullptr ? 1 : 0);
  a.gy_mode = gy_mode(g, grad_y, y, kElems);
  a.x_mode = vector_ready(x.data, x.stride.c, g.C_g(), {x.stride.n, x.stride.h, x.stride.w}, kElems)
                 ? LoadMode::async
                 : LoadMode::generic;
  return plan.big ? grad_weight_launch<T, BigTile>(g, plan, a, stream)
                  : grad_weight_launch<T, GradWeightSmallTile>(g, plan, a, stream);
}

template <typename T>
Status patch_launch(bool to_patches, const PatchArgs& a, cudaStream_t stream) {
  const int64_t blocks = ceil_div(a.count, 256);
  const unsigned grid = static_cast<unsigned>(blocks < kMaxGridX ? blocks : kMaxGridX);
  if (to_patches)
    conv2d_im2col_kernel<T><<<grid, 256, 0, stream>>>(a);
  else
    conv2d_col2im_kernel<T><<<grid, 256, 0, stream>>>(a);
  return launched();
}

Status patch_impl(bool to_patches, DType dtype, const Conv2dGeometry& g, Tensor4 x,
                  Tensor4 patches, bool taps_channels_last, cudaStream_t stream) {
  if (Status s = check_conv2d_geometry(g); s != Status::ok) return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (x.data == nullptr || patches.data == nullptr) return Status::bad_argument;
  if (!fits_int(g) || !product_le({g.C, g.R, g.S, g.P, g.Q}, kIntMax)) return Status::index_overflow;
  PatchArgs a{};
  a.g = to_geom(g), a.x = x, a.patches = patches;
  a.J = static_cast<int>(g.reduction_size()), a.C = static_cast<int>(g.C);
  a.columns = static_cast<int>(g.groups) * a.J;
  a.count = to_patches ? g.N * g.C * g.R * g.S * g.P * g.Q : g.N * g.C * g.H * g.W;
  a.taps_channels_last = taps_channels_last;
  return dispatch_dtype(dtype, [&](auto type) {
    return patch_launch<typename decltype(type)::type>(to_patches, a, stream);
  });
}

}  // namespace

Status conv2d_implicit_gemm_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                    Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact,
                                    bool allow_tf32, cudaStream_t stream) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok) return s;
  if (!tensor_core_dtype(dtype, allow_tf32)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (!fits_int(g)) return Status::index_overflow;
  return dispatch_mma_dtype(dtype, [&](auto type) {
    return forward_impl<typename decltype(type)::type>(g, x, w, bias, residual, y, preact, stream);
  });
}

Status conv2d_implicit_gemm_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                       Tensor4 y, Tensor4 w, Tensor4 grad_x, bool allow_tf32,
                                       cudaStream_t stream) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok) return s;
  if (!tensor_core_dtype(dtype, allow_tf32)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (!fits_int(g)) return Status::index_overflow;
  return dispatch_mma_dtype(dtype, [&](auto type) {
    return grad_input_impl<typename decltype(type)::type>(g, grad_y, y, w, grad_x, stream);
  });
}

size_t conv2d_implicit_gemm_grad_weight_workspace_bytes(DType dtype, const Conv2dGeometry& g) {
  if (check_conv2d_geometry(g) != Status::ok || !tensor_core_dtype(dtype, true) || !fits_int(g))
    return 0;
  return plan_grad_weight(dtype, g).workspace_bytes;
}

Status conv2d_implicit_gemm_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                        Tensor4 y, Tensor4 x, Tensor4 grad_w, Tensor1 grad_bias,
                                        Workspace workspace, bool allow_tf32,
                                        cudaStream_t stream) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  if (!tensor_core_dtype(dtype, allow_tf32)) return Status::unsupported_dtype;
  if (!fits_int(g)) return Status::index_overflow;
  const GradWeightPlan plan = plan_grad_weight(dtype, g);
  if (plan.workspace_bytes > 0 &&
      (workspace.data == nullptr || workspace.bytes < plan.workspace_bytes))
    return Status::bad_argument;
  return dispatch_mma_dtype(dtype, [&](auto type) {
    return grad_weight_impl<typename decltype(type)::type>(g, plan, grad_y, y, x, grad_w,
                                                           grad_bias, workspace.data, stream);
  });
}

Status conv2d_im2col(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 patches,
                     bool taps_channels_last, cudaStream_t stream) {
  return patch_impl(true, dtype, g, x, patches, taps_channels_last, stream);
}

Status conv2d_col2im(DType dtype, const Conv2dGeometry& g, Tensor4 grad_patches, Tensor4 grad_x,
                     bool taps_channels_last, cudaStream_t stream) {
  return patch_impl(false, dtype, g, grad_x, grad_patches, taps_channels_last, stream);
}

}  // namespace cuda
}  // namespace cnnk
