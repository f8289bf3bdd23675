// Helpers shared by the C++ (CPU) and CUDA kernels: portability macros, the
// codes that cross into Python (status, element type, fused activation), the
// tensor arguments of every launcher and small index math.
// No libtorch: everything here is plain C++ that nvcc and g++ both accept.
//
// The enums are the one definition of their codes: pyext/ exports them to
// Python (cnnkernels._C.Status, DType, Activation), which reads them from
// there (cnnkernels/_ext.py).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define CNNK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNK_HOST_DEVICE inline
#endif

namespace cnnk {

// Returned by every launcher; the bindings turn anything but ok into a Python
// exception carrying status_message().
enum class Status : int {
  ok = 0,
  bad_argument = 1,       // sizes or parameters a launcher cannot handle
  unsupported_dtype = 2,
  index_overflow = 3,     // an offset does not fit the kernel's index type
  cuda_error = 4,         // a CUDA runtime call or launch failed
  out_of_memory = 5,      // the kernel's host scratch memory could not be allocated
};

inline const char* status_message(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::bad_argument: return "the kernel rejected its arguments";
    case Status::unsupported_dtype: return "the kernel does not support this dtype";
    case Status::index_overflow: return "an index does not fit the kernel's index type";
    case Status::cuda_error: return "a CUDA call or kernel launch failed";
    case Status::out_of_memory: return "not enough host memory for the kernel's scratch";
  }
  return "unknown status";
}

// Element types, named as torch names its dtypes (torch.float16, ...).
enum class DType : int { float16 = 0, bfloat16 = 1, float32 = 2, float64 = 3 };

// The accumulator type of an element type: float for float16, bfloat16 and
// float32 (CPU and CUDA storage types alike), double for double.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

// Activations fused into epilogues.
enum class Activation : int { none = 0, relu = 1, relu6 = 2, silu = 3 };

// e^v for the accumulator types, on the host and on the device.
CNNK_HOST_DEVICE float exp_acc(float v) { return expf(v); }
CNNK_HOST_DEVICE double exp_acc(double v) { return exp(v); }

// Activation applied to an accumulator, as torch computes relu (clamp at 0),
// relu6 (hardtanh to [0, 6]) and silu (v / (1 + e^-v)): a NaN passes
// through, never becomes 0; e^-v overflowing to infinity gives silu -0 for
// a large negative v and NaN for -inf, as torch's.
template <typename T>
CNNK_HOST_DEVICE T apply_activation(T v, Activation act) {
  if (act == Activation::relu) return v < T(0) ? T(0) : v;
  if (act == Activation::relu6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  if (act == Activation::silu) return v / (T(1) + exp_acc(-v));
  return v;
}

// grad through the activation, from `saved` (the activation's output y for
// relu and relu6, its input z for silu), selected as torch's backward
// kernels select it (a NaN grad where the activation is flat becomes 0; the
// kinks take 0): relu (threshold_backward) passes grad unless y <= 0, so a
// NaN y passes it; relu6 (hardtanh_backward, vectorised) passes it only
// where 0 < y < 6, so a NaN y stops it; silu (silu_backward) multiplies it by
// s (1 + z (1 - s)), s = 1 / (1 + e^-z).
template <typename T>
CNNK_HOST_DEVICE T activation_grad(T grad, T saved, Activation act) {
  if (act == Activation::relu) return saved <= T(0) ? T(0) : grad;
  if (act == Activation::relu6) return (saved > T(0) && saved < T(6)) ? grad : T(0);
  if (act == Activation::silu) {
    const T s = T(1) / (T(1) + exp_acc(-saved));
    return grad * s * (T(1) + saved * (T(1) - s));
  }
  return grad;
}

// Strides (in elements) of a 4-D tensor viewed as (n, c, h, w); any layout
// torch can produce: NCHW, channels_last, or a non-contiguous view.
struct Strides4 {
  int64_t n, c, h, w;
  CNNK_HOST_DEVICE int64_t offset(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

// A rank-R tensor argument of a launcher: data pointer (nullptr for an absent
// optional tensor) and strides in elements. Sizes travel in the geometry.
// Ranks 1 and 4 name their strides for the kernels' index math.
template <int R>
struct TensorN {
  void* data;
  int64_t stride[R];
};
template <>
struct TensorN<1> {
  void* data;
  int64_t stride;
};
template <>
struct TensorN<4> {
  void* data;
  Strides4 stride;
};
using Tensor1 = TensorN<1>;
using Tensor4 = TensorN<4>;

// Device scratch memory a launcher is lent (from torch's caching allocator).
struct Workspace {
  void* data;
  size_t bytes;
};

// Half-open index range [lo, hi).
struct IndexRange {
  int64_t lo, hi;
};

CNNK_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Floor division for a possibly negative numerator and a positive divisor.
CNNK_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

}  // namespace cnnk
