// metric on CUDA: the triplet loss, row routing, distance matrices and
// batch-hard mining (contracts in cnnk/metric.h; the per-row math is the
// header's, shared with the CPU kernels).
//
// triplet_forward_kernel: a block of kWarps warps owns `chunk` triplets, a
// warp one triplet at a time: its lanes stride over D (coalesced reads of
// the three rows), the row sums meet in a butterfly shuffle (a fixed
// order), lane 0 has the distances and the hinge. A reduced loss: the
// block's losses added in row order by one thread (a partial per chunk),
// then finish_kernel (one block) adds the partials in a fixed tree order
// and divides for the mean. triplet_backward_kernel: the same warp per
// triplet, a second pass over D writing the three gradient rows.
// Memory-bound: 3 N D elements read by the forward, 6 N D read and 3 N D
// written by the backward.
//
// route_rows_kernel: a block per output row; the indices pass through
// shared memory kThreads at a time and each thread (a column of D) adds
// the matching rows in index order: N (M + D) reads, no atomics.
//
// distance_matrix_kernel: a 16 x 16 thread block owns a 32 x 32 tile (2 x 2
// per thread), x's and y's rows staged through shared memory kStep values
// of D at a time; direct differences, 3 N M D flops on the CUDA cores
// (cosine: dot products, 2 N M D flops, and the tile's squared norms).
// distance_matrix_backward_kernel: a warp per output row, its lanes over D,
// summing w_ij (own_i - other_j) over j in order; 2 N M D flops each for
// grad_x and grad_y (the second with the roles and strides swapped).
// cosine_matrix_backward_kernel: the same warps, the other rows' norms
// recomputed per block of kWarps output rows (N M D / kWarps more reads for
// grad_x, as many for grad_y) and a read-modify-write of the output row per
// kThreads other rows.
//
// mining_kernel: a warp per anchor, lanes striding over the row, then a
// shuffle reduction of (distance, index) pairs, ties to the lower index.
//
// Accumulation in float (double for double); 64-bit offsets.
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/metric.h"

namespace cnnk::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarp * kWarps;
constexpr int kTile = 32, kStep = 32, kSide = 16;  // distance-matrix tiles

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ const T* row_of(TensorN<2> t, int64_t i) {
  return static_cast<const T*>(t.data) + i * t.stride[0];
}

__device__ __forceinline__ int64_t index_at(Tensor1 t, int64_t i) {
  return static_cast<const int64_t*>(t.data)[i * t.stride];
}

template <typename A>
struct Sums {
  A ap, an, pn, aa, pp, nn;
};

// The warp's sums over one triplet's rows (every lane gets them).
template <PairForm F, typename T>
__device__ __forceinline__ Sums<acc_t<T>> row_sums(const T* a, const T* p, const T* n, int64_t D,
                                   acc_t<T> offset, acc_t<T> power, bool swap) {
  using A = acc_t<T>;
  Sums<A> s{};
#pragma unroll 1
  for (int64_t k = threadIdx.x % kWarp; k < D; k += kWarp) {
    const A x = load(a, k), y = load(p, k), z = load(n, k);
    if constexpr (F == PairForm::cosine) {
      s.ap += x * y;
      s.an += x * z;
      s.pn += y * z;
      s.aa += x * x;
      s.pp += y * y;
      s.nn += z * z;
    } else {
      s.ap += distance_term<F>(x - y + offset, power);
      s.an += distance_term<F>(x - z + offset, power);
      if (swap) s.pn += distance_term<F>(y - z + offset, power);
    }
  }
  return {warp_sum(s.ap), warp_sum(s.an), warp_sum(s.pn), warp_sum(s.aa), warp_sum(s.pp),
          warp_sum(s.nn)};
}

template <PairForm F, typename A>
__device__ __forceinline__ void distances_of(const Sums<A>& s, A power, A eps, A* d_ap, A* d_an, A* d_pn) {
  if constexpr (F == PairForm::cosine) {
    *d_ap = cosine_distance(s.ap, s.aa, s.pp, eps);
    *d_an = cosine_distance(s.an, s.aa, s.nn, eps);
    *d_pn = cosine_distance(s.pn, s.pp, s.nn, eps);
  } else {
    *d_ap = distance_of_sum<F>(s.ap, power);
    *d_an = distance_of_sum<F>(s.an, power);
    *d_pn = distance_of_sum<F>(s.pn, power);
  }
}

// The launch's settings in the accumulator type.
template <typename A>
struct Settings {
  A offset, power, eps, margin;
};

template <typename A>
Settings<A> settings_of(const TripletGeometry& g) {
  return {g.distance == Distance::euclidean ? static_cast<A>(g.eps) : A(0),
          static_cast<A>(g.p), static_cast<A>(g.eps), static_cast<A>(g.margin)};
}

// Triplet i's rows; false when excluded (a negative index).
template <typename T>
__device__ __forceinline__ bool triplet_rows(const TripletGeometry& g, TensorN<2> anchor, TensorN<2> positive,
                             TensorN<2> negative, Tensor1 pidx, Tensor1 nidx, int64_t i,
                             const T** a, const T** p, const T** n) {
  int64_t pi = i, ni = i;
  if (g.indexed) {
    pi = index_at(pidx, i);
    ni = index_at(nidx, i);
    if (pi < 0 || ni < 0) return false;
  }
  *a = row_of<T>(anchor, i);
  *p = row_of<T>(positive, pi);
  *n = row_of<T>(negative, ni);
  return true;
}

// The mean's divisor: N, or the triplets included (at least 1), counted by
// the calling warp (no barrier: every lane gets it).
__device__ __forceinline__ double mean_divisor(const TripletGeometry& g, Tensor1 pidx, Tensor1 nidx) {
  if (!g.indexed) return static_cast<double>(g.N);
  long long count = 0;
  // Not unrolled: unrolled, ptxas kept the remainder count on the stack.
#pragma unroll 1
  for (int64_t i = threadIdx.x % kWarp; i < g.N; i += kWarp)
    count += index_at(pidx, i) >= 0 && index_at(nidx, i) >= 0;
  count = warp_sum(count);
  return static_cast<double>(count > 1 ? count : 1);
}

template <typename T, PairForm F>
__global__ void __launch_bounds__(kThreads)
    triplet_forward_kernel(TripletGeometry g, TensorN<2> anchor, TensorN<2> positive,
                           TensorN<2> negative, Tensor1 pidx, Tensor1 nidx, Tensor1 partials,
                           Tensor1 loss, Settings<acc_t<T>> s) {
  using A = acc_t<T>;
  __shared__ A losses[kWarps];  // the chunk's losses (chunk == kWarps)
  const int64_t first = int64_t{blockIdx.x} * g.chunk;
  const int64_t rows = g.N - first < g.chunk ? g.N - first : g.chunk;
  const int r = threadIdx.x / kWarp;
  const int64_t i = first + r;
  const T *a, *p, *n;
  A value = 0;
  if (r < rows && triplet_rows(g, anchor, positive, negative, pidx, nidx, i, &a, &p, &n)) {
    A d_ap, d_an, d_pn;
    distances_of<F>(row_sums<F>(a, p, n, g.D, s.offset, s.power, g.swap), s.power, s.eps,
                    &d_ap, &d_an, &d_pn);
    value = triplet_row(d_ap, d_an, d_pn, g.swap, s.margin, A(0)).loss;
  }
  if (g.reduction == Reduction::none) {
    if (r < rows && threadIdx.x % kWarp == 0)
      static_cast<T*>(loss.data)[i * loss.stride] = from_acc<T>(value);
    return;
  }
  if (threadIdx.x % kWarp == 0) losses[r] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = 0;
    for (int64_t k = 0; k < rows; ++k) total += losses[k];
    static_cast<A*>(partials.data)[blockIdx.x * partials.stride] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(TripletGeometry g, Tensor1 pidx, Tensor1 nidx, Tensor1 partials, int64_t count,
                  Tensor1 loss) {
  using A = acc_t<T>;
  __shared__ A lanes[kThreads];
  A sum = 0;
  for (int64_t k = threadIdx.x; k < count; k += kThreads)
    sum += static_cast<const A*>(partials.data)[k * partials.stride];
  lanes[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) lanes[threadIdx.x] += lanes[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x >= kWarp) return;
  // The mean of no triplet is NaN (0 / 0).
  const A divisor =
      g.reduction == Reduction::mean ? static_cast<A>(mean_divisor(g, pidx, nidx)) : A(1);
  if (threadIdx.x == 0) static_cast<T*>(loss.data)[0] = from_acc<T>(lanes[0] / divisor);
}

template <typename T, PairForm F>
__global__ void __launch_bounds__(kThreads)
    triplet_backward_kernel(TripletGeometry g, Tensor1 grad, TensorN<2> anchor,
                            TensorN<2> positive, TensorN<2> negative, Tensor1 pidx, Tensor1 nidx,
                            TensorN<2> grad_anchor, TensorN<2> grad_positive,
                            TensorN<2> grad_negative, Settings<acc_t<T>> s) {
  using A = acc_t<T>;
  const A factor =
      g.reduction == Reduction::mean ? A(1) / static_cast<A>(mean_divisor(g, pidx, nidx)) : A(1);
  const int64_t i = int64_t{blockIdx.x} * g.chunk + threadIdx.x / kWarp;
  if (i >= g.N) return;
  const int lane = threadIdx.x % kWarp;
  T* ga = static_cast<T*>(grad_anchor.data) + i * grad_anchor.stride[0];
  T* gp = static_cast<T*>(grad_positive.data) + i * grad_positive.stride[0];
  T* gn = static_cast<T*>(grad_negative.data) + i * grad_negative.stride[0];
  const T *a, *p, *n;
  if (!triplet_rows(g, anchor, positive, negative, pidx, nidx, i, &a, &p, &n)) {
    for (int64_t k = lane; k < g.D; k += kWarp) ga[k] = gp[k] = gn[k] = from_acc<T>(A(0));
    return;
  }
  const Sums<A> sums = row_sums<F>(a, p, n, g.D, s.offset, s.power, g.swap);
  A d_ap, d_an, d_pn;
  distances_of<F>(sums, s.power, s.eps, &d_ap, &d_an, &d_pn);
  const TripletRow<A> row = triplet_row(
      d_ap, d_an, d_pn, g.swap, s.margin,
      factor * load(static_cast<const T*>(grad.data), i * grad.stride));
  if constexpr (F == PairForm::cosine) {
    const CosineSlope<A> ap = cosine_slope(row.c_ap, sums.ap, sums.aa, sums.pp, s.eps);
    const CosineSlope<A> an = cosine_slope(row.c_an, sums.an, sums.aa, sums.nn, s.eps);
    const CosineSlope<A> pn = cosine_slope(row.c_pn, sums.pn, sums.pp, sums.nn, s.eps);
#pragma unroll 1
    for (int64_t k = lane; k < g.D; k += kWarp) {
      const A x = load(a, k), y = load(p, k), z = load(n, k);
      ga[k] = from_acc<T>(ap.alpha_x * x + ap.beta * y + an.alpha_x * x + an.beta * z);
      gp[k] = from_acc<T>(ap.alpha_y * y + ap.beta * x + pn.alpha_x * y + pn.beta * z);
      gn[k] = from_acc<T>(an.alpha_y * z + an.beta * x + pn.alpha_y * z + pn.beta * y);
    }
  } else {
    const A w_ap = pair_scale<F>(row.c_ap, d_ap), w_an = pair_scale<F>(row.c_an, d_an);
    const A w_pn = pair_scale<F>(row.c_pn, d_pn);
#pragma unroll 1
    for (int64_t k = lane; k < g.D; k += kWarp) {
      const A x = load(a, k), y = load(p, k), z = load(n, k);
      const A s_ap = pair_slope<F>(x - y + s.offset, w_ap, d_ap, s.power);
      const A s_an = pair_slope<F>(x - z + s.offset, w_an, d_an, s.power);
      const A s_pn = g.swap ? pair_slope<F>(y - z + s.offset, w_pn, d_pn, s.power) : A(0);
      ga[k] = from_acc<T>(s_ap + s_an);
      gp[k] = from_acc<T>(s_pn - s_ap);
      gn[k] = from_acc<T>(-s_an - s_pn);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    route_rows_kernel(RouteGeometry g, TensorN<2> rows, Tensor1 index, TensorN<2> out) {
  using A = acc_t<T>;
  __shared__ int64_t chunk[kThreads];
  const int64_t r = blockIdx.x;
  for (int64_t k0 = 0; k0 < g.D; k0 += kThreads) {
    const int64_t k = k0 + threadIdx.x;
    A sum = 0;
    for (int64_t i0 = 0; i0 < g.N; i0 += kThreads) {
      const int64_t i = i0 + threadIdx.x;
      chunk[threadIdx.x] = i < g.N ? index_at(index, i) : -1;
      __syncthreads();
      const int64_t count = g.N - i0 < kThreads ? g.N - i0 : kThreads;
      if (k < g.D)
        for (int64_t e = 0; e < count; ++e)
          if (chunk[e] == r) sum += load(row_of<T>(rows, i0 + e), k);
      __syncthreads();
    }
    if (k < g.D) static_cast<T*>(out.data)[r * out.stride[0] + k] = from_acc<T>(sum);
  }
}

template <typename T>
__device__ __forceinline__ acc_t<T> at(TensorN<2> t, int64_t i, int64_t j) {
  return load(static_cast<const T*>(t.data), i * t.stride[0] + j * t.stride[1]);
}

template <typename T, bool kCosine>
__global__ void __launch_bounds__(kSide * kSide)
    distance_matrix_kernel(DistanceMatrixGeometry g, TensorN<2> x, TensorN<2> y, TensorN<2> out,
                           int64_t column_tiles) {
  using A = acc_t<T>;
  __shared__ A xs[kStep][kTile + 1], ys[kStep][kTile + 1];
  const int64_t i0 = int64_t{blockIdx.x} / column_tiles * kTile;
  const int64_t j0 = int64_t{blockIdx.x} % column_tiles * kTile;
  const int ty = threadIdx.y, tx = threadIdx.x;
  // Squared differences, or dot products and the rows' squared norms (cosine).
  A acc[2][2] = {}, xx[2] = {}, yy[2] = {};
  for (int64_t k0 = 0; k0 < g.D; k0 += kStep) {
#pragma unroll 1
    for (int e = ty * kSide + tx; e < kTile * kStep; e += kSide * kSide) {
      const int r = e / kStep, k = e % kStep;
      xs[k][r] = i0 + r < g.N && k0 + k < g.D ? at<T>(x, i0 + r, k0 + k) : A(0);
      ys[k][r] = j0 + r < g.M && k0 + k < g.D ? at<T>(y, j0 + r, k0 + k) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kStep; ++k)
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const A xv = xs[k][ty + kSide * a], yv = ys[k][tx + kSide * b];
          if constexpr (kCosine) {
            acc[a][b] += xv * yv;
          } else {
            const A u = xv - yv;
            acc[a][b] += u * u;
          }
        }
    if constexpr (kCosine)
      for (int k = 0; k < kStep; ++k)
        for (int a = 0; a < 2; ++a) {
          xx[a] += xs[k][ty + kSide * a] * xs[k][ty + kSide * a];
          yy[a] += ys[k][tx + kSide * a] * ys[k][tx + kSide * a];
        }
    __syncthreads();
  }
  const bool squared = g.distance == Distance::sqeuclidean;
  const A eps = static_cast<A>(g.eps);
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int64_t i = i0 + ty + kSide * a, j = j0 + tx + kSide * b;
      A d = acc[a][b];
      if constexpr (kCosine) {
        d = cosine_distance(d, xx[a], yy[b], eps);
      } else if (!squared) {
        d = sqrt_acc(d);
      }
      if (i < g.N && j < g.M)
        static_cast<T*>(out.data)[i * out.stride[0] + j * out.stride[1]] = from_acc<T>(d);
    }
}

// out[i] = sum_j w_ij (own_i - other_j); the (n, m) matrices through strides
// (swapped for grad_y).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    distance_matrix_backward_kernel(int64_t n, int64_t m, int64_t D, bool squared,
                                    const T* grad, int64_t gs_r, int64_t gs_c, const T* dist,
                                    int64_t ds_r, int64_t ds_c, TensorN<2> own,
                                    TensorN<2> other, TensorN<2> out) {
  using A = acc_t<T>;
  const int64_t i = int64_t{blockIdx.x} * kWarps + threadIdx.x / kWarp;
  if (i >= n) return;
  const int lane = threadIdx.x % kWarp;
  for (int64_t k0 = 0; k0 < D; k0 += kWarp) {
    const int64_t k = k0 + lane;
    const A own_k = k < D ? load(row_of<T>(own, i), k) : A(0);
    A sum = 0;
    for (int64_t j = 0; j < m; ++j) {
      const A gv = load(grad, i * gs_r + j * gs_c);
      A w;
      if (squared) {
        w = A(2) * gv;
      } else {
        const A d = load(dist, i * ds_r + j * ds_c);
        w = d == A(0) ? A(0) : gv / d;
      }
      if (k < D && w != A(0)) sum += w * (own_k - load(row_of<T>(other, j), k));
    }
    if (k < D) static_cast<T*>(out.data)[i * out.stride[0] + k] = from_acc<T>(sum);
  }
}

// The cosine's out[i] = (sum_j alpha_ij) own_i + sum_j beta_ij other_j
// (cnnk::cosine_slope_of_norms, the cosine 1 - d from the saved distances):
// a warp per output row as above; the block's warps compute the norms of
// kThreads other rows at a time into shared memory, then each warp adds that
// chunk's terms to its row of out (written by the first chunk), and own_i's
// term last.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cosine_matrix_backward_kernel(int64_t n, int64_t m, int64_t D, acc_t<T> eps, const T* grad,
                                  int64_t gs_r, int64_t gs_c, const T* dist, int64_t ds_r,
                                  int64_t ds_c, TensorN<2> own, TensorN<2> other,
                                  TensorN<2> out) {
  using A = acc_t<T>;
  __shared__ A other_norms[kThreads];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t i = int64_t{blockIdx.x} * kWarps + warp;
  const bool active = i < n;  // every warp computes norms: no early return before the barriers
  T* out_row = active ? static_cast<T*>(out.data) + i * out.stride[0] : nullptr;
  A own_norm = 0;
  if (active) {
    for (int64_t k = lane; k < D; k += kWarp) {
      const A v = load(row_of<T>(own, i), k);
      own_norm += v * v;
    }
    own_norm = sqrt_acc(warp_sum(own_norm));
  }
  A own_weight = 0;  // sum_j alpha_ij, complete after the last chunk
  for (int64_t j0 = 0; j0 < m; j0 += kThreads) {
    const int64_t count = m - j0 < kThreads ? m - j0 : kThreads;
    __syncthreads();  // the previous chunk's norms are read
    for (int r = warp * kWarp; r < (warp + 1) * kWarp && r < count; ++r) {
      A sum = 0;
      for (int64_t k = lane; k < D; k += kWarp) {
        const A v = load(row_of<T>(other, j0 + r), k);
        sum += v * v;
      }
      sum = warp_sum(sum);
      if (lane == 0) other_norms[r] = sqrt_acc(sum);
    }
    __syncthreads();
    if (!active) continue;
    for (int64_t k0 = 0; k0 < D; k0 += kWarp) {
      const int64_t k = k0 + lane;
      A sum = 0;
      for (int64_t r = 0; r < count; ++r) {
        const int64_t j = j0 + r;
        const CosineSlope<A> slope = cosine_slope_of_norms(
            load(grad, i * gs_r + j * gs_c), A(1) - load(dist, i * ds_r + j * ds_c), own_norm,
            other_norms[r], eps);
        if (k0 == 0) own_weight += slope.alpha_x;
        if (k < D && slope.beta != A(0)) sum += slope.beta * load(row_of<T>(other, j), k);
      }
      if (k < D) out_row[k] = from_acc<T>((j0 == 0 ? A(0) : load(out_row, k)) + sum);
    }
  }
  if (!active) return;
  for (int64_t k = lane; k < D; k += kWarp)
    out_row[k] = from_acc<T>((m > 0 ? load(out_row, k) : A(0)) +
                             own_weight * load(row_of<T>(own, i), k));
}

// Whether (value, index) is a better pick than (best, at): strictly harder
// (larger for the positive, smaller for the negative), or as hard at a lower
// index; index -1 is no pick.
template <typename A>
__device__ __forceinline__ bool better(A value, int64_t index, A best, int64_t at, bool largest) {
  if (index < 0) return false;
  if (at < 0) return true;
  if (value == best) return index < at;
  return largest ? value > best : value < best;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    mining_kernel(MiningGeometry g, TensorN<2> distances, Tensor1 labels, Tensor1 pidx,
                  Tensor1 nidx) {
  using A = acc_t<T>;
  const int64_t i = int64_t{blockIdx.x} * kWarps + threadIdx.x / kWarp;
  if (i >= g.N) return;
  const int64_t label = index_at(labels, i);
  A best_pos = 0, best_neg = 0;
  int64_t pos = -1, neg = -1;
  for (int64_t j = threadIdx.x % kWarp; j < g.N; j += kWarp) {
    const A d = at<T>(distances, i, j);
    if (d != d) continue;
    if (index_at(labels, j) == label) {
      if (j != i && better(d, j, best_pos, pos, true)) {
        best_pos = d;
        pos = j;
      }
    } else if (better(d, j, best_neg, neg, false)) {
      best_neg = d;
      neg = j;
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const A other_pos = __shfl_xor_sync(0xffffffffu, best_pos, offset);
    const int64_t other_pos_at = __shfl_xor_sync(0xffffffffu, pos, offset);
    const A other_neg = __shfl_xor_sync(0xffffffffu, best_neg, offset);
    const int64_t other_neg_at = __shfl_xor_sync(0xffffffffu, neg, offset);
    if (better(other_pos, other_pos_at, best_pos, pos, true)) {
      best_pos = other_pos;
      pos = other_pos_at;
    }
    if (better(other_neg, other_neg_at, best_neg, neg, false)) {
      best_neg = other_neg;
      neg = other_neg_at;
    }
  }
  if (threadIdx.x % kWarp == 0) {
    static_cast<int64_t*>(pidx.data)[i * pidx.stride] = pos;
    static_cast<int64_t*>(nidx.data)[i * nidx.stride] = neg;
  }
}

template <PairForm F>
struct FormTag {
  static constexpr PairForm value = F;
};

// Returns body(TypeTag<T>{}, FormTag<F>{}) for the launch's element type and form.
template <typename Body>
Status dispatch_form(DType dtype, PairForm form, Body body) {
  return dispatch_dtype(dtype, [&](auto type) {
    switch (form) {
      case PairForm::norm2: return body(type, FormTag<PairForm::norm2>{});
      case PairForm::norm1: return body(type, FormTag<PairForm::norm1>{});
      case PairForm::normp: return body(type, FormTag<PairForm::normp>{});
      case PairForm::squared: return body(type, FormTag<PairForm::squared>{});
      case PairForm::cosine: return body(type, FormTag<PairForm::cosine>{});
    }
    return Status::bad_argument;
  });
}

}  // namespace

Status triplet_loss_forward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                            TensorN<2> positive, TensorN<2> negative, Tensor1 positive_index,
                            Tensor1 negative_index, Tensor1 partials, Tensor1 loss,
                            cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_triplet_geometry(g) != Status::ok || g.chunk != kWarps || !loss.data ||
      !rows_contiguous({anchor, positive, negative}))
    return Status::bad_argument;
  if (g.N > 0 && (!anchor.data || !positive.data || !negative.data || !partials.data ||
                  (g.indexed && (!positive_index.data || !negative_index.data))))
    return Status::bad_argument;
  const int64_t chunks = ceil_div(g.N, g.chunk);
  if (chunks > kMaxGridX) return Status::index_overflow;
  return dispatch_form(dtype, pair_form(g.distance, g.p), [&](auto type, auto form) {
    using T = typename decltype(type)::type;
    constexpr PairForm F = decltype(form)::value;
    if (chunks > 0)
      triplet_forward_kernel<T, F><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
          g, anchor, positive, negative, positive_index, negative_index, partials, loss,
          settings_of<acc_t<T>>(g));
    if (g.reduction != Reduction::none)
      finish_kernel<T><<<1, kThreads, 0, stream>>>(g, positive_index, negative_index, partials,
                                                   chunks, loss);
    return launched();
  });
}

Status triplet_loss_backward(DType dtype, const TripletGeometry& g, Tensor1 grad,
                             TensorN<2> anchor, TensorN<2> positive, TensorN<2> negative,
                             Tensor1 positive_index, Tensor1 negative_index,
                             TensorN<2> grad_anchor, TensorN<2> grad_positive,
                             TensorN<2> grad_negative, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (check_triplet_geometry(g) != Status::ok || g.chunk != kWarps ||
      !rows_contiguous({anchor, positive, negative, grad_anchor, grad_positive, grad_negative}))
    return Status::bad_argument;
  if (g.N == 0 || g.D == 0) return Status::ok;
  if (!grad.data || !anchor.data || !positive.data || !negative.data || !grad_anchor.data ||
      !grad_positive.data || !grad_negative.data ||
      (g.indexed && (!positive_index.data || !negative_index.data)))
    return Status::bad_argument;
  const int64_t chunks = ceil_div(g.N, g.chunk);
  if (chunks > kMaxGridX) return Status::index_overflow;
  return dispatch_form(dtype, pair_form(g.distance, g.p), [&](auto type, auto form) {
    using T = typename decltype(type)::type;
    constexpr PairForm F = decltype(form)::value;
    triplet_backward_kernel<T, F><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
        g, grad, anchor, positive, negative, positive_index, negative_index, grad_anchor,
        grad_positive, grad_negative, settings_of<acc_t<T>>(g));
    return launched();
  });
}

Status route_rows(DType dtype, const RouteGeometry& g, TensorN<2> rows, Tensor1 index,
                  TensorN<2> out, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({rows, out})) return Status::bad_argument;
  if (g.M == 0 || g.D == 0) return Status::ok;
  if (!out.data || (g.N > 0 && (!rows.data || !index.data))) return Status::bad_argument;
  if (g.M > kMaxGridX) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    route_rows_kernel<T><<<static_cast<unsigned>(g.M), kThreads, 0, stream>>>(g, rows, index,
                                                                               out);
    return launched();
  });
}

Status distance_matrix_forward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> x,
                               TensorN<2> y, TensorN<2> out, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({x, y})) return Status::bad_argument;
  if (g.N == 0 || g.M == 0) return Status::ok;
  if (!out.data || (g.D > 0 && (!x.data || !y.data))) return Status::bad_argument;
  const int64_t row_tiles = ceil_div(g.N, kTile), column_tiles = ceil_div(g.M, kTile);
  if (!product_le({row_tiles, column_tiles}, kMaxGridX)) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const auto blocks = static_cast<unsigned>(row_tiles * column_tiles);
    if (g.distance == Distance::cosine)
      distance_matrix_kernel<T, true><<<blocks, dim3(kSide, kSide), 0, stream>>>(g, x, y, out,
                                                                                 column_tiles);
    else
      distance_matrix_kernel<T, false><<<blocks, dim3(kSide, kSide), 0, stream>>>(g, x, y, out,
                                                                                  column_tiles);
    return launched();
  });
}

Status distance_matrix_backward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> grad,
                                TensorN<2> x, TensorN<2> y, TensorN<2> distances,
                                TensorN<2> grad_x, TensorN<2> grad_y, cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({x, y, grad_x, grad_y}))
    return Status::bad_argument;
  if (g.D == 0) return Status::ok;
  if ((g.N > 0 && (!x.data || !grad_x.data)) || (g.M > 0 && (!y.data || !grad_y.data)) ||
      (g.N > 0 && g.M > 0 && (!grad.data || !distances.data)))
    return Status::bad_argument;
  if (ceil_div(g.N, kWarps) > kMaxGridX || ceil_div(g.M, kWarps) > kMaxGridX)
    return Status::index_overflow;
  const bool squared = g.distance == Distance::sqeuclidean;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const T* gp = static_cast<const T*>(grad.data);
    const T* dp = static_cast<const T*>(distances.data);
    // grad_x from the rows of grad, then grad_y from its columns: the same
    // kernel with the two sides (and grad's, distances' strides) swapped.
    auto both_sides = [&](auto kernel, auto setting) {
      if (g.N > 0)
        kernel<<<static_cast<unsigned>(ceil_div(g.N, kWarps)), kThreads, 0, stream>>>(
            g.N, g.M, g.D, setting, gp, grad.stride[0], grad.stride[1], dp, distances.stride[0],
            distances.stride[1], x, y, grad_x);
      if (g.M > 0)
        kernel<<<static_cast<unsigned>(ceil_div(g.M, kWarps)), kThreads, 0, stream>>>(
            g.M, g.N, g.D, setting, gp, grad.stride[1], grad.stride[0], dp, distances.stride[1],
            distances.stride[0], y, x, grad_y);
      return launched();
    };
    if (g.distance == Distance::cosine)
      return both_sides(cosine_matrix_backward_kernel<T>, static_cast<acc_t<T>>(g.eps));
    return both_sides(distance_matrix_backward_kernel<T>, squared);
  });
}

Status batch_hard_mining(DType dtype, const MiningGeometry& g, TensorN<2> distances,
                         Tensor1 labels, Tensor1 positive_index, Tensor1 negative_index,
                         cudaStream_t stream) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N < 0) return Status::bad_argument;
  if (g.N == 0) return Status::ok;
  if (!distances.data || !labels.data || !positive_index.data || !negative_index.data)
    return Status::bad_argument;
  if (ceil_div(g.N, kWarps) > kMaxGridX) return Status::index_overflow;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    mining_kernel<T><<<static_cast<unsigned>(ceil_div(g.N, kWarps)), kThreads, 0, stream>>>(
        g, distances, labels, positive_index, negative_index);
    return launched();
  });
}

}  // namespace cnnk::cuda
