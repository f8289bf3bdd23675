// conv2d's fused activation, backward, C++ CPU kernel (OpenMP): the gradient
// of the pre-activation z = conv + bias + residual, which is also the
// residual's gradient, for every algorithm (cnnk/conv2d.h's epilogue):
//   grad_z[n, k, p, q] = activation_grad(grad_y, saved, activation)
// with `saved` the forward output (relu, relu6) or z (silu).
//
// Elementwise over the output (N, K, P, Q) of g, every tensor through its
// strides. Tasks are the (n, p) output rows; within a row the channels run
// innermost when every tensor's channels are contiguous (channels_last),
// else the columns do (NCHW), so the inner loop is unit-stride for the usual
// layouts. Memory-bound: reads grad_y and saved, writes grad_z once;
// fp16/bf16 compute in float, fp64 in double.
#include "cnnk/conv2d.h"
#include "cnnk/cpu_types.h"

namespace cnnk::cpu {
namespace {

template <typename T>
Status activation_grad_rows(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 saved,
                            Tensor4 grad_z) {
  const T* gy = static_cast<const T*>(grad_y.data);
  const T* sv = static_cast<const T*>(saved.data);
  T* gz = static_cast<T*>(grad_z.data);
  const Activation act = g.activation;
  const bool channels_inner = grad_y.stride.c == 1 && grad_z.stride.c == 1 &&
                              (sv == nullptr || saved.stride.c == 1);
  auto element = [&](int64_t n, int64_t k, int64_t p, int64_t q) {
    const acc_t<T> grad = to_acc(gy[grad_y.stride.offset(n, k, p, q)]);
    const acc_t<T> at = sv ? to_acc(sv[saved.stride.offset(n, k, p, q)]) : acc_t<T>(0);
    gz[grad_z.stride.offset(n, k, p, q)] = from_acc<T>(activation_grad(grad, at, act));
  };
  return parallel_tasks<char>(
      g.N * g.P, 0,
      [&](int64_t np, char*) {
        const int64_t n = np / g.P, p = np % g.P;
        if (channels_inner) {
          for (int64_t q = 0; q < g.Q; ++q)
            for (int64_t k = 0; k < g.K; ++k) element(n, k, p, q);
        } else {
          for (int64_t k = 0; k < g.K; ++k)
            for (int64_t q = 0; q < g.Q; ++q) element(n, k, p, q);
        }
      },
      g.K * g.Q);
}

}  // namespace

Status conv2d_activation_grad(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                              Tensor4 saved, Tensor4 grad_z) {
  if (Status s = check_activation_grad_launch(g, grad_y, saved, grad_z);
      s != Status::ok || g.N == 0)
    return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return activation_grad_rows<typename decltype(type)::type>(g, grad_y, saved, grad_z);
  });
}

}  // namespace cnnk::cpu
