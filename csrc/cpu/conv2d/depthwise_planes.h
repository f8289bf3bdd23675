// The depthwise algorithm's plane kernels (csrc/cpu/conv2d/depthwise.cpp),
// compiled once per instruction set (depthwise_portable.cpp,
// depthwise_avx2.cpp with -mavx2 -mfma) from depthwise_planes_impl.h and
// chosen at run time with the GEMM core's instruction set.
//
// Every plane is a row-major Acc buffer; the input plane is zero-padded so
// that no tap reads outside it. Taps are (r, s) in row-major order.
#pragma once
#include <cstdint>

namespace cnnk::cpu::depthwise {

struct PlaneGeometry {
  int64_t R, S, stride_h, stride_w, dil_h, dil_w;
};

template <typename Acc>
struct PlaneKernels {
  // out[p, q] += sum_{r,s} taps[r, s] * in[p*stride_h + r*dil_h, q*stride_w + s*dil_w]
  // over a P x Q out (row stride Q) and an in of row stride in_w.
  void (*forward)(const PlaneGeometry& pg, const Acc* in, int64_t in_w, const Acc* taps,
                  Acc* out, int64_t P, int64_t Q);
  // The forward's adjoint: acc[p*stride_h + r*dil_h, q*stride_w + s*dil_w] +=
  // taps[r, s] * grad[p, q], in p, r, s, q order; acc's row stride acc_w.
  void (*scatter)(const PlaneGeometry& pg, const Acc* grad, int64_t P, int64_t Q,
                  const Acc* taps, Acc* acc, int64_t acc_w);
  // sums[r, s] += sum_{p,q} grad[p, q] * in[p*stride_h + r*dil_h, q*stride_w + s*dil_w]
  // in an order fixed by the geometry.
  void (*weight)(const PlaneGeometry& pg, const Acc* in, int64_t in_w, const Acc* grad,
                 int64_t P, int64_t Q, Acc* sums);
  // The sum of count values, in an order fixed by count.
  Acc (*sum)(const Acc* values, int64_t count);
  // Channels_last pixels (vectorised over channels): out[c] += sum over taps
  // t with rows[t] set of taps[t * channels + c] * rows[t][c], in t order.
  void (*pixel)(const Acc* const* rows, const Acc* taps, int64_t count, int64_t channels,
                Acc* out);
  // sums[t * channels + c] += grad[c] * rows[t][c] for each tap with rows[t] set.
  void (*pixel_weight)(const Acc* const* rows, const Acc* grad, int64_t count,
                       int64_t channels, Acc* sums);
};

template <typename Acc>
PlaneKernels<Acc> portable_kernels();
#if defined(__x86_64__)
template <typename Acc>
PlaneKernels<Acc> avx2_kernels();
#endif

}  // namespace cnnk::cpu::depthwise
