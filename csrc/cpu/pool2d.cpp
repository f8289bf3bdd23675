// pool2d (max and average, sliding or adaptive windows), C++ CPU kernels
// (OpenMP).
//
// Algorithm: forward, one task per (n, c) plane computes each output from its
// window (bounds from pool_window_rows/cols, so no per-tap padding test).
// Backward, one task per (n, c) plane, so no two tasks write one element and
// the result is deterministic: max scatters each output's gradient to its
// index within the plane (outputs in order); average is a separable gather,
// each input element summing the gradients of the windows that contain it,
// columns then rows, the covering windows found as a range
// (sliding_covering_outputs), never by looping over a window's taps.
//
// Cost: memory-bound. Forward reads x once per window tap (overlapping
// windows re-read from cache) and writes y (+ 8-byte indices); max backward
// reads grad_y and the indices once and writes grad_x; average backward reads
// grad_y once per covering column window and writes grad_x.
// Elements load into float (double for float64), where the max compares
// and the average sums; float16 and bfloat16 round once on store
// (cnnk/cpu_types.h). Limits: the Python layer checks sizes and strides.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cnnk/cpu_types.h"
#include "cnnk/pool2d.h"

namespace cnnk::cpu {
namespace {

// Calls visit(o) for every output index whose window contains input index i
// along the rows (or the columns), outputs descending: the taps ascending,
// the order of a window's own sum. The loop runs over the covering windows
// only (a range, sliding_covering_outputs), never over a window's taps.
template <typename Visit>
void for_each_covering_output(const Pool2dGeometry& g, int64_t i, bool rows, Visit visit) {
  const int64_t out = rows ? g.P : g.Q, in = rows ? g.H : g.W;
  if (g.adaptive) {
    const IndexRange range = adaptive_covering_outputs(i, in, out);
    for (int64_t o = range.hi - 1; o >= range.lo; --o) visit(o);
    return;
  }
  const int64_t kernel = rows ? g.kernel_h : g.kernel_w, stride = rows ? g.stride_h : g.stride_w;
  const int64_t pad = rows ? g.pad_h : g.pad_w, dil = rows ? g.dil_h : g.dil_w;
  const IndexRange range = sliding_covering_outputs(i, out, kernel, stride, pad, dil);
  for (int64_t o = range.hi - 1; o >= range.lo; --o)
    if (dil == 1 || (i + pad - o * stride) % dil == 0) visit(o);
}

// Calls body(n, c) for every (n, c) plane, one OpenMP task each: a task owns
// its plane of the output, so no two tasks write one element (the backward
// gathers need no atomics).
template <typename Body>
void for_each_plane(const Pool2dGeometry& g, Body body) {
  const int64_t planes = g.N * g.C;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) body(nc / g.C, nc % g.C);
}

// Calls body(n, c, p, q, rows, cols) for every output element and its window.
template <typename Body>
void for_each_output_window(const Pool2dGeometry& g, Body body) {
  for_each_plane(g, [&](int64_t n, int64_t c) {
    for (int64_t p = 0; p < g.P; ++p) {
      const PoolWindow rows = pool_window_rows(g, p);
      for (int64_t q = 0; q < g.Q; ++q) body(n, c, p, q, rows, pool_window_cols(g, q));
    }
  });
}

template <typename T>
Status max_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  int64_t* ip = static_cast<int64_t*>(indices.data);
  for_each_output_window(g, [&](int64_t n, int64_t c, int64_t p, int64_t q,
                                const PoolWindow& rows, const PoolWindow& cols) {
    Acc best = -std::numeric_limits<Acc>::infinity();
    int64_t best_index = rows.start * g.W + cols.start;
    for (int64_t h = rows.start; h < rows.end; h += rows.step)
      for (int64_t w = cols.start; w < cols.end; w += cols.step) {
        const Acc v = to_acc(xp[x.stride.offset(n, c, h, w)]);
        // torch's rule: the first maximum wins; a NaN always takes over.
        if (v > best || std::isnan(v)) {
          best = v;
          best_index = h * g.W + w;
        }
      }
    yp[y.stride.offset(n, c, p, q)] = from_acc<T>(best);
    if (ip) ip[indices.stride.offset(n, c, p, q)] = best_index;
  });
  return Status::ok;
}

// A scatter: each task owns an (n, c) plane, adds every output's gradient at
// its index (outputs in order, into an accumulator plane) and writes the
// plane: O(P*Q + H*W) per plane whatever the window, deterministic, no atomics.
// Only an index inside its window counts, as in the GPU gathers: a window
// with no tap inside the input (dilation) returns -inf and an index that is
// no element of it, and its output then passes no gradient.
template <typename T>
Status max_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* gxp = static_cast<T*>(grad_x.data);
  std::vector<PoolWindow> rows(g.P), cols(g.Q);
  for (int64_t p = 0; p < g.P; ++p) rows[p] = pool_window_rows(g, p);
  for (int64_t q = 0; q < g.Q; ++q) cols[q] = pool_window_cols(g, q);
  auto inside = [](const PoolWindow& win, int64_t i) {
    return i >= win.start && i < win.end && (i - win.start) % win.step == 0;
  };
  const int64_t plane = g.H * g.W;
  return parallel_tasks<Acc>(g.N * g.C, plane, [&](int64_t nc, Acc* acc) {
    const int64_t n = nc / g.C, c = nc % g.C;
    std::fill(acc, acc + plane, Acc(0));
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t i = ip[indices.stride.offset(n, c, p, q)];
        if (i >= 0 && i < plane && inside(rows[p], i / g.W) && inside(cols[q], i % g.W))
          acc[i] += to_acc(gyp[grad_y.stride.offset(n, c, p, q)]);
      }
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w)
        gxp[grad_x.stride.offset(n, c, h, w)] = from_acc<T>(acc[h * g.W + w]);
  });
}

template <typename T>
Status avg_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  for_each_output_window(g, [&](int64_t n, int64_t c, int64_t p, int64_t q,
                                const PoolWindow& rows, const PoolWindow& cols) {
    Acc sum = Acc(0);
    for (int64_t h = rows.start; h < rows.end; h += rows.step)
      for (int64_t w = cols.start; w < cols.end; w += cols.step)
        sum += to_acc(xp[x.stride.offset(n, c, h, w)]);
    yp[y.stride.offset(n, c, p, q)] = from_acc<T>(sum / Acc(avg_pool_divisor(g, p, q)));
  });
  return Status::ok;
}

// Average backward, separable: grad_x[h, w] = sum over the windows (p, q)
// containing (h, w) of grad_y[p, q] / (row_factor[p] * col_factor[q]) (or /
// divisor_override), summed columns first into a P x W plane, then rows:
// O(P * W * covering columns + H * W * covering rows) per plane instead of
// one term per covering window.
template <typename T>
Status avg_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const bool override = g.divisor_override != 0;
  // 1 / the divisor's factors, once per output row and column (1 and 1 /
  // divisor_override with an override).
  std::vector<Acc> row_scale(g.P), col_scale(g.Q);
  for (int64_t p = 0; p < g.P; ++p)
    row_scale[p] = override ? Acc(1) / Acc(g.divisor_override)
                            : Acc(1) / Acc(avg_pool_row_factor(g, p));
  for (int64_t q = 0; q < g.Q; ++q)
    col_scale[q] = override ? Acc(1) : Acc(1) / Acc(avg_pool_col_factor(g, q));
  return parallel_tasks<Acc>(g.N * g.C, g.P * g.W, [&](int64_t nc, Acc* cols) {
    const int64_t n = nc / g.C, c = nc % g.C;
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t w = 0; w < g.W; ++w) {
        Acc sum = Acc(0);
        for_each_covering_output(g, w, false, [&](int64_t q) {
          sum += to_acc(gyp[grad_y.stride.offset(n, c, p, q)]) * col_scale[q];
        });
        cols[p * g.W + w] = sum;
      }
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) {
        Acc sum = Acc(0);
        for_each_covering_output(g, h, true, [&](int64_t p) {
          sum += cols[p * g.W + w] * row_scale[p];
        });
        gxp[grad_x.stride.offset(n, c, h, w)] = from_acc<T>(sum);
      }
  });
}

template <typename T>
Status gather(const Pool2dGeometry& g, Tensor4 x, Tensor4 indices, Tensor4 y) {
  const T* xp = static_cast<const T*>(x.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* yp = static_cast<T*>(y.data);
  const T nan = from_acc<T>(std::numeric_limits<acc_t<T>>::quiet_NaN());
  for_each_plane(g, [&](int64_t n, int64_t c) {
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t i = ip[indices.stride.offset(n, c, p, q)];
        yp[y.stride.offset(n, c, p, q)] =
            i >= 0 && i < g.H * g.W ? xp[x.stride.offset(n, c, i / g.W, i % g.W)] : nan;
      }
  });
  return Status::ok;
}

// The launchers' checks in one place, then run(TypeTag<T>) with dtype's
// element type T, unless there is nothing to compute (no element).
template <typename Run>
Status launch(DType dtype, const Pool2dGeometry& g, bool have_data, Run run) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.N * g.C == 0) return Status::ok;
  if (!have_data) return Status::bad_argument;
  return dispatch_dtype(dtype, run);
}

}  // namespace

Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices) {
  return launch(dtype, g, x.data && y.data, [&](auto type) {
    return max_forward<typename decltype(type)::type>(g, x, y, indices);
  });
}

Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && indices.data && grad_x.data, [&](auto type) {
    return max_backward<typename decltype(type)::type>(g, grad_y, indices, grad_x);
  });
}

Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  return launch(dtype, g, x.data && y.data, [&](auto type) {
    return avg_forward<typename decltype(type)::type>(g, x, y);
  });
}

Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && grad_x.data, [&](auto type) {
    return avg_backward<typename decltype(type)::type>(g, grad_y, grad_x);
  });
}

Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y) {
  return launch(dtype, g, x.data && indices.data && y.data, [&](auto type) {
    return gather<typename decltype(type)::type>(g, x, indices, y);
  });
}

}  // namespace cnnk::cpu
