// The depthwise plane kernels (depthwise_planes.h), included once per
// instruction set: everything here has internal linkage, so each file's
// copy keeps its own compiler flags. The loops over an output row run in V
// independent lanes, written with GCC's vector extension (one ymm register
// of fp32 with AVX2; the compiler splits it for narrower sets: left to
// itself it fully unrolls 8-lane loops and re-vectorises them only in part),
// with the taps in registers; 3x3 and 5x5 filters at stride 1 and 2 (dilation 1)
// are specialised at compile time, everything else takes the general loops.
// Each output sums its taps in (r, s) order, each weight sum runs its lanes
// and then adds them in lane order: results depend only on the geometry.
#pragma once
#include <algorithm>
#include <cstring>

#include "depthwise_planes.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace cnnk::cpu::depthwise {
namespace {

constexpr int64_t V = 8;

template <typename Acc>
struct VecOf {
  typedef Acc type __attribute__((vector_size(V * sizeof(Acc))));
};
template <typename Acc>
using Vec = typename VecOf<Acc>::type;

// V values from p, p + stride, ... (unaligned). Always inlined: a vector
// wider than the instruction set's registers has no agreed calling
// convention, which GCC's -Wpsabi warns of (moot with no call left; the
// warning is off for this file).
template <typename Acc>
[[gnu::always_inline]] inline Vec<Acc> load(const Acc* p, int64_t stride) {
  Vec<Acc> v;
  if (stride == 1) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (int64_t l = 0; l < V; ++l) v[l] = p[l * stride];
  }
  return v;
}

template <typename Acc>
[[gnu::always_inline]] inline void store(Acc* p, typename VecOf<Acc>::type v) {
  std::memcpy(p, &v, sizeof v);
}

// R, S, SH, SW > 0: compile-time filter and stride (dilation 1); 0: read pg.
template <typename Acc, int R_, int S_, int SH_, int SW_>
void forward_plane(const PlaneGeometry& pg, const Acc* in, int64_t in_w, const Acc* taps,
                   Acc* out, int64_t P, int64_t Q) {
  constexpr bool fixed = R_ > 0;
  const int64_t R = fixed ? R_ : pg.R, S = fixed ? S_ : pg.S;
  const int64_t SH = fixed ? SH_ : pg.stride_h, SW = fixed ? SW_ : pg.stride_w;
  const int64_t DH = fixed ? 1 : pg.dil_h, DW = fixed ? 1 : pg.dil_w;
  Acc w[fixed ? R_ * S_ : 1];
  if constexpr (fixed) std::copy(taps, taps + R_ * S_, w);
  const Acc* wt = fixed ? w : taps;
  for (int64_t p = 0; p < P; ++p) {
    const Acc* rows = in + p * SH * in_w;
    Acc* orow = out + p * Q;
    int64_t q = 0;
    for (; q + V <= Q; q += V) {
      Vec<Acc> o = load(orow + q, 1);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          o += wt[r * S + s] * load(rows + r * DH * in_w + s * DW + q * SW, SW);
      store(orow + q, o);
    }
    for (; q < Q; ++q) {
      Acc o = orow[q];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) o += wt[r * S + s] * rows[r * DH * in_w + s * DW + q * SW];
      orow[q] = o;
    }
  }
}

template <typename Acc>
void scatter_plane(const PlaneGeometry& pg, const Acc* grad, int64_t P, int64_t Q,
                   const Acc* taps, Acc* acc, int64_t acc_w) {
  for (int64_t p = 0; p < P; ++p) {
    const Acc* grow = grad + p * Q;
    for (int64_t r = 0; r < pg.R; ++r) {
      Acc* arow = acc + (p * pg.stride_h + r * pg.dil_h) * acc_w;
      for (int64_t s = 0; s < pg.S; ++s) {
        const Acc wv = taps[r * pg.S + s];
        Acc* a = arow + s * pg.dil_w;
        for (int64_t q = 0; q < Q; ++q) a[q * pg.stride_w] += wv * grow[q];
      }
    }
  }
}

// The lanes of every tap at once (fixed filters: R*S*V accumulators).
template <typename Acc, int R, int S, int SH, int SW>
void weight_plane_fixed(const PlaneGeometry&, const Acc* in, int64_t in_w, const Acc* grad,
                        int64_t P, int64_t Q, Acc* sums) {
  Vec<Acc> lanes[R * S] = {};
  Acc tail[R * S] = {};
  for (int64_t p = 0; p < P; ++p) {
    const Acc* rows = in + p * SH * in_w;
    const Acc* grow = grad + p * Q;
    int64_t q = 0;
    for (; q + V <= Q; q += V) {
      const Vec<Acc> gv = load(grow + q, 1);
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) lanes[r * S + s] += gv * load(rows + r * in_w + s + q * SW, SW);
    }
    for (; q < Q; ++q)
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) tail[r * S + s] += grow[q] * rows[r * in_w + s + q * SW];
  }
  for (int t = 0; t < R * S; ++t) {
    Acc total = tail[t];
    for (int64_t l = 0; l < V; ++l) total += lanes[t][l];
    sums[t] += total;
  }
}

// Tap by tap (any filter): one pass over the plane per tap.
template <typename Acc>
void weight_plane_general(const PlaneGeometry& pg, const Acc* in, int64_t in_w,
                          const Acc* grad, int64_t P, int64_t Q, Acc* sums) {
  for (int64_t r = 0; r < pg.R; ++r)
    for (int64_t s = 0; s < pg.S; ++s) {
      Vec<Acc> lanes = {};
      Acc tail = Acc(0);
      for (int64_t p = 0; p < P; ++p) {
        const Acc* xr = in + (p * pg.stride_h + r * pg.dil_h) * in_w + s * pg.dil_w;
        const Acc* grow = grad + p * Q;
        int64_t q = 0;
        for (; q + V <= Q; q += V)
          lanes += load(grow + q, 1) * load(xr + q * pg.stride_w, pg.stride_w);
        for (; q < Q; ++q) tail += grow[q] * xr[q * pg.stride_w];
      }
      for (int64_t l = 0; l < V; ++l) tail += lanes[l];
      sums[r * pg.S + s] += tail;
    }
}

template <typename Acc>
Acc sum_values(const Acc* values, int64_t count) {
  Vec<Acc> lanes = {};
  int64_t i = 0;
  for (; i + V <= count; i += V) lanes += load(values + i, 1);
  Acc total = Acc(0);
  for (; i < count; ++i) total += values[i];
  for (int64_t l = 0; l < V; ++l) total += lanes[l];
  return total;
}

template <typename Acc>
void pixel_taps(const Acc* const* rows, const Acc* taps, int64_t count, int64_t channels,
                Acc* out) {
  int64_t c = 0;
  for (; c + V <= channels; c += V) {
    Vec<Acc> o = load(out + c, 1);
    for (int64_t t = 0; t < count; ++t)
      if (rows[t] != nullptr) o += load(taps + t * channels + c, 1) * load(rows[t] + c, 1);
    store(out + c, o);
  }
  for (; c < channels; ++c) {
    Acc o = out[c];
    for (int64_t t = 0; t < count; ++t)
      if (rows[t] != nullptr) o += taps[t * channels + c] * rows[t][c];
    out[c] = o;
  }
}

template <typename Acc>
void pixel_weight(const Acc* const* rows, const Acc* grad, int64_t count, int64_t channels,
                  Acc* sums) {
  for (int64_t t = 0; t < count; ++t) {
    if (rows[t] == nullptr) continue;
    const Acc* x = rows[t];
    Acc* s = sums + t * channels;
    int64_t c = 0;
    for (; c + V <= channels; c += V)
      store(s + c, load(s + c, 1) + load(grad + c, 1) * load(x + c, 1));
    for (; c < channels; ++c) s[c] += grad[c] * x[c];
  }
}

// The specialisation for pg, or the general kernel.
#define CNNK_DEPTHWISE_SPECIALISED(pg, kernel, general, ...)                                 \
  do {                                                                                       \
    if ((pg).dil_h == 1 && (pg).dil_w == 1 && (pg).R == (pg).S &&                            \
        (pg).stride_h == (pg).stride_w && ((pg).R == 3 || (pg).R == 5) &&                    \
        ((pg).stride_h == 1 || (pg).stride_h == 2)) {                                        \
      const int which = ((pg).R == 3 ? 0 : 2) + ((pg).stride_h == 1 ? 0 : 1);               \
      switch (which) {                                                                       \
        case 0: return kernel<Acc, 3, 3, 1, 1>(__VA_ARGS__);                                 \
        case 1: return kernel<Acc, 3, 3, 2, 2>(__VA_ARGS__);                                 \
        case 2: return kernel<Acc, 5, 5, 1, 1>(__VA_ARGS__);                                 \
        default: return kernel<Acc, 5, 5, 2, 2>(__VA_ARGS__);                                \
      }                                                                                      \
    }                                                                                        \
    return general(__VA_ARGS__);                                                             \
  } while (0)

template <typename Acc>
void forward_dispatch(const PlaneGeometry& pg, const Acc* in, int64_t in_w, const Acc* taps,
                      Acc* out, int64_t P, int64_t Q) {
  CNNK_DEPTHWISE_SPECIALISED(pg, forward_plane, (forward_plane<Acc, 0, 0, 0, 0>), pg, in, in_w,
                             taps, out, P, Q);
}

template <typename Acc>
void weight_dispatch(const PlaneGeometry& pg, const Acc* in, int64_t in_w, const Acc* grad,
                     int64_t P, int64_t Q, Acc* sums) {
  CNNK_DEPTHWISE_SPECIALISED(pg, weight_plane_fixed, weight_plane_general<Acc>, pg, in, in_w,
                             grad, P, Q, sums);
}

template <typename Acc>
PlaneKernels<Acc> plane_kernels() {
  return {&forward_dispatch<Acc>, &scatter_plane<Acc>, &weight_dispatch<Acc>, &sum_values<Acc>,
          &pixel_taps<Acc>,       &pixel_weight<Acc>};
}

}  // namespace
}  // namespace cnnk::cpu::depthwise

#pragma GCC diagnostic pop

#define CNNK_DEPTHWISE_PLANE_KERNELS(name)                           \
  namespace cnnk::cpu::depthwise {                                   \
  template <>                                                        \
  PlaneKernels<float> name<float>() {                                \
    return plane_kernels<float>();                                   \
  }                                                                  \
  template <>                                                        \
  PlaneKernels<double> name<double>() {                              \
    return plane_kernels<double>();                                  \
  }                                                                  \
  }
