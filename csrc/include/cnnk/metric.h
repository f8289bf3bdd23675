// metric: the losses of metric learning (the course notes' face
// verification: Siamese networks trained with the triplet loss). The
// geometries the Python ops pass (cnnkernels/ops/metric.py, field for
// field), the per-row math every backend shares (host and device) and the
// launchers of the CPU and CUDA kernels.
//
// Shapes: embeddings are rows of D values, each row contiguous (stride 1
// along D; the Python side copies otherwise), rows at any stride (0 for a
// broadcast row).
//
//   triplet_loss_forward    per triplet i: the distances d(a_i, p_i),
//                           d(a_i, n_i) (and d(p_i, n_i) with swap), the
//                           hinge max(margin + d_ap - d_neg, 0) and the
//                           reduction (none: one loss per row; sum / mean:
//                           partial sums of `chunk` rows, added in chunk
//                           order, so the result is deterministic).
//                           indexed: p_i = positive[positive_index[i]] and
//                           n_i = negative[negative_index[i]]; a row whose
//                           index is negative is excluded (loss 0, and the
//                           mean divides by the rows included, at least 1).
//   triplet_loss_backward   grad_anchor, grad_positive, grad_negative
//                           (N, D), row i the derivative of the reduced
//                           loss along triplet i's rows (zero rows for
//                           excluded triplets).
//   route_rows              out[r] = sum of rows[i] over i with
//                           index[i] == r, in increasing i (the backward of
//                           the indexed rows: deterministic, no atomics).
//   distance_matrix_forward out[i, j] = d(x_i, y_j): Euclidean or squared by
//                           direct differences (exact at d = 0), cosine
//                           from x_i.y_j and the rows' norms.
//   distance_matrix_backward
//                           Euclidean / squared: grad_x[i] = sum_j w_ij
//                           (x_i - y_j), grad_y[j] = -sum_i w_ij (x_i - y_j),
//                           w = grad / d (0 where d = 0) or 2 grad. Cosine
//                           (cosine_slope_of_norms, c = grad, the cosine
//                           1 - d read from `distances`): grad_x[i] =
//                           (sum_j alpha_x,ij) x_i + sum_j beta_ij y_j, and
//                           grad_y[j] the same with the roles swapped.
//   batch_hard_mining       per anchor i: the hardest positive (the largest
//                           distance to a j != i of i's label) and the
//                           hardest negative (the smallest to a j of another
//                           label), ties to the lowest j, -1 for none; NaN
//                           distances are never chosen.
#pragma once

#include <initializer_list>

#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk {

// The distance between two embeddings. euclidean: torch's pairwise_distance,
// ||x - y + eps||_p (the triplet loss; the distance matrix takes p = 2 and
// eps = 0, torch.cdist); sqeuclidean: ||x - y||_2^2 (the course notes'
// triplet loss); cosine: 1 - x.y / (max(||x||, eps) max(||y||, eps)).
enum class Distance : int { euclidean = 0, sqeuclidean = 1, cosine = 2 };
enum class Reduction : int { none = 0, mean = 1, sum = 2 };

struct TripletGeometry {
  int64_t N, D;  // triplets, embedding size
  Distance distance;
  double p, eps, margin;
  bool swap;
  Reduction reduction;
  bool indexed;
  int64_t chunk;  // rows per partial sum
};

// route_rows: rows (N, D) into a table of M rows.
struct RouteGeometry {
  int64_t N, M, D;
};

// distance_matrix: x (N, D) against y (M, D); distance euclidean (p = 2,
// no eps: torch.cdist), sqeuclidean or cosine (eps: the norms' clamp, read
// by cosine only).
struct DistanceMatrixGeometry {
  int64_t N, M, D;
  Distance distance;
  double eps;
};

// batch_hard_mining: an (N, N) distance matrix and N labels.
struct MiningGeometry {
  int64_t N;
};

// How one distance is computed, fixed per launch (the kernels' template
// argument): the p-norm split by p for speed, or the other distances.
enum class PairForm : int { norm2 = 0, norm1 = 1, normp = 2, squared = 3, cosine = 4 };

inline PairForm pair_form(Distance distance, double p) {
  if (distance == Distance::sqeuclidean) return PairForm::squared;
  if (distance == Distance::cosine) return PairForm::cosine;
  return p == 2.0 ? PairForm::norm2 : p == 1.0 ? PairForm::norm1 : PairForm::normp;
}

// Whether every given 2-D tensor's rows are contiguous (stride 1 along D;
// a null tensor, an empty one, passes).
inline bool rows_contiguous(std::initializer_list<TensorN<2>> tensors) {
  for (const TensorN<2>& t : tensors)
    if (t.data != nullptr && t.stride[1] != 1) return false;
  return true;
}

inline Status check_triplet_geometry(const TripletGeometry& g) {
  const bool ok = g.N >= 0 && g.D >= 0 && g.chunk > 0 && g.p > 0 && g.margin == g.margin;
  return ok ? Status::ok : Status::bad_argument;
}

CNNK_HOST_DEVICE float pow_acc(float v, float e) { return powf(v, e); }
CNNK_HOST_DEVICE double pow_acc(double v, double e) { return pow(v, e); }
CNNK_HOST_DEVICE float sqrt_acc(float v) { return sqrtf(v); }
CNNK_HOST_DEVICE double sqrt_acc(double v) { return sqrt(v); }

template <typename A>
CNNK_HOST_DEVICE A abs_acc(A v) {
  return v < A(0) ? -v : v;
}

template <typename A>
CNNK_HOST_DEVICE A sign_acc(A v) {
  return v > A(0) ? A(1) : v < A(0) ? A(-1) : A(0);
}

// A difference's term of a distance's sum (not for cosine, which sums dot
// products).
template <PairForm F, typename A>
CNNK_HOST_DEVICE A distance_term(A u, A p) {
  if constexpr (F == PairForm::norm1) return abs_acc(u);
  if constexpr (F == PairForm::normp) return u == A(0) ? A(0) : pow_acc(abs_acc(u), p);
  return u * u;
}

// The distance from its sum (the p-norm's root).
template <PairForm F, typename A>
CNNK_HOST_DEVICE A distance_of_sum(A sum, A p) {
  if constexpr (F == PairForm::norm2) return sqrt_acc(sum);
  if constexpr (F == PairForm::normp) return pow_acc(sum, A(1) / p);
  return sum;
}

// Cosine distance from the dot product and both squared norms.
template <typename A>
CNNK_HOST_DEVICE A cosine_distance(A dot, A xx, A yy, A eps) {
  const A nx = sqrt_acc(xx), ny = sqrt_acc(yy);
  return A(1) - dot / ((nx > eps ? nx : eps) * (ny > eps ? ny : eps));
}

// c times the derivative of d(x, y) along x_k, for the difference-based
// forms: u = x_k - y_k (+ eps), d the pair's distance; the derivative along
// y_k is its negative. `scale` is pair_scale's: c / d for the 2-norm, 2 c
// squared, c otherwise. torch's norm backward: 0 where d = 0 (and for p < 1
// where u = 0).
template <PairForm F, typename A>
CNNK_HOST_DEVICE A pair_scale(A c, A d) {
  if constexpr (F == PairForm::norm2) return d == A(0) ? A(0) : c / d;
  if constexpr (F == PairForm::squared) return A(2) * c;
  return c;
}

template <PairForm F, typename A>
CNNK_HOST_DEVICE A pair_slope(A u, A scale, A d, A p) {
  if constexpr (F == PairForm::norm1) return scale * sign_acc(u);
  if constexpr (F == PairForm::normp) {
    if (u == A(0) || d == A(0)) return A(0);
    return scale * sign_acc(u) * pow_acc(abs_acc(u) / d, p - A(1));
  }
  return scale * u;
}

// c times the derivative of the cosine distance: along x it is
// alpha_x x + beta y, along y alpha_y y + beta x (a norm below eps is
// clamped, a constant).
template <typename A>
struct CosineSlope {
  A alpha_x, alpha_y, beta;
};

// From the (clamped) cosine and the norms nx = ||x||, ny = ||y||.
template <typename A>
CNNK_HOST_DEVICE CosineSlope<A> cosine_slope_of_norms(A c, A cosine, A nx, A ny, A eps) {
  const A mx = nx >= eps ? nx : eps, my = ny >= eps ? ny : eps;
  // torch's clamp_min passes the gradient where the norm equals eps.
  return {nx >= eps ? c * cosine / (mx * nx) : A(0), ny >= eps ? c * cosine / (my * ny) : A(0),
          -c / (mx * my)};
}

// From the dot product and both squared norms.
template <typename A>
CNNK_HOST_DEVICE CosineSlope<A> cosine_slope(A c, A dot, A xx, A yy, A eps) {
  const A nx = sqrt_acc(xx), ny = sqrt_acc(yy);
  const A mx = nx >= eps ? nx : eps, my = ny >= eps ? ny : eps;
  return cosine_slope_of_norms(c, dot / (mx * my), nx, ny, eps);
}

// One triplet's loss and the coefficients of its distances in the
// derivative: c_ap, c_an, c_pn = grad * d(loss)/d(d_..). The hinge passes
// the gradient where margin + d_ap - d_neg >= 0 (torch's clamp_min); with
// swap, d_neg = min(d_an, d_pn), a tie splitting the gradient in half
// (torch's minimum).
template <typename A>
struct TripletRow {
  A loss, c_ap, c_an, c_pn;
};

template <typename A>
CNNK_HOST_DEVICE TripletRow<A> triplet_row(A d_ap, A d_an, A d_pn, bool swap, A margin, A grad) {
  const A d_neg = swap && d_pn < d_an ? d_pn : d_an;
  const A z = margin + d_ap - d_neg;
  TripletRow<A> row{z < A(0) ? A(0) : z, A(0), A(0), A(0)};  // NaN stays NaN
  if (!(z >= A(0))) return row;
  row.c_ap = grad;
  if (!swap || d_an < d_pn) {
    row.c_an = -grad;
  } else if (d_pn < d_an) {
    row.c_pn = -grad;
  } else {
    row.c_an = row.c_pn = -grad / A(2);
  }
  return row;
}

namespace cpu {
// positive_index / negative_index: int64, null unless g.indexed; partials:
// ceil(N / chunk) accumulators (float, double for float64); loss: (N,) for
// reduction none, else one value.
Status triplet_loss_forward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                            TensorN<2> positive, TensorN<2> negative, Tensor1 positive_index,
                            Tensor1 negative_index, Tensor1 partials, Tensor1 loss);
// grad: (N,) values at stride grad.stride (0 for a reduced loss's one value).
Status triplet_loss_backward(DType dtype, const TripletGeometry& g, Tensor1 grad,
                             TensorN<2> anchor, TensorN<2> positive, TensorN<2> negative,
                             Tensor1 positive_index, Tensor1 negative_index,
                             TensorN<2> grad_anchor, TensorN<2> grad_positive,
                             TensorN<2> grad_negative);
// The loss (as triplet_loss_forward) and, in the same pass, the rows'
// gradients for an incoming gradient of 1 per triplet (of the reduced loss:
// of 1): what the reverse mode needs, computed while the rows are read once.
Status triplet_loss_forward_backward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                                     TensorN<2> positive, TensorN<2> negative,
                                     Tensor1 positive_index, Tensor1 negative_index,
                                     Tensor1 partials, Tensor1 loss, TensorN<2> grad_anchor,
                                     TensorN<2> grad_positive, TensorN<2> grad_negative);
Status route_rows(DType dtype, const RouteGeometry& g, TensorN<2> rows, Tensor1 index,
                  TensorN<2> out);
Status distance_matrix_forward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> x,
                               TensorN<2> y, TensorN<2> out);
Status distance_matrix_backward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> grad,
                                TensorN<2> x, TensorN<2> y, TensorN<2> distances,
                                TensorN<2> grad_x, TensorN<2> grad_y);
Status batch_hard_mining(DType dtype, const MiningGeometry& g, TensorN<2> distances,
                         Tensor1 labels, Tensor1 positive_index, Tensor1 negative_index);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Same contracts as the CPU launchers; work is queued on `stream`.
Status triplet_loss_forward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                            TensorN<2> positive, TensorN<2> negative, Tensor1 positive_index,
                            Tensor1 negative_index, Tensor1 partials, Tensor1 loss,
                            cudaStream_t stream);
Status triplet_loss_backward(DType dtype, const TripletGeometry& g, Tensor1 grad,
                             TensorN<2> anchor, TensorN<2> positive, TensorN<2> negative,
                             Tensor1 positive_index, Tensor1 negative_index,
                             TensorN<2> grad_anchor, TensorN<2> grad_positive,
                             TensorN<2> grad_negative, cudaStream_t stream);
Status route_rows(DType dtype, const RouteGeometry& g, TensorN<2> rows, Tensor1 index,
                  TensorN<2> out, cudaStream_t stream);
Status distance_matrix_forward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> x,
                               TensorN<2> y, TensorN<2> out, cudaStream_t stream);
Status distance_matrix_backward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> grad,
                                TensorN<2> x, TensorN<2> y, TensorN<2> distances,
                                TensorN<2> grad_x, TensorN<2> grad_y, cudaStream_t stream);
Status batch_hard_mining(DType dtype, const MiningGeometry& g, TensorN<2> distances,
                         Tensor1 labels, Tensor1 positive_index, Tensor1 negative_index,
                         cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
