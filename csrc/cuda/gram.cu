// gram on CUDA: the Gram matrix, its backward and the fused style loss
// (contracts in cnnk/gram.h), on tensor cores for f16, bf16 and (when the
// caller allows TF32) f32, on the CUDA cores for f64 and exact f32.
//
// ===== Tensor cores: gram_mma_kernel, style_loss_mma_kernel,
// gram_backward_mma_kernel (the GEMM core of cnnk/cuda_mma.cuh, shared with
// the implicit-GEMM convolutions: mma.sync.m16n8k16 f16/bf16 or m16n8k8 TF32
// (cvt.rna) with fp32 accumulators, a 3-stage cp.async ring, ldmatrix, the
// XOR-swizzled tiles of cnnk/implicit_gemm.h). A block of 4 warps (2 x 2,
// each 32 x 32: MI = 2 x NI = 4 mma tiles) owns a 64 x 64 output tile and
// reduces over k-tiles of 64 bytes (32 f16/bf16 or 16 f32 elements); its
// accumulator (row, column) mapping is the core's acc_row / acc_col
// (for_each_accumulator). Shared memory: 3 stages x (64 + 64) rows x 64 B
// = 24 KiB static. Built for sm_80 and sm_90a (mma.sync, no wgmma).
//
// Operand tiles: the Gram's operands are rows of x (GEMM rows = channels,
// reduction = l). Normal tiles (a row's k-tile contiguous) when x's l
// stride is the smaller (NCHW), transposed tiles (a k's 64 rows
// contiguous, ldmatrix.trans; 4-byte loads for f32) when the channel
// stride is (channels_last): a chunk of 16 bytes then always holds
// elements adjacent in memory. 16-byte cp.async when that contiguous index
// has stride 1, its extent (L, or C) is a multiple of 8 (f32: 4) and the
// pointer and other strides are multiples of 16 bytes (plane_async); else
// element by element (any strides, any C and L) through registers into the
// same tiles. Rows past C and reduction indices past L are zeros.
//
// gram_mma_kernel<T, kTransposed, kCross>: tile (ti, tj) of one image,
// ti <= tj only (blocks below the diagonal return at once); the store
// writes the tile where i <= j and its mirror where i < j, as gram_kernel.
// CROSS runs the reduction twice as long: A = [x | o], B = [o | x] along
// k (k-tiles [0, kt) read x for A and o for B, [kt, 2 kt) the reverse), so
// acc = x o^T + o x^T in one accumulator set.
//   MACs: B * L * 64^2 * T (T + 1) / 2 with T = ceil(C / 64), about
//   B * L * C (C + 64) / 2 (CROSS twice that). Bytes: x read by each block
//   of its tile row and column (2 * 64 * L elements; B * C * L from DRAM,
//   the rest from L2), the gram written once (B * C^2).
//
// style_loss_mma_kernel<T, kTransposed>: the Gram tile as gram_mma_kernel,
// never stored. A warp's 32 x 32 accumulators are exactly one kTile x
// kTile partial-sum tile of the contract ((2 bi + wm, 2 bj + wn) for block
// tile (bi, bj), warp (wm, wn)): each lane sums its upper elements'
// squared differences (and the mirrored target's off the diagonal) in a
// fixed order, a shfl_xor butterfly adds the 32 lanes, lane 0 writes the
// partial (no atomics: deterministic). Partial tiles below the diagonal
// sum nothing and write 0; blocks below the diagonal write their four
// zeros and return; partial tiles past ceil(C / 32) (odd counts) are not
// written. The residual, if kept, is written once per element as
// style_loss_kernel does; sum_partials_kernel then adds the partials.
//   MACs as the Gram; bytes: x as the Gram, target read once (B * C^2),
//   residual written once if kept, the Gram never.
//
// gram_slice_mma_kernel<T, kTransposed, kCross>: phase 1 of the split
// reduction over L (cnnk/gram.h; below), gram_mma_kernel's product over
// one slice's k-tiles (blockIdx.z; slice_len is whole k-tiles, the loaders
// start at k-tile k_base), its fp32 tile stored unscaled to the workspace.
//
// gram_backward_mma_kernel<T, kTransposed>: grad_x = scale S x, S = dG +
// dG^T; M = C rows i, N = L columns l, reduction over the channels k. A =
// S, formed element by element as it is staged (fp32 add, one rounding;
// S is symmetric, so either tile layout holds the same values); B[k, l] =
// x[k, l] as GEMM row l: normal tiles for channels_last x (channel stride
// the smaller), transposed for NCHW, cp.async as above.
//   MACs: B * C^2 * L (2 B C^2 L FLOPs); bytes: x (re-read per row tile,
//   from L2), dG twice per row tile (L2), grad_x written once.
//
// ===== Split reduction over L (the forwards: gram_matrix and style_loss,
// both paths). When B * (upper tiles) blocks cannot fill the GPU, the
// plan (cnnkernels/ops/gram.py, split_plan) cuts L into
// splits = clamp(ceil(264 / (B * upper tiles)), 1, L / 512) slices
// (264: 2 blocks per SM of a 132-SM H100, a fixed target) of whole
// 64-position steps, and the geometry carries splits and slice_len.
// Phase 1, grid (tiles^2, images, splits): gram_slice_mma_kernel (tensor
// cores) or gram_slice_kernel (CUDA cores) writes each upper tile's
// slice, unscaled, every element inside C x C, to the workspace
// (splits x B x C x C accumulators: float, double for double). Phase 2,
// grid (32-wide tiles^2, images), whichever phase 1 ran:
// gram_split_epilogue_kernel adds each upper element's slices in slice
// order (sum_slices; deterministic, no atomics) and stores as gram_kernel
// (scaled, mirrored); style_split_epilogue_kernel adds them the same way,
// then style_tile_epilogue as style_loss_kernel (residual if kept, the
// 32 x 32 tile's partial), then sum_partials_kernel. splits == 1 runs the
// single-pass kernels above, unchanged.
//   MACs: the single pass's (the slices partition L); bytes: x as the
//   single pass, plus the workspace written once and read once in phase 2
//   (4 * splits * B * C^2 bytes each way, mostly in L2): per element
//   splits accumulators against slice_len * tile-row products, with
//   slice_len >= 512 at most 2 C / 512 of x's bytes for f16.
//
// Roofline (H100 SXM: ~990 TFLOP/s dense f16, 3.35 TB/s; one SM ~7.5
// TFLOP/s), f16, B = 1, VGG-19 at 256^2 (estimates, not measured):
//   conv1_1, C = 64, L = 65536: 268 M MACs (537 MFLOP), x 8 MiB. Single
//   pass, the Gram is one 64 x 64 block on one SM: >= 72 us (its tensor
//   cores). Split: 128 slices of 512 (L / 512 caps the 264 the rule
//   wants), 128 blocks of 16 k-tiles, one wave: ~0.6 us of each SM's
//   tensor cores, x once from DRAM ~2.5 us; 2 MiB of workspace written,
//   1 MiB (the upper elements) read back by phase 2's 3 blocks, bound by
//   L2 latency (8 rounds of 16 slices): a few us. Together ~5-8 us, about
//   10x the single pass.
//   The backward is 1024 blocks: 537 MFLOP against 16 MiB (x read, grad_x
//   written): 32 FLOP/B, memory-bound, ~5 us.
//   conv5_1, C = 512, L = 256: not split (L < 2 x 512: the slices would be
//   shorter than the minimum); 36 upper blocks of 8 k-tiles each,
//   38 M MACs (75 MFLOP), 256 KiB of x and 512 KiB of gram: ~0.25 us by
//   DRAM, in practice a few microseconds of launch and pipeline latency
//   (36 of 132 SMs busy). The backward: 32 blocks, 134 MFLOP, ~1 MiB.
// Registers per thread (ptxas, sm_80 / sm_90a, f16/bf16/f32, from
// benchmarks/static_check.py) and resident 4-warp blocks per SM, no spills
// anywhere; __launch_bounds__(128, 3) lets ptxas use up to 168 (at 128 the
// 16-bit transposed kernels spilled):
//   gram_mma           normal 86-94 / 92-104 -> 4-5, transposed 110-128 / 120-139 -> 3-4
//   style_loss_mma     normal 76-82 / 84-90  -> 5-6, transposed 114-116 / 124-130 -> 3-4
//   gram_slice_mma     normal 88-96 / 94-105 -> 4-5, transposed 112-132 / 122-142 -> 3-4
//   gram_backward_mma  normal 84-96 / 96     -> 5,   transposed 117-128 / 134-136 -> 3-4
// 16 HMMA per k-tile in each (2 k-steps x MI 2 x NI 4 per warp).
// The element-by-element loaders hide their stride from the optimizer
// (opaque()): hoisted out of the k-tile loop, a chunk's eight 64-bit
// offsets spilled the 16-bit transposed kernels.
// Limits: l and C below 2^30 (int tile indices), else the CUDA-core
// kernels run.
//
// ===== CUDA cores: gram_kernel, style_loss_kernel, gram_backward_kernel
// (f64, and f32 without TF32): classic shared-memory tiled products; a
// block of 16 x 16 threads owns a 32 x 32 output tile, each thread a 2 x 2
// register tile, and the reduction runs 32 steps at a time through shared
// memory (padded rows: no bank conflicts on the transposed reads).
//
// gram_kernel: tile (ti, tj) of one image; blocks below the diagonal return
// at once, so only the upper triangle is computed. The store writes the
// tile where i <= j and its mirror where i < j: exactly symmetric, every
// element written once. CROSS: x o^T + o x^T, two products per step.
// B * C * (C + 32) * L multiply-adds; x read once per tile row and column.
//
// gram_slice_kernel: phase 1 of the split on the CUDA cores, gram_kernel's
// product over one slice (blockIdx.z) stored unscaled to the workspace.
// gram_split_epilogue_kernel / style_split_epilogue_kernel: phase 2 (both
// paths), 16 x 16 threads per 32 x 32 tile as here; see the split section
// above. Registers (sm_80 / sm_90a): gram_slice 50-80, the epilogues
// 64-80, no spills.
//
// style_loss_kernel: the fused style loss; a block owns tile (ti, tj) as
// gram_kernel (the same tile_product) and never stores it: each thread
// takes its upper elements' squared differences against the target (and the
// mirrored target off the diagonal, cnnk/gram.h), writes the residual if
// wanted, and a fixed-order block tree gives the tile's partial; blocks
// below the diagonal write 0. sum_partials_kernel adds the B * tiles^2
// partials. The Gram's B * C * (C + 32) * L multiply-adds; the target read
// once, the residual (if kept) written once, the Gram never.
//
// gram_backward_kernel: grad_x = scale (dG + dG^T) x, a product of M = C
// rows, N = L columns, K = C; the A tile dG[i, k] + dG[k, i] is formed as it
// is staged. 2 * B * C^2 * L flops; x read C / 32 times (mostly from L2).
//
// difference_dot_kernel / sum_partials_kernel: the content loss's sum; a
// block of 256 threads owns one chunk (g.chunk elements), each thread a
// strided share, then a shared-memory tree: one partial per chunk; one block
// then adds the partials in the same fixed order. scaled_difference_kernel:
// elementwise. Memory-bound: each input read once, the output written once.
//
// Accumulation in float (double for double); 64-bit offsets; the batch is
// grid axis y, split into launches of at most 65535 images.
#include <type_traits>

#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/cuda_mma.cuh"
#include "cnnk/gram.h"

namespace cnnk::cuda {
namespace {

constexpr int kTile = 32;     // output tile side
constexpr int kStep = 32;     // reduction steps staged per round
constexpr int kThreads = 16;  // threads per tile side (2 x 2 outputs each)
constexpr int kBlock = kThreads * kThreads;
// Two resident blocks per SM: lets ptxas use up to 128 registers (left to
// itself it held some products' kernels at 64 and spilled on sm_90a).
constexpr int kMinBlocks = 2;
constexpr int64_t kMaxGridZ = 65535;  // CUDA's gridDim.z limit: the split's slices

// Element (c, l) of image b of a (B, C, L) tensor.
template <typename T>
__device__ __forceinline__ acc_t<T> at(Tensor3 t, int64_t b, int64_t c, int64_t l) {
  return load(static_cast<const T*>(t.data), b * t.stride[0] + c * t.stride[1] + l * t.stride[2]);
}

// Stages rows [r0, r0 + kTile) x steps [l0, l0 + kStep) of t as tile[l][r]
// (zeros outside C x L), reading along l (contiguous in NCHW).
template <typename T>
__device__ __forceinline__ void stage_rows(acc_t<T> (*tile)[kTile + 1], Tensor3 t, int64_t b,
                                           int64_t r0, int64_t l0, int64_t C, int64_t L) {
  // One element per thread per pass; not unrolled (unrolled, the half
  // kernel's 64-bit offsets spilled on sm_90a).
#pragma unroll 1
  for (int e = threadIdx.y * kThreads + threadIdx.x; e < kTile * kStep; e += kBlock) {
    const int r = e / kStep, l = e % kStep;
    tile[l][r] = r0 + r < C && l0 + l < L ? at<T>(t, b, r0 + r, l0 + l) : acc_t<T>(0);
  }
}

// The Gram tile (i0, j0) of image b over positions [l_begin, l_end), x x^T
// (CROSS: x o^T + o x^T), into each thread's 2 x 2 accumulators (rows
// ty + 16 r, columns tx + 16 s). l_begin is a multiple of kStep; positions
// past L read as zeros.
template <typename T, bool kCross>
__device__ __forceinline__ void tile_product(acc_t<T> (&acc)[2][2], const GramGeometry& g,
                                             Tensor3 x, Tensor3 o, int64_t b, int64_t i0,
                                             int64_t j0, int64_t l_begin, int64_t l_end) {
  using Acc = acc_t<T>;
  __shared__ Acc xi[kStep][kTile + 1], xj[kStep][kTile + 1];
  __shared__ Acc oi[kCross ? kStep : 1][kTile + 1], oj[kCross ? kStep : 1][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  for (int64_t l0 = l_begin; l0 < l_end; l0 += kStep) {
    stage_rows<T>(xi, x, b, i0, l0, g.C, g.L);
    stage_rows<T>(xj, x, b, j0, l0, g.C, g.L);
    if constexpr (kCross) {
      stage_rows<T>(oi, o, b, i0, l0, g.C, g.L);
      stage_rows<T>(oj, o, b, j0, l0, g.C, g.L);
    }
    __syncthreads();
#pragma unroll 8
    for (int l = 0; l < kStep; ++l)
      for (int r = 0; r < 2; ++r)
        for (int s = 0; s < 2; ++s) {
          if constexpr (kCross)
            acc[r][s] += xi[l][ty + kThreads * r] * oj[l][tx + kThreads * s] +
                         oi[l][ty + kThreads * r] * xj[l][tx + kThreads * s];
          else
            acc[r][s] += xi[l][ty + kThreads * r] * xj[l][tx + kThreads * s];
        }
    __syncthreads();
  }
}

// The epilogue of gram_kernel (and of the split's phase 2): the scaled tile
// where i <= j and its mirror where i < j.
template <typename T>
__device__ __forceinline__ void store_gram_tile(const acc_t<T> (&acc)[2][2], int64_t C,
                                                acc_t<T> scale, Tensor3 gram, int64_t b,
                                                int64_t i0, int64_t j0) {
  T* out = static_cast<T*>(gram.data) + b * gram.stride[0];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      if (i >= C || j >= C || i > j) continue;
      const T v = from_acc<T>(acc[r][s] * scale);
      out[i * gram.stride[1] + j * gram.stride[2]] = v;
      if (i < j) out[j * gram.stride[1] + i * gram.stride[2]] = v;
    }
}

template <typename T, bool kCross>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    gram_kernel(GramGeometry g, Tensor3 x, Tensor3 o, acc_t<T> scale, Tensor3 gram,
                int64_t batch0, int tiles) {
  using Acc = acc_t<T>;
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  if (tj < ti) return;
  const int64_t b = batch0 + blockIdx.y, i0 = int64_t{ti} * kTile, j0 = int64_t{tj} * kTile;
  Acc acc[2][2] = {};
  tile_product<T, kCross>(acc, g, x, o, b, i0, j0, 0, g.L);
  store_gram_tile<T>(acc, g.C, scale, gram, b, i0, j0);
}

// Workspace element (slice s, image b, i, j) of the split reduction
// (cnnk/gram.h): slices are B * C * C apart.
__device__ __forceinline__ int64_t slice_offset(const GramGeometry& g, int64_t s, int64_t b,
                                                int64_t i, int64_t j) {
  return ((s * g.B + b) * g.C + i) * g.C + j;
}

// Phase 1 of the split Gram (and style loss) on the CUDA cores: block
// (tile, image, slice z) reduces its slice's positions as gram_kernel does
// and writes the unscaled tile, every element inside C x C, to the
// workspace (upper tiles only).
template <typename T, bool kCross>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    gram_slice_kernel(GramGeometry g, Tensor3 x, Tensor3 o, Workspace slices, int64_t batch0,
                      int tiles) {
  using Acc = acc_t<T>;
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  if (tj < ti) return;
  const int64_t b = batch0 + blockIdx.y, i0 = int64_t{ti} * kTile, j0 = int64_t{tj} * kTile;
  const int64_t l_begin = int64_t{blockIdx.z} * g.slice_len;
  const int64_t l_end = l_begin + g.slice_len < g.L ? l_begin + g.slice_len : g.L;
  Acc acc[2][2] = {};
  tile_product<T, kCross>(acc, g, x, o, b, i0, j0, l_begin, l_end);
  Acc* out = static_cast<Acc*>(slices.data);
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      if (i < g.C && j < g.C) out[slice_offset(g, blockIdx.z, b, i, j)] = acc[r][s];
    }
}

// Phase 2's reduction: the thread's 2 x 2 elements of tile (i0, j0), each
// the sum of its g.splits slices in slice order (elements outside C or
// below the diagonal stay 0: the epilogues skip them). Phase 2 is few
// blocks for small C (3 for C = 64), so it is bound by L2 latency: the
// slice loop is the outer one and unrolled 16 times, a thread keeping its
// four elements' loads of 16 slices (64) in flight together.
template <typename Acc>
__device__ __forceinline__ void sum_slices(Acc (&acc)[2][2], const GramGeometry& g,
                                           Workspace slices, int64_t b, int64_t i0, int64_t j0) {
  const Acc* in = static_cast<const Acc*>(slices.data) +
                  slice_offset(g, 0, b, i0 + threadIdx.y, j0 + threadIdx.x);
  const int64_t slice_stride = g.B * g.C * g.C;
  bool upper[2][2];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      upper[r][s] = i < g.C && j < g.C && i <= j;
      acc[r][s] = 0;
    }
#pragma unroll 16
  for (int64_t k = 0; k < g.splits; ++k, in += slice_stride)
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int s = 0; s < 2; ++s)
        if (upper[r][s]) acc[r][s] += in[kThreads * (r * g.C + s)];
}

// Phase 2 of the split Gram: block (tile, image) of kTile x kTile (any
// phase-1 tile size: the workspace is element-wise) adds the slices and
// stores as gram_kernel.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    gram_split_epilogue_kernel(GramGeometry g, Workspace slices, acc_t<T> scale, Tensor3 gram,
                               int64_t batch0, int tiles) {
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  if (tj < ti) return;
  const int64_t b = batch0 + blockIdx.y, i0 = int64_t{ti} * kTile, j0 = int64_t{tj} * kTile;
  acc_t<T> acc[2][2];
  sum_slices(acc, g, slices, b, i0, j0);
  store_gram_tile<T>(acc, g.C, scale, gram, b, i0, j0);
}

// The sum of the block's `value`s (thread t of kBlock) in a fixed tree
// order (thread 0 has it).
template <typename Acc>
__device__ Acc block_sum(Acc value, int t) {
  __shared__ Acc lanes[kBlock];
  lanes[t] = value;
  __syncthreads();
  for (int half = kBlock / 2; half > 0; half /= 2) {
    if (t < half) lanes[t] += lanes[t + half];
    __syncthreads();
  }
  return lanes[0];
}

// The style loss's epilogue of tile (i0, j0) of image b (style_loss_kernel
// and the split's phase 2): the unscaled Gram tile acc, never stored, its
// squared differences against the target (cnnk/gram.h) summed to the
// tile's partial (thread t of the block); the residual if wanted.
template <typename T>
__device__ __forceinline__ void style_tile_epilogue(const acc_t<T> (&acc)[2][2], int64_t C,
                                                    Tensor3 target, acc_t<T> gram_scale,
                                                    Tensor3 residual, acc_t<T>* partial,
                                                    int64_t b, int64_t i0, int64_t j0, int t) {
  using Acc = acc_t<T>;
  T* r_img = static_cast<T*>(residual.data);
  Acc sum = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      if (i >= C || j >= C || i > j) continue;
      const Acc e = acc[r][s] * gram_scale;
      const Acc upper = e - at<T>(target, b, i, j);
      sum += upper * upper;
      if (r_img != nullptr)
        r_img[b * residual.stride[0] + i * residual.stride[1] + j * residual.stride[2]] =
            from_acc<T>(upper);
      if (i < j) {
        const Acc lower = e - at<T>(target, b, j, i);
        sum += lower * lower;
        if (r_img != nullptr)
          r_img[b * residual.stride[0] + j * residual.stride[1] + i * residual.stride[2]] =
              from_acc<T>(lower);
      }
    }
  const Acc total = block_sum(sum, t);
  if (t == 0) *partial = total;
}

// The style loss's tile of this block (blockIdx.x over tiles x tiles, image
// batch0 + blockIdx.y): its first row and column and its partial sum's
// slot. A tile below the diagonal writes a zero partial and is done.
template <typename Acc>
struct StyleTile {
  int64_t b, i0, j0;
  Acc* partial;
  bool upper;
};

template <typename Acc>
__device__ StyleTile<Acc> style_tile(Tensor1 partials, int64_t batch0, int tiles, int t) {
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  const int64_t b = batch0 + blockIdx.y;
  StyleTile<Acc> s{b, int64_t{ti} * kTile, int64_t{tj} * kTile,
                   static_cast<Acc*>(partials.data) +
                       ((b * tiles + ti) * tiles + tj) * partials.stride,
                   tj >= ti};
  if (!s.upper && t == 0) *s.partial = Acc(0);
  return s;
}

// The fused style loss's tile (ti, tj) of image b: the Gram tile as
// gram_kernel, then style_tile_epilogue; tiles below the diagonal write 0.
template <typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    style_loss_kernel(GramGeometry g, Tensor3 x, Tensor3 target, acc_t<T> gram_scale,
                      Tensor3 residual, Tensor1 partials, int64_t batch0, int tiles) {
  using Acc = acc_t<T>;
  const int t = threadIdx.y * kThreads + threadIdx.x;
  const StyleTile<Acc> s = style_tile<Acc>(partials, batch0, tiles, t);
  if (!s.upper) return;
  Acc acc[2][2] = {};
  tile_product<T, false>(acc, g, x, x, s.b, s.i0, s.j0, 0, g.L);
  style_tile_epilogue<T>(acc, g.C, target, gram_scale, residual, s.partial, s.b, s.i0, s.j0, t);
}

// Phase 2 of the split style loss (both phase-1 paths): block (tile, image)
// adds the slices of its kTile x kTile tile in order, then
// style_tile_epilogue as style_loss_kernel; tiles below the diagonal write 0.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    style_split_epilogue_kernel(GramGeometry g, Workspace slices, Tensor3 target,
                                acc_t<T> gram_scale, Tensor3 residual, Tensor1 partials,
                                int64_t batch0, int tiles) {
  using Acc = acc_t<T>;
  const int t = threadIdx.y * kThreads + threadIdx.x;
  const StyleTile<Acc> s = style_tile<Acc>(partials, batch0, tiles, t);
  if (!s.upper) return;
  Acc acc[2][2];
  sum_slices(acc, g, slices, s.b, s.i0, s.j0);
  style_tile_epilogue<T>(acc, g.C, target, gram_scale, residual, s.partial, s.b, s.i0, s.j0, t);
}

template <typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    gram_backward_kernel(GramGeometry g, Tensor3 grad_gram, Tensor3 x, acc_t<T> scale,
                         Tensor3 grad_x, int64_t batch0, int column_tiles) {
  using Acc = acc_t<T>;
  const int64_t b = batch0 + blockIdx.y;
  const int64_t i0 = int64_t{static_cast<int>(blockIdx.x) / column_tiles} * kTile;
  const int64_t j0 = int64_t{static_cast<int>(blockIdx.x) % column_tiles} * kTile;
  __shared__ Acc s_tile[kStep][kTile + 1], x_tile[kStep][kTile + 1];
  Acc acc[2][2] = {};
  const int ty = threadIdx.y, tx = threadIdx.x;
  for (int64_t k0 = 0; k0 < g.C; k0 += kStep) {
    for (int e = ty * kThreads + tx; e < kTile * kStep; e += kBlock) {
      const int r = e / kStep, k = e % kStep;  // s_tile[k][r] = dG[i0 + r, k0 + k] + its mirror
      s_tile[k][r] = i0 + r < g.C && k0 + k < g.C
                         ? at<T>(grad_gram, b, i0 + r, k0 + k) + at<T>(grad_gram, b, k0 + k, i0 + r)
                         : Acc(0);
      const int kk = e / kTile, l = e % kTile;  // x_tile[kk][l] = x[k0 + kk, j0 + l]
      x_tile[kk][l] = k0 + kk < g.C && j0 + l < g.L ? at<T>(x, b, k0 + kk, j0 + l) : Acc(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kStep; ++k)
      for (int r = 0; r < 2; ++r)
        for (int s = 0; s < 2; ++s)
          acc[r][s] += s_tile[k][ty + kThreads * r] * x_tile[k][tx + kThreads * s];
    __syncthreads();
  }
  T* out = static_cast<T*>(grad_x.data) + b * grad_x.stride[0];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + ty + kThreads * r, l = j0 + tx + kThreads * s;
      if (i < g.C && l < g.L)
        out[i * grad_x.stride[1] + l * grad_x.stride[2]] = from_acc<T>(acc[r][s] * scale);
    }
}

// ---------------------------------------------------------------------------
// Tensor cores: the GEMM core of cnnk/cuda_mma.cuh with the Gram's operand
// loaders and epilogues.

// 4 warps of 32 x 32: a warp's accumulators are exactly one kTile x kTile
// tile, the style loss's partial-sum tile.
using GramTile = Tile<64, 64, 2, 2, 3>;
static_assert(GramTile::WTM == kTile && GramTile::WTN == kTile,
              "a warp owns one style-loss partial tile");

// Where operand element (GEMM row, reduction index k) of a block's
// GramTile-row tile lives in shared memory. Normal tiles keep a GEMM row's
// k-tile contiguous (chunk q: row q / 4, chunk q % 4, elements k + u);
// transposed tiles keep a reduction index's GEMM rows contiguous (chunk q:
// reduction row q / kRowChunks, its elements GEMM rows row + u) -- the
// layouts of cnnk/implicit_gemm.h that compute_stage reads.
template <typename T, bool kTransposed>
struct OperandTile {
  static constexpr int kElems = kChunkBytes / sizeof(T);
  static constexpr int kBK = kTileBytes / sizeof(T);  // reduction elements per k-tile
  static constexpr int kRows = GramTile::BM;
  static constexpr int kRowChunks = kRows * sizeof(T) / kChunkBytes;
  static constexpr int kPer = kRows * kTileBytes / kChunkBytes / GramTile::kThreads;
  static_assert(GramTile::BM == GramTile::BN, "A and B tiles alike");
  static_assert(kRowChunks % 8 == 0, "transposed rows span whole XOR-swizzle groups");
  static_assert(kPer * GramTile::kThreads * kChunkBytes == kRows * kTileBytes, "whole chunks");
  // Chunk q's byte offset and the (GEMM row, k) of its element 0, within
  // the tile.
  __device__ static void chunk(int q, int& offset, int& row, int& k) {
    if constexpr (!kTransposed) {
      row = q >> 2, k = (q & 3) * kElems;
      offset = normal_tile_offset(row, q & 3);
    } else {
      k = q / kRowChunks, row = (q % kRowChunks) * kElems;
      offset = transposed_tile_offset(k, q % kRowChunks, kRowChunks);
    }
  }
  // Element u of a chunk: (row, k + u) or (row + u, k).
  __device__ static int row_of(int row, int u) { return kTransposed ? row + u : row; }
  __device__ static int k_of(int k, int u) { return kTransposed ? k : k + u; }
};

// v, hidden from the optimizer at this point of the k-tile loop: the
// element-wise loaders walk a chunk's elements by adding a stride, and
// without this the compiler hoists all of a chunk's offsets out of the loop
// (eight 64-bit registers per chunk: spills in the 16-bit transposed tiles).
__device__ __forceinline__ int64_t opaque(int64_t v) {
  asm volatile("" : "+l"(v));
  return v;
}

// A matrix of one image read through strides: element (row, k) at
// data[row * row_stride + k * k_stride], rows x K of them.
template <typename T>
struct Plane {
  const T* data;
  int64_t row_stride, k_stride;
  int rows, K;
};

// The tile of GEMM rows [r0, r0 + 64) of one operand: k-tiles
// [0, k_tiles) from `first`, [k_tiles, 2 k_tiles) from `second` (the
// CROSS product's second term; zero-padded past K in each), each at
// k-tile k_base + kt of its matrix (a slice of the split reduction;
// 0 unsplit). async: 16-byte
// cp.async (the host checked that the contiguous index has stride 1, its
// extent is a multiple of kElems and every chunk is 16-byte aligned, so a
// chunk is all inside or all outside); else element by element.
template <typename T, bool kTransposed>
struct PlaneLoader {
  using Layout = OperandTile<T, kTransposed>;
  Plane<T> first, second;
  int r0, k_tiles, k_base;
  bool async;

  __device__ void load(char* tile, int kt) {
    // Selected by value, field by field: an indexed pair would live in
    // local memory.
    const bool in_second = kt >= k_tiles;
    const Plane<T> p = in_second ? second : first;
    const int k0 = (k_base + (in_second ? kt - k_tiles : kt)) * Layout::kBK;
#pragma unroll
    for (int i = 0; i < Layout::kPer; ++i) {
      int offset, row, k;
      Layout::chunk(threadIdx.x + i * GramTile::kThreads, offset, row, k);
      row += r0, k += k0;
      if (async) {
        const bool inside = row < p.rows && k < p.K;
        const T* src = inside ? p.data + (row * p.row_stride + k * p.k_stride) : p.data;
        cp_async_16(tile + offset, src, inside);
        continue;
      }
      // Element u is at element + u * step, walked incrementally.
      const T* element = p.data + (row * p.row_stride + k * p.k_stride);
      const int64_t step = opaque(kTransposed ? p.row_stride : p.k_stride);
      Chunk<T> v;
#pragma unroll
      for (int u = 0; u < Layout::kElems; ++u, element += step) {
        const bool inside = Layout::row_of(row, u) < p.rows && Layout::k_of(k, u) < p.K;
        v.v[u] = inside ? __ldg(element) : zero<T>();
      }
      *reinterpret_cast<uint4*>(tile + offset) = v.bits;
    }
  }
};

// The backward's A: S[i, k] = dG[i, k] + dG[k, i] (C x C, rows [r0, r0 +
// 64)), added in the accumulator type and rounded once, element by element.
// S is symmetric, so either layout holds the same values.
template <typename T, bool kTransposed>
struct SymmetrizedLoader {
  using Layout = OperandTile<T, kTransposed>;
  const T* data;  // image b of dG
  int64_t row_stride, col_stride;
  int C, r0;

  __device__ void load(char* tile, int kt) {
#pragma unroll
    for (int i = 0; i < Layout::kPer; ++i) {
      int offset, row, k;
      Layout::chunk(threadIdx.x + i * GramTile::kThreads, offset, row, k);
      row += r0, k += kt * Layout::kBK;
      // Element u is at upper + u * step and its mirror at lower + u *
      // mirror_step, walked incrementally.
      const T* upper = data + (row * row_stride + k * col_stride);
      const T* lower = data + (k * row_stride + row * col_stride);
      const int64_t step = opaque(kTransposed ? row_stride : col_stride);
      const int64_t mirror_step = opaque(kTransposed ? col_stride : row_stride);
      Chunk<T> v;
#pragma unroll
      for (int u = 0; u < Layout::kElems; ++u, upper += step, lower += mirror_step) {
        const bool inside = Layout::row_of(row, u) < C && Layout::k_of(k, u) < C;
        v.v[u] = inside ? from_acc<T>(cuda::load(upper, 0) + cuda::load(lower, 0)) : zero<T>();
      }
      *reinterpret_cast<uint4*>(tile + offset) = v.bits;
    }
  }
};

// Runs body(row, col, value) for each of a warp's accumulators: the block
// tile's element (row, col), value the fp32 sum (cuda_mma.cuh's layout).
template <typename Body>
__device__ __forceinline__ void for_each_accumulator(const Accumulators<GramTile>& acc,
                                                     Body&& body) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp % GramTile::WM, wn = warp / GramTile::WM;
#pragma unroll
  for (int mi = 0; mi < GramTile::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < GramTile::NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        body(acc_row<GramTile>(wm, mi, e, lane), acc_col<GramTile>(wn, ni, e, lane),
             acc[mi][ni][e]);
}

// What the Gram's two operands read: rows i (A) and j (B) of x over l
// (CROSS: A = [x | o], B = [o | x] along the reduction).
struct GramMmaArgs {
  Tensor3 x, o, out;  // out: the gram, or the residual (style loss; data may be null)
  Tensor3 target;     // style loss
  Tensor1 partials;   // style loss
  float scale;        // the gram's scale (style loss: gram_scale)
  int C, L, tiles, k_tiles;  // tiles: GramTile tiles per side; k_tiles: over L
  bool async;
  // The split reduction's phase 1 (gram_slice_mma_kernel): the workspace,
  // the batch (its slice stride is B * C * C) and k-tiles per slice.
  float* slices;
  int64_t B;
  int slice_k_tiles;
};

// The Gram tile (i0, j0) of image b over k-tiles [kt_base, kt_base +
// kt_count) of L (CROSS: of both terms).
template <typename T, bool kTransposed>
__device__ __forceinline__ void gram_mma_product(Accumulators<GramTile>& acc, char* smem,
                                                 const GramMmaArgs& a, int64_t b, int i0,
                                                 int j0, bool cross, int kt_base, int kt_count) {
  // GEMM rows are channels, the reduction runs over l, whichever the tile
  // layout (kTransposed: the channels are contiguous, as in channels_last).
  auto plane = [&](const Tensor3& t) {
    return Plane<T>{static_cast<const T*>(t.data) + b * t.stride[0], t.stride[1], t.stride[2],
                    a.C, a.L};
  };
  const Plane<T> x = plane(a.x), o = plane(a.o);
  PlaneLoader<T, kTransposed> la{x, o, i0, kt_count, kt_base, a.async};
  PlaneLoader<T, kTransposed> lb{cross ? o : x, x, j0, kt_count, kt_base, a.async};
  gemm_main_loop<T, GramTile, kTransposed>(acc, smem, 0, kt_count * (cross ? 2 : 1), la, lb);
}

// This block's tile (blockIdx.x over a.tiles x a.tiles, image batch0 +
// blockIdx.y): its image and first row and column; false below the
// diagonal (nothing to compute).
__device__ __forceinline__ bool upper_mma_tile(const GramMmaArgs& a, int64_t batch0, int64_t* b,
                                               int* i0, int* j0) {
  const int ti = blockIdx.x / a.tiles, tj = blockIdx.x % a.tiles;
  *b = batch0 + blockIdx.y;
  *i0 = ti * GramTile::BM;
  *j0 = tj * GramTile::BN;
  return tj >= ti;
}

template <typename T, bool kTransposed, bool kCross>
__global__ void __launch_bounds__(GramTile::kThreads, GramTile::kMinBlocks)
    gram_mma_kernel(const __grid_constant__ GramMmaArgs a, int64_t batch0) {
  __shared__ __align__(128) char smem[GramTile::kSmemBytes];
  int64_t b;
  int i0, j0;
  if (!upper_mma_tile(a, batch0, &b, &i0, &j0)) return;
  Accumulators<GramTile> acc;
  gram_mma_product<T, kTransposed>(acc, smem, a, b, i0, j0, kCross, 0, a.k_tiles);
  T* out = static_cast<T*>(a.out.data) + b * a.out.stride[0];
  for_each_accumulator(acc, [&](int row, int col, float sum) {
    const int i = i0 + row, j = j0 + col;
    if (i >= a.C || j >= a.C || i > j) return;
    const T v = from_acc<T>(sum * a.scale);
    out[i * a.out.stride[1] + j * a.out.stride[2]] = v;
    if (i < j) out[j * a.out.stride[1] + i * a.out.stride[2]] = v;
  });
}

// Phase 1 of the split Gram and style loss on tensor cores: block (tile,
// image, slice z) runs gram_mma_kernel's product over its slice's k-tiles
// and writes the unscaled fp32 tile, every element inside C x C, to the
// workspace (cnnk/gram.h); phase 2 is the CUDA-core epilogue kernels'.
template <typename T, bool kTransposed, bool kCross>
__global__ void __launch_bounds__(GramTile::kThreads, GramTile::kMinBlocks)
    gram_slice_mma_kernel(const __grid_constant__ GramMmaArgs a, int64_t batch0) {
  __shared__ __align__(128) char smem[GramTile::kSmemBytes];
  int64_t b;
  int i0, j0;
  if (!upper_mma_tile(a, batch0, &b, &i0, &j0)) return;
  const int kt_base = static_cast<int>(blockIdx.z) * a.slice_k_tiles;
  const int kt_count = min(a.slice_k_tiles, a.k_tiles - kt_base);
  Accumulators<GramTile> acc;
  gram_mma_product<T, kTransposed>(acc, smem, a, b, i0, j0, kCross, kt_base, kt_count);
  float* out = a.slices + ((int64_t{blockIdx.z} * a.B + b) * a.C) * a.C;
  for_each_accumulator(acc, [&](int row, int col, float sum) {
    const int i = i0 + row, j = j0 + col;
    if (i < a.C && j < a.C) out[int64_t{i} * a.C + j] = sum;
  });
}

// The fused style loss: block tile (bi, bj) holds four kTile x kTile
// partial tiles, warp (wm, wn) the one at (2 bi + wm, 2 bj + wn); its sum
// in a fixed order (each lane's accumulators in order, then a butterfly
// over the lanes). Tiles below the diagonal sum nothing (every element has
// i > j): 0, as the contract wants; those past the C x C matrix (an odd
// tile count) are not written.
template <typename T, bool kTransposed>
__global__ void __launch_bounds__(GramTile::kThreads, GramTile::kMinBlocks)
    style_loss_mma_kernel(const __grid_constant__ GramMmaArgs a, int64_t batch0) {
  __shared__ __align__(128) char smem[GramTile::kSmemBytes];
  const int bi = blockIdx.x / a.tiles, bj = blockIdx.x % a.tiles;
  const int64_t b = batch0 + blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int partial_tiles = (a.C + kTile - 1) / kTile;
  const int ti = 2 * bi + warp % GramTile::WM, tj = 2 * bj + warp / GramTile::WM;
  const bool owner = lane == 0 && ti < partial_tiles && tj < partial_tiles;
  float* partial = static_cast<float*>(a.partials.data) +
                   ((b * partial_tiles + ti) * partial_tiles + tj) * a.partials.stride;
  if (bj < bi) {
    if (owner) *partial = 0.0f;
    return;
  }
  const int i0 = bi * GramTile::BM, j0 = bj * GramTile::BN;
  Accumulators<GramTile> acc;
  gram_mma_product<T, kTransposed>(acc, smem, a, b, i0, j0, false, 0, a.k_tiles);
  const T* target = static_cast<const T*>(a.target.data) + b * a.target.stride[0];
  T* residual = static_cast<T*>(a.out.data);
  if (residual != nullptr) residual += b * a.out.stride[0];
  float sum = 0.0f;
  for_each_accumulator(acc, [&](int row, int col, float value) {
    const int i = i0 + row, j = j0 + col;
    if (i >= a.C || j >= a.C || i > j) return;
    const float e = value * a.scale;
    const float upper = e - load(target, i * a.target.stride[1] + j * a.target.stride[2]);
    sum += upper * upper;
    if (residual != nullptr)
      residual[i * a.out.stride[1] + j * a.out.stride[2]] = from_acc<T>(upper);
    if (i < j) {
      const float lower = e - load(target, j * a.target.stride[1] + i * a.target.stride[2]);
      sum += lower * lower;
      if (residual != nullptr)
        residual[j * a.out.stride[1] + i * a.out.stride[2]] = from_acc<T>(lower);
    }
  });
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (owner) *partial = sum;
}

// grad_x = scale S x with S = dG + dG^T: M = C rows i, N = L columns l,
// reduction over the channels k. A = S (SymmetrizedLoader), B[k, l] =
// x[k, l] as GEMM row l, reduction k: normal tiles for channels_last x
// (channels contiguous), transposed for NCHW.
struct GramBackwardMmaArgs {
  Tensor3 grad_gram, x, grad_x;
  float scale;
  int C, L, column_tiles, k_tiles;  // k_tiles: over C
  bool async;                       // x's 16-byte path
};

template <typename T, bool kTransposed>
__global__ void __launch_bounds__(GramTile::kThreads, GramTile::kMinBlocks)
    gram_backward_mma_kernel(const __grid_constant__ GramBackwardMmaArgs a, int64_t batch0) {
  __shared__ __align__(128) char smem[GramTile::kSmemBytes];
  const int tm = blockIdx.x / a.column_tiles, tn = blockIdx.x % a.column_tiles;
  const int64_t b = batch0 + blockIdx.y;
  const int i0 = tm * GramTile::BM, l0 = tn * GramTile::BN;
  SymmetrizedLoader<T, kTransposed> la{
      static_cast<const T*>(a.grad_gram.data) + b * a.grad_gram.stride[0],
      a.grad_gram.stride[1], a.grad_gram.stride[2], a.C, i0};
  const Plane<T> x{static_cast<const T*>(a.x.data) + b * a.x.stride[0], a.x.stride[2],
                   a.x.stride[1], a.L, a.C};
  PlaneLoader<T, kTransposed> lb{x, x, l0, a.k_tiles, 0, a.async};
  Accumulators<GramTile> acc;
  gemm_main_loop<T, GramTile, kTransposed>(acc, smem, 0, a.k_tiles, la, lb);
  T* out = static_cast<T*>(a.grad_x.data) + b * a.grad_x.stride[0];
  for_each_accumulator(acc, [&](int row, int col, float sum) {
    const int i = i0 + row, l = l0 + col;
    if (i < a.C && l < a.L)
      out[i * a.grad_x.stride[1] + l * a.grad_x.stride[2]] = from_acc<T>(sum * a.scale);
  });
}

// Launches kernel(batch0) over grid (blocks, images) in batch chunks of at
// most kMaxGridY images.
template <typename Launch>
Status over_batches(int64_t batch, int64_t blocks, Launch launch) {
  if (blocks > kMaxGridX) return Status::index_overflow;
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
    const int64_t images = batch - b0 < kMaxGridY ? batch - b0 : kMaxGridY;
    launch(dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(images)), b0);
  }
  return launched();
}

template <typename T>
__device__ __forceinline__ acc_t<T> operand(Tensor1 t, int64_t i) {
  return t.data == nullptr ? acc_t<T>(0) : load(static_cast<const T*>(t.data), i * t.stride);
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    difference_dot_kernel(DifferenceGeometry g, Tensor1 u, Tensor1 v, Tensor1 a, Tensor1 b,
                          Tensor1 partials) {
  using Acc = acc_t<T>;
  const int64_t begin = int64_t{blockIdx.x} * g.chunk;
  const int64_t end = begin + g.chunk < g.N ? begin + g.chunk : g.N;
  Acc sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock)
    sum += (operand<T>(u, i) - operand<T>(v, i)) * (operand<T>(a, i) - operand<T>(b, i));
  const Acc total = block_sum(sum, threadIdx.x);
  if (threadIdx.x == 0) static_cast<Acc*>(partials.data)[blockIdx.x * partials.stride] = total;
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    sum_partials_kernel(Tensor1 partials, int64_t count, acc_t<T> scale, Tensor1 out) {
  using Acc = acc_t<T>;
  Acc sum = 0;
  for (int64_t k = threadIdx.x; k < count; k += kBlock)
    sum += static_cast<const Acc*>(partials.data)[k * partials.stride];
  const Acc total = block_sum(sum, threadIdx.x);
  if (threadIdx.x == 0) static_cast<T*>(out.data)[0] = from_acc<T>(total * scale);
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    scaled_difference_kernel(DifferenceGeometry g, Tensor1 a, Tensor1 b, Tensor1 weight,
                             acc_t<T> scale, Tensor1 out) {
  const int64_t i = int64_t{blockIdx.x} * kBlock + threadIdx.x;
  if (i >= g.N) return;
  const acc_t<T> factor = operand<T>(weight, 0) * scale;
  static_cast<T*>(out.data)[i * out.stride] =
      from_acc<T>(factor * (operand<T>(a, i) - operand<T>(b, i)));
}

// The tensor-core path takes f16, bf16 and (allow_tf32) f32 with int
// indices: l below 2^30 (C is bounded by the tile-grid check).
bool use_mma(DType dtype, const GramGeometry& g, bool allow_tf32) {
  return tensor_core_dtype(dtype, allow_tf32) && g.L <= kIntMax / 2;
}

// Transposed tiles for an operand whose GEMM rows (dimension row_dim of t,
// the other of dimensions 1 and 2 being its reduction) are the closer
// together in memory: each chunk then holds adjacent rows.
bool rows_contiguous(const Tensor3& t, int row_dim) {
  const int64_t row = t.stride[row_dim], k = t.stride[3 - row_dim];
  return (row < 0 ? -row : row) < (k < 0 ? -k : k);
}

// Whether an operand (GEMM rows along row_dim, rows x K) can be filled by
// 16-byte cp.async in the tile layout: its contiguous index (rows when
// transposed, else k) has stride 1 and whole chunks, all chunks aligned.
bool plane_async(const Tensor3& t, int row_dim, int64_t rows, int64_t K, bool transposed,
                 int elems) {
  const int64_t row_stride = t.stride[row_dim], k_stride = t.stride[3 - row_dim];
  return transposed ? vector_ready(t.data, row_stride, rows, {k_stride, t.stride[0]}, elems)
                    : vector_ready(t.data, k_stride, K, {row_stride, t.stride[0]}, elems);
}

// body(std::true_type) or body(std::false_type): a runtime flag as a
// kernel template argument.
template <typename Body>
void with_flag(bool flag, Body&& body) {
  if (flag)
    body(std::true_type{});
  else
    body(std::false_type{});
}

// The Gram's tensor-core arguments: x (and other) as the rows of both
// operands; out is the gram or the residual.
template <typename T>
GramMmaArgs gram_mma_args(const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                          Tensor3 out) {
  constexpr int kElems = kChunkBytes / sizeof(T), kBK = kTileBytes / sizeof(T);
  const bool transposed = rows_contiguous(x, 1);
  const bool async = plane_async(x, 1, g.C, g.L, transposed, kElems) &&
                     (other.data == nullptr || plane_async(other, 1, g.C, g.L, transposed, kElems));
  return {x,
          other.data != nullptr ? other : x,
          out,
          {},
          {},
          static_cast<float>(scale),
          static_cast<int>(g.C),
          static_cast<int>(g.L),
          static_cast<int>(ceil_div(g.C, GramTile::BM)),
          static_cast<int>(ceil_div(g.L, kBK)),
          async,
          nullptr,
          g.B,
          static_cast<int>(g.slice_len / kBK)};
}

template <typename T>
Status gram_mma(const GramGeometry& g, Tensor3 x, Tensor3 other, double scale, Tensor3 gram,
                cudaStream_t stream) {
  const GramMmaArgs a = gram_mma_args<T>(g, x, other, scale, gram);
  const bool transposed = rows_contiguous(x, 1), cross = other.data != nullptr;
  return over_batches(g.B, int64_t{a.tiles} * a.tiles, [&](dim3 grid, int64_t b0) {
    with_flag(transposed, [&](auto tr) {
      with_flag(cross, [&](auto cr) {
        gram_mma_kernel<T, decltype(tr)::value, decltype(cr)::value>
            <<<grid, GramTile::kThreads, 0, stream>>>(a, b0);
      });
    });
  });
}

template <typename T>
Status style_loss_mma(const GramGeometry& g, Tensor3 x, Tensor3 target, double gram_scale,
                      Tensor1 partials, Tensor3 residual, cudaStream_t stream) {
  GramMmaArgs a = gram_mma_args<T>(g, x, Tensor3{}, gram_scale, residual);
  a.target = target, a.partials = partials;
  const bool transposed = rows_contiguous(x, 1);
  return over_batches(g.B, int64_t{a.tiles} * a.tiles, [&](dim3 grid, int64_t b0) {
    with_flag(transposed, [&](auto tr) {
      style_loss_mma_kernel<T, decltype(tr)::value><<<grid, GramTile::kThreads, 0, stream>>>(
          a, b0);
    });
  });
}

// Phase 1 of the split forward (cnnk/gram.h): every upper tile's slices
// into the workspace, on tensor cores (`mma`) or the CUDA cores; the
// caller runs phase 2.
template <typename T>
Status gram_slices(const GramGeometry& g, Tensor3 x, Tensor3 other, Workspace slices, bool mma,
                   cudaStream_t stream) {
  const bool cross = other.data != nullptr;
  if constexpr (!std::is_same_v<T, double>) {
    if (mma) {
      GramMmaArgs a = gram_mma_args<T>(g, x, other, 1.0, Tensor3{});
      a.slices = static_cast<float*>(slices.data);
      const bool transposed = rows_contiguous(x, 1);
      return over_batches(g.B, int64_t{a.tiles} * a.tiles, [&](dim3 grid, int64_t b0) {
        grid.z = static_cast<unsigned>(g.splits);
        with_flag(transposed, [&](auto tr) {
          with_flag(cross, [&](auto cr) {
            gram_slice_mma_kernel<T, decltype(tr)::value, decltype(cr)::value>
                <<<grid, GramTile::kThreads, 0, stream>>>(a, b0);
          });
        });
      });
    }
  }
  const int64_t tiles = ceil_div(g.C, kTile);
  return over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
    grid.z = static_cast<unsigned>(g.splits);
    if (cross)
      gram_slice_kernel<T, true><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
          g, x, other, slices, b0, static_cast<int>(tiles));
    else
      gram_slice_kernel<T, false><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
          g, x, x, slices, b0, static_cast<int>(tiles));
  });
}

// Whether a split forward's workspace is usable: the slices fit a grid's z
// (Status::index_overflow otherwise) and the workspace holds them.
template <typename T>
Status check_slices(const GramGeometry& g, Workspace slices) {
  if (g.splits > kMaxGridZ) return Status::index_overflow;
  const int64_t elements = gram_split_workspace_elements(g.B, g.C, g.splits);
  return slices.data != nullptr && slices.bytes / sizeof(acc_t<T>) >= static_cast<size_t>(elements)
             ? Status::ok
             : Status::bad_argument;
}

template <typename T>
Status gram_backward_mma(const GramGeometry& g, Tensor3 grad_gram, Tensor3 x, double scale,
                         Tensor3 grad_x, cudaStream_t stream) {
  constexpr int kElems = kChunkBytes / sizeof(T), kBK = kTileBytes / sizeof(T);
  // B's GEMM rows are the positions l (dimension 2), its reduction the channels.
  const bool transposed = rows_contiguous(x, 2);
  const int64_t row_tiles = ceil_div(g.C, GramTile::BM), column_tiles = ceil_div(g.L, GramTile::BN);
  if (row_tiles > kMaxGridX / column_tiles) return Status::index_overflow;
  const GramBackwardMmaArgs a{grad_gram,
                              x,
                              grad_x,
                              static_cast<float>(scale),
                              static_cast<int>(g.C),
                              static_cast<int>(g.L),
                              static_cast<int>(column_tiles),
                              static_cast<int>(ceil_div(g.C, kBK)),
                              plane_async(x, 2, g.L, g.C, transposed, kElems)};
  return over_batches(g.B, row_tiles * column_tiles, [&](dim3 grid, int64_t b0) {
    with_flag(transposed, [&](auto tr) {
      gram_backward_mma_kernel<T, decltype(tr)::value><<<grid, GramTile::kThreads, 0, stream>>>(
          a, b0);
    });
  });
}

}  // namespace

Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram, Workspace workspace, bool allow_tf32, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0) return Status::ok;
  if (!gram.data || (g.L > 0 && !x.data)) return Status::bad_argument;
  const int64_t tiles = ceil_div(g.C, kTile);
  if (tiles > kIntMax / tiles) return Status::index_overflow;
  if (g.splits > 1)
    return dispatch_dtype(dtype, [&](auto type) {
      using T = typename decltype(type)::type;
      Status s = check_slices<T>(g, workspace);
      if (s == Status::ok) s = gram_slices<T>(g, x, other, workspace, use_mma(dtype, g, allow_tf32),
                                              stream);
      if (s != Status::ok) return s;
      const auto factor = static_cast<acc_t<T>>(scale);
      return over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
        gram_split_epilogue_kernel<T><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
            g, workspace, factor, gram, b0, static_cast<int>(tiles));
      });
    });
  if (use_mma(dtype, g, allow_tf32))
    return dispatch_mma_dtype(dtype, [&](auto type) {
      return gram_mma<typename decltype(type)::type>(g, x, other, scale, gram, stream);
    });
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const auto factor = static_cast<acc_t<T>>(scale);
    return over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
      if (other.data != nullptr)
        gram_kernel<T, true><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
            g, x, other, factor, gram, b0, static_cast<int>(tiles));
      else
        gram_kernel<T, false><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
            g, x, x, factor, gram, b0, static_cast<int>(tiles));
    });
  });
}

Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x, bool allow_tf32, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0 || g.L == 0) return Status::ok;
  if (!grad_gram.data || !x.data || !grad_x.data) return Status::bad_argument;
  if (use_mma(dtype, g, allow_tf32) && g.C <= kIntMax / 2)
    return dispatch_mma_dtype(dtype, [&](auto type) {
      return gram_backward_mma<typename decltype(type)::type>(g, grad_gram, x, scale, grad_x,
                                                             stream);
    });
  const int64_t row_tiles = ceil_div(g.C, kTile), column_tiles = ceil_div(g.L, kTile);
  if (column_tiles > kIntMax || row_tiles > kMaxGridX / column_tiles)
    return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const auto factor = static_cast<acc_t<T>>(scale);
    return over_batches(g.B, row_tiles * column_tiles, [&](dim3 grid, int64_t b0) {
      gram_backward_kernel<T><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
          g, grad_gram, x, factor, grad_x, b0, static_cast<int>(column_tiles));
    });
  });
}

Status style_loss(DType dtype, const StyleLossGeometry& sg, Tensor3 x, Tensor3 target,
                  double gram_scale, double loss_scale, Tensor1 partials, Tensor3 residual,
                  Tensor1 out, Workspace workspace, bool allow_tf32, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_style_geometry(sg) != Status::ok || sg.tile != kTile || !out.data)
    return Status::bad_argument;
  const GramGeometry g{sg.B, sg.C, sg.L, sg.splits, sg.slice_len};
  const bool work = g.B > 0 && g.C > 0;
  if (work && (!target.data || !partials.data || (g.L > 0 && !x.data)))
    return Status::bad_argument;
  const int64_t tiles = ceil_div(g.C, kTile);
  if (tiles > kIntMax / tiles || g.B * tiles * tiles > kIntMax) return Status::index_overflow;
  const bool mma = use_mma(dtype, g, allow_tf32);
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    Status s = Status::ok;
    if (g.splits > 1) {
      s = check_slices<T>(g, workspace);
      if (s == Status::ok) s = gram_slices<T>(g, x, Tensor3{}, workspace, mma, stream);
      if (s == Status::ok)
        s = over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
          style_split_epilogue_kernel<T><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
              g, workspace, target, static_cast<acc_t<T>>(gram_scale), residual, partials, b0,
              static_cast<int>(tiles));
        });
    } else if (mma) {
      if constexpr (!std::is_same_v<T, double>)
        s = style_loss_mma<T>(g, x, target, gram_scale, partials, residual, stream);
    } else {
      s = over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
        style_loss_kernel<T><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
            g, x, target, static_cast<acc_t<T>>(gram_scale), residual, partials, b0,
            static_cast<int>(tiles));
      });
    }
    if (s != Status::ok) return s;
    sum_partials_kernel<T><<<1, kBlock, 0, stream>>>(partials, g.B * tiles * tiles,
                                                      static_cast<acc_t<T>>(loss_scale), out);
    return launched();
  });
}

}  // namespace cnnk::cuda

namespace cnnk::cuda {

Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out,
                      cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0 || g.chunk <= 0 || !out.data || (g.N > 0 && (!u.data || !a.data || !partials.data)))
    return Status::bad_argument;
  const int64_t chunks = ceil_div(g.N, g.chunk);
  if (chunks > kMaxGridX) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if (chunks > 0)
      difference_dot_kernel<T><<<static_cast<unsigned>(chunks), kBlock, 0, stream>>>(
          g, u, v, a, b, partials);
    sum_partials_kernel<T><<<1, kBlock, 0, stream>>>(partials, chunks,
                                                      static_cast<acc_t<T>>(scale), out);
    return launched();
  });
}

Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0 || !weight.data || (g.N > 0 && (!a.data || !out.data))) return Status::bad_argument;
  if (g.N == 0) return Status::ok;
  const int64_t blocks = ceil_div(g.N, kBlock);
  if (blocks > kMaxGridX) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    scaled_difference_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
        g, a, b, weight, static_cast<acc_t<T>>(scale), out);
    return launched();
  });
}

}  // namespace cnnk::cuda
