// metric on the cpu: the triplet loss, row routing, distance matrices and
// batch-hard mining (contracts in cnnk/metric.h).
//
// triplet_loss_forward / _backward: a task owns `chunk` triplets; a row's
// sums over D run in kLanes independent lanes (vectorisable, a fixed
// order), then the row's distances, hinge and coefficients
// (cnnk/metric.h); the backward re-reads the row and writes its three
// gradient rows; triplet_loss_forward_backward does both in the backward's
// one pass (3 N D read, 3 N D written). The reduction adds the chunks' partials in chunk order.
// Bound: memory, 3 N D elements read by the forward, 3 N D read and 3 N D
// written by the backward (the p-norm for p other than 1 or 2 adds a pow
// per element).
//
// route_rows: a counting sort of the indices (stable, so each output row
// sums its rows in increasing i), then each output row its sum: N D reads,
// M D writes.
//
// distance_matrix_forward: each (i, j) pair by direct differences (cosine:
// its dot product, over the rows' norms computed first, (N + M) D), in
// lanes: 3 N M D flops, compute-bound; the backward: N M D multiply-adds
// for each of grad_x and grad_y (cosine: the norms first, then per pair
// the slope from the saved distance, cnnk::cosine_slope_of_norms).
//
// batch_hard_mining: one pass over each row of the (N, N) matrix.
//
// Limits: rows contiguous along D (checked); float16/bfloat16 compute in
// float.
#include <algorithm>
#include <vector>

#include "cnnk/cpu_types.h"
#include "cnnk/metric.h"

namespace cnnk::cpu {
namespace {

template <typename T>
const T* row_of(TensorN<2> t, int64_t i) {
  return static_cast<const T*>(t.data) + i * t.stride[0];
}

template <typename T>
T* mutable_row(TensorN<2> t, int64_t i) {
  return static_cast<T*>(t.data) + i * t.stride[0];
}

int64_t index_at(Tensor1 t, int64_t i) { return static_cast<const int64_t*>(t.data)[i * t.stride]; }

// The rows of triplet i: false when it is excluded (a negative index).
template <typename T>
bool triplet_rows(const TripletGeometry& g, TensorN<2> anchor, TensorN<2> positive,
                  TensorN<2> negative, Tensor1 positive_index, Tensor1 negative_index, int64_t i,
                  const T** a, const T** p, const T** n) {
  int64_t pi = i, ni = i;
  if (g.indexed) {
    pi = index_at(positive_index, i);
    ni = index_at(negative_index, i);
    if (pi < 0 || ni < 0) return false;
  }
  *a = row_of<T>(anchor, i);
  *p = row_of<T>(positive, pi);
  *n = row_of<T>(negative, ni);
  return true;
}

// The row sums of one triplet: for the difference forms the three pairs'
// sums (ap, an, pn), for cosine also the squared norms (aa, pp, nn).
template <typename A>
struct Sums {
  A ap, an, pn, aa, pp, nn;
};

// The row's sums: whole blocks of kLanes values in lanes, then the tail into
// the first lanes, then the lanes added in order. norm1 and normp take the
// same lanes element by element (abs, pow).
template <PairForm F, bool kSwap, typename T>
Sums<acc_t<T>> row_sums_of(const T* __restrict a, const T* __restrict p,
                           const T* __restrict n, int64_t D, acc_t<T> offset, acc_t<T> power) {
  using A = acc_t<T>;
  using L = Lanes<A>;
  constexpr bool kCosine = F == PairForm::cosine;
  constexpr bool kVectorTerms = kCosine || F == PairForm::norm2 || F == PairForm::squared;
  L ap, an, pn, aa, pp, nn;
  const int64_t blocked = D - D % kLanes;
  for (int64_t k0 = 0; k0 < blocked; k0 += kLanes) {
    const L x = L::load(a + k0), y = L::load(p + k0), z = L::load(n + k0);
    for (int j = 0; j < L::kParts; ++j) {
      const typename L::Part xj = x.part[j], yj = y.part[j], zj = z.part[j];
      if constexpr (kCosine) {
        ap.part[j] += xj * yj;
        an.part[j] += xj * zj;
        pn.part[j] += yj * zj;
        aa.part[j] += xj * xj;
        pp.part[j] += yj * yj;
        nn.part[j] += zj * zj;
      } else if constexpr (kVectorTerms) {
        const typename L::Part u = xj - yj + offset, v = xj - zj + offset;
        ap.part[j] += u * u;
        an.part[j] += v * v;
        if constexpr (kSwap) {
          const typename L::Part w = yj - zj + offset;
          pn.part[j] += w * w;
        }
      } else {
        for (int l = 0; l < L::kWidth; ++l) {
          ap.part[j][l] += distance_term<F>(xj[l] - yj[l] + offset, power);
          an.part[j][l] += distance_term<F>(xj[l] - zj[l] + offset, power);
          if constexpr (kSwap) pn.part[j][l] += distance_term<F>(yj[l] - zj[l] + offset, power);
        }
      }
    }
  }
  for (int64_t k = blocked; k < D; ++k) {
    const int l = static_cast<int>(k - blocked);
    const A x = to_acc(a[k]), y = to_acc(p[k]), z = to_acc(n[k]);
    if constexpr (kCosine) {
      ap[l] += x * y;
      an[l] += x * z;
      pn[l] += y * z;
      aa[l] += x * x;
      pp[l] += y * y;
      nn[l] += z * z;
    } else {
      ap[l] += distance_term<F>(x - y + offset, power);
      an[l] += distance_term<F>(x - z + offset, power);
      if constexpr (kSwap) pn[l] += distance_term<F>(y - z + offset, power);
    }
  }
  return {ap.sum(), an.sum(), pn.sum(), aa.sum(), pp.sum(), nn.sum()};
}

template <PairForm F, typename T>
Sums<acc_t<T>> row_sums(const T* a, const T* p, const T* n, int64_t D, acc_t<T> offset,
                        acc_t<T> power, bool swap) {
  return swap ? row_sums_of<F, true>(a, p, n, D, offset, power)
              : row_sums_of<F, false>(a, p, n, D, offset, power);
}

// The three distances of a triplet from its sums.
template <PairForm F, typename A>
void distances_of(const Sums<A>& s, A power, A eps, A* d_ap, A* d_an, A* d_pn) {
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

// The distance settings of a launch in the accumulator type: the p-norm's
// offset (eps; 0 for the other forms), p, and eps for the cosine's clamp.
template <typename A>
struct Settings {
  A offset, power, eps, margin;
  explicit Settings(const TripletGeometry& g)
      : offset(g.distance == Distance::euclidean ? static_cast<A>(g.eps) : A(0)),
        power(static_cast<A>(g.p)),
        eps(static_cast<A>(g.eps)),
        margin(static_cast<A>(g.margin)) {}
};

// Rows included in the mean: N, or the triplets with both indices >= 0.
int64_t included_rows(const TripletGeometry& g, Tensor1 positive_index, Tensor1 negative_index) {
  if (!g.indexed) return g.N;
  int64_t count = 0;
  for (int64_t i = 0; i < g.N; ++i)
    count += index_at(positive_index, i) >= 0 && index_at(negative_index, i) >= 0;
  return std::max<int64_t>(count, 1);
}

// A reduced loss from its chunks' partial sums, added in chunk order.
template <typename T>
void reduce_partials(const TripletGeometry& g, Tensor1 positive_index, Tensor1 negative_index,
                     Tensor1 partials, Tensor1 loss) {
  using A = acc_t<T>;
  const A* sums = static_cast<const A*>(partials.data);
  double total = 0;
  for (int64_t k = 0; k < ceil_div(g.N, g.chunk); ++k) total += sums[k * partials.stride];
  // The mean of no triplet is NaN (torch's); of no included triplet, 0.
  if (g.reduction == Reduction::mean)
    total /= static_cast<double>(included_rows(g, positive_index, negative_index));
  static_cast<T*>(loss.data)[0] = from_acc<T>(static_cast<A>(total));
}

template <typename T, PairForm F>
Status triplet_forward(const TripletGeometry& g, TensorN<2> anchor, TensorN<2> positive,
                       TensorN<2> negative, Tensor1 positive_index, Tensor1 negative_index,
                       Tensor1 partials, Tensor1 loss) {
  using A = acc_t<T>;
  const Settings<A> s(g);
  const bool reduced = g.reduction != Reduction::none;
  A* sums = static_cast<A*>(partials.data);
  T* out = static_cast<T*>(loss.data);
  const int64_t chunks = ceil_div(g.N, g.chunk);
  const Status status = parallel_tasks<A>(chunks, 0, [&](int64_t chunk, A*) {
    A total = 0;
    const int64_t end = std::min(g.N, (chunk + 1) * g.chunk);
    for (int64_t i = chunk * g.chunk; i < end; ++i) {
      const T *a, *p, *n;
      A value = 0;
      if (triplet_rows(g, anchor, positive, negative, positive_index, negative_index, i, &a, &p,
                       &n)) {
        A d_ap, d_an, d_pn;
        distances_of<F>(row_sums<F>(a, p, n, g.D, s.offset, s.power, g.swap), s.power, s.eps,
                        &d_ap, &d_an, &d_pn);
        value = triplet_row(d_ap, d_an, d_pn, g.swap, s.margin, A(0)).loss;
      }
      if (reduced)
        total += value;
      else
        out[i * loss.stride] = from_acc<T>(value);
    }
    if (reduced) sums[chunk * partials.stride] = total;
  },
      g.chunk * g.D * 3);
  if (status != Status::ok || !reduced) return status;
  reduce_partials<T>(g, positive_index, negative_index, partials, loss);
  return Status::ok;
}

// One triplet's three gradient rows, for the difference-based forms: w_..
// are pair_scale's (the hinge's coefficients over the distances).
template <PairForm F, bool kSwap, typename T, typename A>
CNNK_VECTOR_CLONES void pair_gradients(const T* __restrict a, const T* __restrict p,
                                       const T* __restrict n, int64_t D, const Settings<A>& s,
                                       A w_ap, A w_an, A w_pn, A d_ap, A d_an, A d_pn,
                                       T* __restrict ga, T* __restrict gp, T* __restrict gn) {
  for (int64_t k = 0; k < D; ++k) {
    const A x = to_acc(a[k]), y = to_acc(p[k]), z = to_acc(n[k]);
    const A s_ap = pair_slope<F>(x - y + s.offset, w_ap, d_ap, s.power);
    const A s_an = pair_slope<F>(x - z + s.offset, w_an, d_an, s.power);
    const A s_pn = kSwap ? pair_slope<F>(y - z + s.offset, w_pn, d_pn, s.power) : A(0);
    ga[k] = from_acc<T>(s_ap + s_an);
    gp[k] = from_acc<T>(s_pn - s_ap);
    gn[k] = from_acc<T>(-s_an - s_pn);
  }
}

template <typename T, typename A>
CNNK_VECTOR_CLONES void cosine_gradients(const T* __restrict a, const T* __restrict p,
                                         const T* __restrict n, int64_t D, CosineSlope<A> ap,
                                         CosineSlope<A> an, CosineSlope<A> pn,
                                         T* __restrict ga, T* __restrict gp,
                                         T* __restrict gn) {
  for (int64_t k = 0; k < D; ++k) {
    const A x = to_acc(a[k]), y = to_acc(p[k]), z = to_acc(n[k]);
    ga[k] = from_acc<T>(ap.alpha_x * x + ap.beta * y + an.alpha_x * x + an.beta * z);
    gp[k] = from_acc<T>(ap.alpha_y * y + ap.beta * x + pn.alpha_x * y + pn.beta * z);
    gn[k] = from_acc<T>(an.alpha_y * z + an.beta * x + pn.alpha_y * z + pn.beta * y);
  }
}

// The gradients of the rows for the incoming gradient `grad` (null: 1 for
// every triplet); with kLoss also the loss, as triplet_forward writes it.
template <typename T, PairForm F, bool kLoss>
Status triplet_backward(const TripletGeometry& g, Tensor1 grad, TensorN<2> anchor,
                        TensorN<2> positive, TensorN<2> negative, Tensor1 positive_index,
                        Tensor1 negative_index, Tensor1 partials, Tensor1 loss,
                        TensorN<2> grad_anchor, TensorN<2> grad_positive,
                        TensorN<2> grad_negative) {
  using A = acc_t<T>;
  const Settings<A> s(g);
  const bool reduced = g.reduction != Reduction::none;
  const A factor =
      g.reduction == Reduction::mean
          ? A(1) / static_cast<A>(included_rows(g, positive_index, negative_index))
          : A(1);
  const T* grads = static_cast<const T*>(grad.data);
  const Status status = parallel_tasks<A>(ceil_div(g.N, g.chunk), 0, [&](int64_t chunk, A*) {
    A total = 0;
    const int64_t end = std::min(g.N, (chunk + 1) * g.chunk);
    for (int64_t i = chunk * g.chunk; i < end; ++i) {
      T* ga = mutable_row<T>(grad_anchor, i);
      T* gp = mutable_row<T>(grad_positive, i);
      T* gn = mutable_row<T>(grad_negative, i);
      const T *a, *p, *n;
      if (!triplet_rows(g, anchor, positive, negative, positive_index, negative_index, i, &a, &p,
                        &n)) {
        std::fill(ga, ga + g.D, from_acc<T>(A(0)));
        std::fill(gp, gp + g.D, from_acc<T>(A(0)));
        std::fill(gn, gn + g.D, from_acc<T>(A(0)));
        if (kLoss && !reduced) static_cast<T*>(loss.data)[i * loss.stride] = from_acc<T>(A(0));
        continue;
      }
      const Sums<A> sums = row_sums<F>(a, p, n, g.D, s.offset, s.power, g.swap);
      A d_ap, d_an, d_pn;
      distances_of<F>(sums, s.power, s.eps, &d_ap, &d_an, &d_pn);
      const TripletRow<A> row = triplet_row(
          d_ap, d_an, d_pn, g.swap, s.margin,
          grads ? factor * to_acc(grads[i * grad.stride]) : factor);
      if constexpr (kLoss) {
        if (reduced)
          total += row.loss;
        else
          static_cast<T*>(loss.data)[i * loss.stride] = from_acc<T>(row.loss);
      }
      if constexpr (F == PairForm::cosine) {
        cosine_gradients(a, p, n, g.D, cosine_slope(row.c_ap, sums.ap, sums.aa, sums.pp, s.eps),
                         cosine_slope(row.c_an, sums.an, sums.aa, sums.nn, s.eps),
                         cosine_slope(row.c_pn, sums.pn, sums.pp, sums.nn, s.eps), ga, gp, gn);
      } else if (g.swap) {
        pair_gradients<F, true>(a, p, n, g.D, s, pair_scale<F>(row.c_ap, d_ap),
                                pair_scale<F>(row.c_an, d_an), pair_scale<F>(row.c_pn, d_pn),
                                d_ap, d_an, d_pn, ga, gp, gn);
      } else {
        pair_gradients<F, false>(a, p, n, g.D, s, pair_scale<F>(row.c_ap, d_ap),
                                 pair_scale<F>(row.c_an, d_an), A(0), d_ap, d_an, d_pn, ga, gp,
                                 gn);
      }
    }
    if (kLoss && reduced) static_cast<A*>(partials.data)[chunk * partials.stride] = total;
  },
      g.chunk * g.D * 6);
  if (kLoss && reduced && status == Status::ok)
    reduce_partials<T>(g, positive_index, negative_index, partials, loss);
  return status;
}

// Runs body.template operator()<T, F>() for the launch's element type and form.
template <typename Body>
Status dispatch_form(DType dtype, PairForm form, Body body) {
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    switch (form) {
      case PairForm::norm2: return body.template operator()<T, PairForm::norm2>();
      case PairForm::norm1: return body.template operator()<T, PairForm::norm1>();
      case PairForm::normp: return body.template operator()<T, PairForm::normp>();
      case PairForm::squared: return body.template operator()<T, PairForm::squared>();
      case PairForm::cosine: return body.template operator()<T, PairForm::cosine>();
    }
    return Status::bad_argument;
  });
}

}  // namespace

Status triplet_loss_forward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                            TensorN<2> positive, TensorN<2> negative, Tensor1 positive_index,
                            Tensor1 negative_index, Tensor1 partials, Tensor1 loss) {
  if (check_triplet_geometry(g) != Status::ok || !loss.data ||
      !rows_contiguous({anchor, positive, negative}))
    return Status::bad_argument;
  if (g.N > 0 && (!anchor.data || !positive.data || !negative.data || !partials.data ||
                  (g.indexed && (!positive_index.data || !negative_index.data))))
    return Status::bad_argument;
  return dispatch_form(dtype, pair_form(g.distance, g.p), [&]<typename T, PairForm F>() {
    return triplet_forward<T, F>(g, anchor, positive, negative, positive_index, negative_index,
                                 partials, loss);
  });
}

Status triplet_loss_backward(DType dtype, const TripletGeometry& g, Tensor1 grad,
                             TensorN<2> anchor, TensorN<2> positive, TensorN<2> negative,
                             Tensor1 positive_index, Tensor1 negative_index,
                             TensorN<2> grad_anchor, TensorN<2> grad_positive,
                             TensorN<2> grad_negative) {
  if (check_triplet_geometry(g) != Status::ok ||
      !rows_contiguous({anchor, positive, negative, grad_anchor, grad_positive, grad_negative}))
    return Status::bad_argument;
  if (g.N == 0 || g.D == 0) return Status::ok;
  if (!grad.data || !anchor.data || !positive.data || !negative.data || !grad_anchor.data ||
      !grad_positive.data || !grad_negative.data ||
      (g.indexed && (!positive_index.data || !negative_index.data)))
    return Status::bad_argument;
  return dispatch_form(dtype, pair_form(g.distance, g.p), [&]<typename T, PairForm F>() {
    return triplet_backward<T, F, false>(g, grad, anchor, positive, negative, positive_index,
                                         negative_index, {}, {}, grad_anchor, grad_positive,
                                         grad_negative);
  });
}

Status triplet_loss_forward_backward(DType dtype, const TripletGeometry& g, TensorN<2> anchor,
                                     TensorN<2> positive, TensorN<2> negative,
                                     Tensor1 positive_index, Tensor1 negative_index,
                                     Tensor1 partials, Tensor1 loss, TensorN<2> grad_anchor,
                                     TensorN<2> grad_positive, TensorN<2> grad_negative) {
  // Without columns there are no gradients to write: the forward alone.
  if (g.N == 0 || g.D == 0)
    return triplet_loss_forward(dtype, g, anchor, positive, negative, positive_index,
                                negative_index, partials, loss);
  if (check_triplet_geometry(g) != Status::ok || !loss.data || !partials.data ||
      !rows_contiguous({anchor, positive, negative, grad_anchor, grad_positive, grad_negative}))
    return Status::bad_argument;
  if (!anchor.data || !positive.data || !negative.data || !grad_anchor.data ||
      !grad_positive.data || !grad_negative.data ||
      (g.indexed && (!positive_index.data || !negative_index.data)))
    return Status::bad_argument;
  return dispatch_form(dtype, pair_form(g.distance, g.p), [&]<typename T, PairForm F>() {
    return triplet_backward<T, F, true>(g, {}, anchor, positive, negative, positive_index,
                                        negative_index, partials, loss, grad_anchor,
                                        grad_positive, grad_negative);
  });
}

Status route_rows(DType dtype, const RouteGeometry& g, TensorN<2> rows, Tensor1 index,
                  TensorN<2> out) {
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({rows, out})) return Status::bad_argument;
  if (g.M == 0 || g.D == 0) return Status::ok;
  if (!out.data || (g.N > 0 && (!rows.data || !index.data))) return Status::bad_argument;
  // Counting sort: the rows of each output row r are order[first[r] .. first[r + 1]).
  std::vector<int64_t> first(g.M + 1, 0), order(g.N);
  for (int64_t i = 0; i < g.N; ++i) {
    const int64_t r = index_at(index, i);
    if (r >= g.M) return Status::bad_argument;
    if (r >= 0) ++first[r + 1];
  }
  for (int64_t r = 0; r < g.M; ++r) first[r + 1] += first[r];
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  for (int64_t i = 0; i < g.N; ++i) {
    const int64_t r = index_at(index, i);
    if (r >= 0) order[next[r]++] = i;
  }
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    using A = acc_t<T>;
    return parallel_tasks<A>(g.M, g.D, [&](int64_t r, A* sum) {
      std::fill(sum, sum + g.D, A(0));
      for (int64_t e = first[r]; e < first[r + 1]; ++e) {
        const T* row = row_of<T>(rows, order[e]);
        for (int64_t k = 0; k < g.D; ++k) sum[k] += to_acc(row[k]);
      }
      T* o = mutable_row<T>(out, r);
      for (int64_t k = 0; k < g.D; ++k) o[k] = from_acc<T>(sum[k]);
    },
        g.D * (1 + g.N / std::max<int64_t>(g.M, 1)));
  });
}

namespace {

// sum_k (x_k - y_k)^2, or with kDot sum_k x_k y_k, in lanes (cnnk/cpu_types.h).
template <bool kDot, typename T>
acc_t<T> pair_sum(const T* __restrict x, const T* __restrict y, int64_t D) {
  using A = acc_t<T>;
  using L = Lanes<A>;
  L lanes;
  const int64_t blocked = D - D % kLanes;
  for (int64_t k0 = 0; k0 < blocked; k0 += kLanes) {
    const L u = L::load(x + k0), v = L::load(y + k0);
    for (int j = 0; j < L::kParts; ++j) {
      if constexpr (kDot) {
        lanes.part[j] += u.part[j] * v.part[j];
      } else {
        const typename L::Part d = u.part[j] - v.part[j];
        lanes.part[j] += d * d;
      }
    }
  }
  for (int64_t k = blocked; k < D; ++k) {
    const A u = to_acc(x[k]), v = to_acc(y[k]);
    lanes[static_cast<int>(k - blocked)] += kDot ? u * v : (u - v) * (u - v);
  }
  return lanes.sum();
}

// The squared norms of t's `rows` rows (the cosine's).
template <typename T>
std::vector<acc_t<T>> squared_norms(TensorN<2> t, int64_t rows, int64_t D) {
  std::vector<acc_t<T>> norms(rows);
  for (int64_t i = 0; i < rows; ++i) norms[i] = pair_sum<true>(row_of<T>(t, i), row_of<T>(t, i), D);
  return norms;
}

// The weight of pair (i, j) in the distance matrix's backward: grad / d
// (0 where d = 0) for the Euclidean distance, 2 grad for the squared one.
template <typename A>
A pair_weight(Distance distance, A grad, A d) {
  if (distance == Distance::sqeuclidean) return A(2) * grad;
  return d == A(0) ? A(0) : grad / d;
}

template <typename T>
T element(TensorN<2> t, int64_t i, int64_t j) {
  return static_cast<const T*>(t.data)[i * t.stride[0] + j * t.stride[1]];
}

// out_row = sum over the other side's rows j of w(j) (own - other_j), in j order.
template <typename T, typename Weight>
void weighted_differences(const T* own, TensorN<2> other, int64_t count, int64_t D,
                          Weight weight, acc_t<T>* sum, T* out_row) {
  using A = acc_t<T>;
  std::fill(sum, sum + D, A(0));
  for (int64_t j = 0; j < count; ++j) {
    const A w = weight(j);
    if (w == A(0)) continue;
    const T* y = row_of<T>(other, j);
    for (int64_t k = 0; k < D; ++k) sum[k] += w * (to_acc(own[k]) - to_acc(y[k]));
  }
  for (int64_t k = 0; k < D; ++k) out_row[k] = from_acc<T>(sum[k]);
}

// out_row = sum over the other side's rows j of alpha_j own + beta_j other_j,
// (alpha_j, beta_j) = slope(j) the cosine's (alpha_x, beta) of pair (own,
// other_j): the other rows in j order, own once with the alphas' sum.
template <typename T, typename Slope>
void cosine_rows(const T* own, TensorN<2> other, int64_t count, int64_t D, Slope slope,
                 acc_t<T>* sum, T* out_row) {
  using A = acc_t<T>;
  std::fill(sum, sum + D, A(0));
  A own_weight = 0;
  for (int64_t j = 0; j < count; ++j) {
    const CosineSlope<A> s = slope(j);
    own_weight += s.alpha_x;
    if (s.beta == A(0)) continue;
    const T* y = row_of<T>(other, j);
    for (int64_t k = 0; k < D; ++k) sum[k] += s.beta * to_acc(y[k]);
  }
  for (int64_t k = 0; k < D; ++k) out_row[k] = from_acc<T>(own_weight * to_acc(own[k]) + sum[k]);
}

// The cosine matrix's backward (the norms computed once, N + M rows).
template <typename T>
Status cosine_matrix_backward(const DistanceMatrixGeometry& g, TensorN<2> grad, TensorN<2> x,
                              TensorN<2> y, TensorN<2> distances, TensorN<2> grad_x,
                              TensorN<2> grad_y) {
  using A = acc_t<T>;
  const A eps = static_cast<A>(g.eps);
  std::vector<A> x_norms = squared_norms<T>(x, g.N, g.D), y_norms = squared_norms<T>(y, g.M, g.D);
  for (A& n : x_norms) n = sqrt_acc(n);
  for (A& n : y_norms) n = sqrt_acc(n);
  // c = grad, the cosine 1 - d; the slope along the row of the side being written.
  auto slope = [&](int64_t i, int64_t j, A own_norm, A other_norm) {
    return cosine_slope_of_norms(to_acc(element<T>(grad, i, j)),
                                 A(1) - to_acc(element<T>(distances, i, j)), own_norm,
                                 other_norm, eps);
  };
  const Status s = parallel_tasks<A>(g.N, g.D, [&](int64_t i, A* sum) {
    cosine_rows(row_of<T>(x, i), y, g.M, g.D,
                [&](int64_t j) { return slope(i, j, x_norms[i], y_norms[j]); }, sum,
                mutable_row<T>(grad_x, i));
  },
      2 * g.M * g.D);
  if (s != Status::ok) return s;
  return parallel_tasks<A>(g.M, g.D, [&](int64_t j, A* sum) {
    cosine_rows(row_of<T>(y, j), x, g.N, g.D,
                [&](int64_t i) { return slope(i, j, y_norms[j], x_norms[i]); }, sum,
                mutable_row<T>(grad_y, j));
  },
      2 * g.N * g.D);
}

}  // namespace

Status distance_matrix_forward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> x,
                               TensorN<2> y, TensorN<2> out) {
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({x, y})) return Status::bad_argument;
  if (g.N == 0 || g.M == 0) return Status::ok;
  if (!out.data || (g.D > 0 && (!x.data || !y.data))) return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    using A = acc_t<T>;
    const A eps = static_cast<A>(g.eps);
    std::vector<A> x_norms, y_norms;  // squared, for the cosine
    if (g.distance == Distance::cosine) {
      x_norms = squared_norms<T>(x, g.N, g.D);
      y_norms = squared_norms<T>(y, g.M, g.D);
    }
    return parallel_tasks<A>(g.N, 0, [&](int64_t i, A*) {
      const T* xi = row_of<T>(x, i);
      T* o = static_cast<T*>(out.data) + i * out.stride[0];
      for (int64_t j = 0; j < g.M; ++j) {
        const T* yj = row_of<T>(y, j);
        A d;
        if (g.distance == Distance::cosine) {
          d = cosine_distance(pair_sum<true>(xi, yj, g.D), x_norms[i], y_norms[j], eps);
        } else {
          d = pair_sum<false>(xi, yj, g.D);
          if (g.distance == Distance::euclidean) d = sqrt_acc(d);
        }
        o[j * out.stride[1]] = from_acc<T>(d);
      }
    },
        3 * g.M * g.D);
  });
}

Status distance_matrix_backward(DType dtype, const DistanceMatrixGeometry& g, TensorN<2> grad,
                                TensorN<2> x, TensorN<2> y, TensorN<2> distances,
                                TensorN<2> grad_x, TensorN<2> grad_y) {
  if (g.N < 0 || g.M < 0 || g.D < 0 || !rows_contiguous({x, y, grad_x, grad_y}))
    return Status::bad_argument;
  if (g.D == 0) return Status::ok;
  if ((g.N > 0 && (!x.data || !grad_x.data)) || (g.M > 0 && (!y.data || !grad_y.data)) ||
      (g.N > 0 && g.M > 0 && (!grad.data || !distances.data)))
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    using A = acc_t<T>;
    if (g.distance == Distance::cosine)
      return cosine_matrix_backward<T>(g, grad, x, y, distances, grad_x, grad_y);
    auto weight = [&](int64_t i, int64_t j) {
      return pair_weight(g.distance, to_acc(element<T>(grad, i, j)),
                         to_acc(element<T>(distances, i, j)));
    };
    const Status s = parallel_tasks<A>(g.N, g.D, [&](int64_t i, A* sum) {
      weighted_differences(row_of<T>(x, i), y, g.M, g.D, [&](int64_t j) { return weight(i, j); },
                           sum, mutable_row<T>(grad_x, i));
    },
        2 * g.M * g.D);
    if (s != Status::ok) return s;
    // d(x_i - y_j)/dy_j = -1: the same sum from y's side, negated by swapping the roles.
    return parallel_tasks<A>(g.M, g.D, [&](int64_t j, A* sum) {
      weighted_differences(row_of<T>(y, j), x, g.N, g.D, [&](int64_t i) { return weight(i, j); },
                           sum, mutable_row<T>(grad_y, j));
    },
        2 * g.N * g.D);
  });
}

Status batch_hard_mining(DType dtype, const MiningGeometry& g, TensorN<2> distances,
                         Tensor1 labels, Tensor1 positive_index, Tensor1 negative_index) {
  if (g.N < 0) return Status::bad_argument;
  if (g.N == 0) return Status::ok;
  if (!distances.data || !labels.data || !positive_index.data || !negative_index.data)
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    using A = acc_t<T>;
    return parallel_tasks<A>(g.N, 0, [&](int64_t i, A*) {
      const int64_t label = index_at(labels, i);
      int64_t hardest_positive = -1, hardest_negative = -1;
      A largest = 0, smallest = 0;
      for (int64_t j = 0; j < g.N; ++j) {
        const A d = to_acc(element<T>(distances, i, j));
        if (d != d) continue;
        if (index_at(labels, j) == label) {
          if (j != i && (hardest_positive < 0 || d > largest)) {
            hardest_positive = j;
            largest = d;
          }
        } else if (hardest_negative < 0 || d < smallest) {
          hardest_negative = j;
          smallest = d;
        }
      }
      static_cast<int64_t*>(positive_index.data)[i * positive_index.stride] = hardest_positive;
      static_cast<int64_t*>(negative_index.data)[i * negative_index.stride] = hardest_negative;
    },
        2 * g.N);
  });
}

}  // namespace cnnk::cpu
