// conv2d's fused activation, backward, CUDA kernel: the gradient of the
// pre-activation z = conv + bias + residual, which is also the residual's
// gradient, for every algorithm (cnnk/conv2d.h's epilogue):
//   grad_z[n, k, p, q] = activation_grad(grad_y, saved, activation)
// with `saved` the forward output (relu, relu6) or z (silu).
//
// conv2d_activation_grad_kernel<T>: one thread per element, grid-stride,
// elements in grad_z's memory order (channels fastest for channels_last,
// columns fastest otherwise) so that the usual layouts load and store
// coalesced; every tensor through its strides. The activation is uniform
// over the grid (no divergence). Memory-bound: reads grad_y and saved,
// writes grad_z once (3 element transfers per element; 2 without an
// activation); f16/bf16/f32 compute in float, f64 in double.
// Limits: the element count fits int (the indices are split with 32-bit
// divisions; else Status::index_overflow); offsets are int64.
#include <cstdint>

#include "cnnk/conv2d.h"
#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"

namespace cnnk {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 32;  // H100: 132 SMs; the grid strides past this

struct ActGradArgs {
  Tensor4 gy, saved, gz;
  int64_t E;
  int K, P, Q;
  bool channels_fast;  // grad_z is channels_last: k is the fastest index
  Activation act;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) conv2d_activation_grad_kernel(const ActGradArgs a) {
  const T* gy = static_cast<const T*>(a.gy.data);
  const T* sv = static_cast<const T*>(a.saved.data);
  T* gz = static_cast<T*>(a.gz.data);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < a.E;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int i = static_cast<int>(e);
    int n, k, p, q, rest;
    if (a.channels_fast) {
      k = i % a.K, rest = i / a.K;
      q = rest % a.Q, rest /= a.Q;
      p = rest % a.P, n = rest / a.P;
    } else {
      q = i % a.Q, rest = i / a.Q;
      p = rest % a.P, rest /= a.P;
      k = rest % a.K, n = rest / a.K;
    }
    const acc_t<T> grad = load(gy, a.gy.stride.offset(n, k, p, q));
    const acc_t<T> at =
        a.act == Activation::none ? acc_t<T>(0) : load(sv, a.saved.stride.offset(n, k, p, q));
    gz[a.gz.stride.offset(n, k, p, q)] = from_acc<T>(activation_grad(grad, at, a.act));
  }
}

}  // namespace

Status conv2d_activation_grad(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                              Tensor4 saved, Tensor4 grad_z, cudaStream_t stream) {
  if (Status s = check_activation_grad_launch(g, grad_y, saved, grad_z); s != Status::ok)
    return s;
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (g.N == 0) return Status::ok;
  if (!product_le({g.N, g.K, g.P, g.Q}, kIntMax)) return Status::index_overflow;
  ActGradArgs a{};
  a.gy = grad_y, a.saved = saved, a.gz = grad_z;
  a.E = g.N * g.K * g.P * g.Q;
  a.K = static_cast<int>(g.K), a.P = static_cast<int>(g.P), a.Q = static_cast<int>(g.Q);
  a.channels_fast = grad_z.stride.c == 1 && g.K > 1;
  a.act = g.activation;
  const int64_t blocks = ceil_div(a.E, kThreads);
  const unsigned grid = static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
  return dispatch_dtype(dtype, [&](auto type) {
    conv2d_activation_grad_kernel<typename decltype(type)::type>
        <<<grid, kThreads, 0, stream>>>(a);
    return launched();
  });
}

}  // namespace cuda
}  // namespace cnnk
