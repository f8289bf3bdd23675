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
// Limits: fp32 and fp64; the Python layer checks sizes and strides.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cnnk/cpu_dispatch.h"
#include "cnnk/pool2d.h"

namespace cnnk::cpu {
namespace {

// Calls visit(p, q) for every output window containing input (h, w), in a
// fixed order: by row tap (or adaptive row), then by column.
template <typename Visit>
void for_each_covering_window(const Pool2dGeometry& g, int64_t h, int64_t w, Visit visit) {
  if (pool_windows_disjoint(g)) {
    const int64_t p = (h + g.pad_h) / g.stride_h, q = (w + g.pad_w) / g.stride_w;
    if (p < g.out_h && q < g.out_w) visit(p, q);
    return;
  }
  if (g.adaptive) {
    const IndexRange rows = adaptive_covering_outputs(h, g.in_h, g.out_h);
    const IndexRange cols = adaptive_covering_outputs(w, g.in_w, g.out_w);
    for (int64_t p = rows.lo; p < rows.hi; ++p)
      for (int64_t q = cols.lo; q < cols.hi; ++q) visit(p, q);
    return;
  }
  for (int64_t th = 0; th < g.kernel_h; ++th) {
    const int64_t p = sliding_covering_output(h, th, g.out_h, g.stride_h, g.pad_h, g.dil_h);
    if (p < 0) continue;
    for (int64_t tw = 0; tw < g.kernel_w; ++tw) {
      const int64_t q = sliding_covering_output(w, tw, g.out_w, g.stride_w, g.pad_w, g.dil_w);
      if (q >= 0) visit(p, q);
    }
  }
}

// Calls body(n, c, p, q, rows, cols) for every output element and its
// window, one OpenMP task per (n, c) plane.
template <typename Body>
void for_each_output_window(const Pool2dGeometry& g, Body body) {
  const int64_t planes = g.batch * g.channels;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / g.channels, c = nc % g.channels;
    for (int64_t p = 0; p < g.out_h; ++p) {
      const PoolWindow rows = pool_window_rows(g, p);
      for (int64_t q = 0; q < g.out_w; ++q) body(n, c, p, q, rows, pool_window_cols(g, q));
    }
  }
}

// Calls body(n, c, h, w) for every input element, one OpenMP task per (n, c)
// plane: a task owns its plane of grad_x, so the gathers need no atomics.
template <typename Body>
void for_each_input(const Pool2dGeometry& g, Body body) {
  const int64_t planes = g.batch * g.channels;
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / g.channels, c = nc % g.channels;
    for (int64_t h = 0; h < g.in_h; ++h)
      for (int64_t w = 0; w < g.in_w; ++w) body(n, c, h, w);
  }
}

template <typename T>
void max_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices) {
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  int64_t* ip = static_cast<int64_t*>(indices.data);
  for_each_output_window(g, [&](int64_t n, int64_t c, int64_t p, int64_t q,
                                const PoolWindow& rows, const PoolWindow& cols) {
    T best = -std::numeric_limits<T>::infinity();
    int64_t best_index = rows.start * g.in_w + cols.start;
    for (int64_t h = rows.start; h < rows.end; h += rows.step)
      for (int64_t w = cols.start; w < cols.end; w += cols.step) {
        const T v = xp[x.stride.offset(n, c, h, w)];
        // torch's rule: the first maximum wins; a NaN always takes over.
        if (v > best || std::isnan(v)) {
          best = v;
          best_index = h * g.in_w + w;
        }
      }
    yp[y.stride.offset(n, c, p, q)] = best;
    if (ip) ip[indices.stride.offset(n, c, p, q)] = best_index;
  });
}

template <typename T>
void max_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices, Tensor4 grad_x) {
  const T* gyp = static_cast<const T*>(grad_y.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* gxp = static_cast<T*>(grad_x.data);
  for_each_input(g, [&](int64_t n, int64_t c, int64_t h, int64_t w) {
    const int64_t self = h * g.in_w + w;
    T sum = T(0);
    for_each_covering_window(g, h, w, [&](int64_t p, int64_t q) {
      if (ip[indices.stride.offset(n, c, p, q)] == self)
        sum += gyp[grad_y.stride.offset(n, c, p, q)];
    });
    gxp[grad_x.stride.offset(n, c, h, w)] = sum;
  });
}

template <typename T>
void avg_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  for_each_output_window(g, [&](int64_t n, int64_t c, int64_t p, int64_t q,
                                const PoolWindow& rows, const PoolWindow& cols) {
    T sum = T(0);
    for (int64_t h = rows.start; h < rows.end; h += rows.step)
      for (int64_t w = cols.start; w < cols.end; w += cols.step)
        sum += xp[x.stride.offset(n, c, h, w)];
    yp[y.stride.offset(n, c, p, q)] = sum / T(avg_pool_divisor(g, p, q));
  });
}

template <typename T>
void avg_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x) {
  const T* gyp = static_cast<const T*>(grad_y.data);
  T* gxp = static_cast<T*>(grad_x.data);
  for_each_input(g, [&](int64_t n, int64_t c, int64_t h, int64_t w) {
    T sum = T(0);
    for_each_covering_window(g, h, w, [&](int64_t p, int64_t q) {
      sum += gyp[grad_y.stride.offset(n, c, p, q)] / T(avg_pool_divisor(g, p, q));
    });
    gxp[grad_x.stride.offset(n, c, h, w)] = sum;
  });
}

}  // namespace

Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.batch * g.channels == 0) return Status::ok;
  if (!x.data || !y.data) return Status::bad_argument;
  return dispatch_float_types(
      dtype, [&](auto zero) { max_forward<decltype(zero)>(g, x, y, indices); });
}

Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.batch * g.channels == 0) return Status::ok;
  if (!grad_y.data || !indices.data || !grad_x.data) return Status::bad_argument;
  return dispatch_float_types(
      dtype, [&](auto zero) { max_backward<decltype(zero)>(g, grad_y, indices, grad_x); });
}

Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.batch * g.channels == 0) return Status::ok;
  if (!x.data || !y.data) return Status::bad_argument;
  return dispatch_float_types(dtype, [&](auto zero) { avg_forward<decltype(zero)>(g, x, y); });
}

Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.batch * g.channels == 0) return Status::ok;
  if (!grad_y.data || !grad_x.data) return Status::bad_argument;
  return dispatch_float_types(
      dtype, [&](auto zero) { avg_backward<decltype(zero)>(g, grad_y, grad_x); });
}

}  // namespace cnnk::cpu
