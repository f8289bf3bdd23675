// pool2d (max and average, sliding or adaptive windows), C++ CPU kernels
// (OpenMP).
//
// Algorithm: forward, one task per (n, c) plane computes each output from its
// window (bounds from pool_window_rows/cols, so no per-tap padding test).
// Backward is a gather, one task per (n, c) plane: each input element sums
// the gradients of the windows that contain it (max: only where it is the
// window's argmax), in a fixed order, so no two tasks write one element and
// the result is deterministic. Disjoint windows (stride == kernel, no
// dilation) take the single covering window directly.
//
// Cost: memory-bound. Forward reads x once per window tap (overlapping
// windows re-read from cache) and writes y (+ 8-byte indices); backward
// reads grad_y (+ indices) once per covering window and writes grad_x.
// Elements load into float (double for float64), where the max compares
// and the average sums; float16 and bfloat16 round once on store
// (cnnk/cpu_types.h). Limits: the Python layer checks sizes and strides.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cnnk/cpu_types.h"
#include "cnnk/pool2d.h"

namespace cnnk::cpu {
namespace {

// Calls visit(p, q) for every output window containing input (h, w), in a
// fixed order: by row tap (or adaptive row), then by column.
template <typename Visit>
void for_each_covering_window(const Pool2dGeometry& g, int64_t h, int64_t w, Visit visit) {
  if (pool_windows_disjoint(g)) {
    const int64_t p = (h + g.pad_h) / g.stride_h, q = (w + g.pad_w) / g.stride_w;
    if (p < g.P && q < g.Q) visit(p, q);
    return;
  }
  if (g.adaptive) {
    const IndexRange rows = adaptive_covering_outputs(h, g.H, g.P);
    const IndexRange cols = adaptive_covering_outputs(w, g.W, g.Q);
    for (int64_t p = rows.lo; p < rows.hi; ++p)
      for (int64_t q = cols.lo; q < cols.hi; ++q) visit(p, q);
    return;
  }
  for (int64_t th = 0; th < g.kernel_h; ++th) {
    const int64_t p = sliding_covering_output(h, th, g.P, g.stride_h, g.pad_h, g.dil_h);
    if (p < 0) continue;
    for (int64_t tw = 0; tw < g.kernel_w; ++tw) {
      const int64_t q = sliding_covering_output(w, tw, g.Q, g.stride_w, g.pad_w, g.dil_w);
      if (q >= 0) visit(p, q);
    }
  }
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

// Calls body(n, c, h, w) for every input element.
template <typename Body>
void for_each_input(const Pool2dGeometry& g, Body body) {
  for_each_plane(g, [&](int64_t n, int64_t c) {
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) body(n, c, h, w);
  });
}

template <typename T>
void max_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices) {
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
}

template <typename T>
void max_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* gxp = static_cast<T*>(grad_x.data);
  for_each_input(g, [&](int64_t n, int64_t c, int64_t h, int64_t w) {
    const int64_t self = h * g.W + w;
    Acc sum = Acc(0);
    for_each_covering_window(g, h, w, [&](int64_t p, int64_t q) {
      if (ip[indices.stride.offset(n, c, p, q)] == self)
        sum += to_acc(gyp[grad_y.stride.offset(n, c, p, q)]);
    });
    gxp[grad_x.stride.offset(n, c, h, w)] = from_acc<T>(sum);
  });
}

template <typename T>
void avg_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
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
}

template <typename T>
void avg_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  T* gxp = static_cast<T*>(grad_x.data);
  for_each_input(g, [&](int64_t n, int64_t c, int64_t h, int64_t w) {
    Acc sum = Acc(0);
    for_each_covering_window(g, h, w, [&](int64_t p, int64_t q) {
      sum += to_acc(gyp[grad_y.stride.offset(n, c, p, q)]) / Acc(avg_pool_divisor(g, p, q));
    });
    gxp[grad_x.stride.offset(n, c, h, w)] = from_acc<T>(sum);
  });
}

template <typename T>
void gather(const Pool2dGeometry& g, Tensor4 x, Tensor4 indices, Tensor4 y) {
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
    max_forward<typename decltype(type)::type>(g, x, y, indices);
  });
}

Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && indices.data && grad_x.data, [&](auto type) {
    max_backward<typename decltype(type)::type>(g, grad_y, indices, grad_x);
  });
}

Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  return launch(dtype, g, x.data && y.data, [&](auto type) {
    avg_forward<typename decltype(type)::type>(g, x, y);
  });
}

Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && grad_x.data, [&](auto type) {
    avg_backward<typename decltype(type)::type>(g, grad_y, grad_x);
  });
}

Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y) {
  return launch(dtype, g, x.data && indices.data && y.data, [&](auto type) {
    gather<typename decltype(type)::type>(g, x, indices, y);
  });
}

}  // namespace cnnk::cpu
