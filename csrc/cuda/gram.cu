// gram on CUDA: the Gram matrix and its backward (contracts in cnnk/gram.h).
//
// Both kernels are classic shared-memory tiled products on the CUDA cores
// (no tensor cores: the Triton kernels, kernels/gram.py, are the tensor-core
// path); a block of 16 x 16 threads owns a 32 x 32 output tile, each thread a
// 2 x 2 register tile, and the reduction runs 32 steps at a time through
// shared memory (padded rows: no bank conflicts on the transposed reads).
//
// gram_kernel: tile (ti, tj) of one image; blocks below the diagonal return
// at once, so only the upper triangle is computed. The store writes the
// tile where i <= j and its mirror where i < j: exactly symmetric, every
// element written once. CROSS: x o^T + o x^T, two products per step.
// B * C * (C + 32) * L multiply-adds; x read once per tile row and column.
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
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
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

// The Gram tile (i0, j0) of image b, x x^T (CROSS: x o^T + o x^T), into
// each thread's 2 x 2 accumulators (rows ty + 16 r, columns tx + 16 s).
template <typename T, bool kCross>
__device__ __forceinline__ void tile_product(acc_t<T> (&acc)[2][2], const GramGeometry& g,
                                             Tensor3 x, Tensor3 o, int64_t b, int64_t i0,
                                             int64_t j0) {
  using Acc = acc_t<T>;
  __shared__ Acc xi[kStep][kTile + 1], xj[kStep][kTile + 1];
  __shared__ Acc oi[kCross ? kStep : 1][kTile + 1], oj[kCross ? kStep : 1][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  for (int64_t l0 = 0; l0 < g.L; l0 += kStep) {
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

template <typename T, bool kCross>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    gram_kernel(GramGeometry g, Tensor3 x, Tensor3 o, acc_t<T> scale, Tensor3 gram,
                int64_t batch0, int tiles) {
  using Acc = acc_t<T>;
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  if (tj < ti) return;
  const int64_t b = batch0 + blockIdx.y, i0 = int64_t{ti} * kTile, j0 = int64_t{tj} * kTile;
  Acc acc[2][2] = {};
  tile_product<T, kCross>(acc, g, x, o, b, i0, j0);
  T* out = static_cast<T*>(gram.data) + b * gram.stride[0];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      if (i >= g.C || j >= g.C || i > j) continue;
      const T v = from_acc<T>(acc[r][s] * scale);
      out[i * gram.stride[1] + j * gram.stride[2]] = v;
      if (i < j) out[j * gram.stride[1] + i * gram.stride[2]] = v;
    }
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

// The fused style loss's tile (ti, tj) of image b: the Gram tile as
// gram_kernel, then, never stored, its squared differences against the
// target (cnnk/gram.h) summed to the tile's partial; the residual if wanted.
template <typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    style_loss_kernel(GramGeometry g, Tensor3 x, Tensor3 target, acc_t<T> gram_scale,
                      Tensor3 residual, Tensor1 partials, int64_t batch0, int tiles) {
  using Acc = acc_t<T>;
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  const int64_t b = batch0 + blockIdx.y, i0 = int64_t{ti} * kTile, j0 = int64_t{tj} * kTile;
  const int t = threadIdx.y * kThreads + threadIdx.x;
  Acc* partial = static_cast<Acc*>(partials.data) +
                 ((b * tiles + ti) * tiles + tj) * partials.stride;
  if (tj < ti) {
    if (t == 0) *partial = Acc(0);
    return;
  }
  Acc acc[2][2] = {};
  tile_product<T, false>(acc, g, x, x, b, i0, j0);
  T* r_img = static_cast<T*>(residual.data);
  Acc sum = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int64_t i = i0 + threadIdx.y + kThreads * r, j = j0 + threadIdx.x + kThreads * s;
      if (i >= g.C || j >= g.C || i > j) continue;
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

}  // namespace

Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0) return Status::ok;
  if (!gram.data || (g.L > 0 && !x.data)) return Status::bad_argument;
  const int64_t tiles = ceil_div(g.C, kTile);
  if (tiles > kIntMax / tiles) return Status::index_overflow;
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
                            double scale, Tensor3 grad_x, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0 || g.L == 0) return Status::ok;
  if (!grad_gram.data || !x.data || !grad_x.data) return Status::bad_argument;
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
                  Tensor1 out, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_style_geometry(sg) != Status::ok || sg.tile != kTile || !out.data)
    return Status::bad_argument;
  const GramGeometry g{sg.B, sg.C, sg.L};
  const bool work = g.B > 0 && g.C > 0;
  if (work && (!target.data || !partials.data || (g.L > 0 && !x.data)))
    return Status::bad_argument;
  const int64_t tiles = ceil_div(g.C, kTile);
  if (tiles > kIntMax / tiles || g.B * tiles * tiles > kIntMax) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const Status s = over_batches(g.B, tiles * tiles, [&](dim3 grid, int64_t b0) {
      style_loss_kernel<T><<<grid, dim3(kThreads, kThreads), 0, stream>>>(
          g, x, target, static_cast<acc_t<T>>(gram_scale), residual, partials, b0,
          static_cast<int>(tiles));
    });
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
