// Helpers shared by the C++ (CPU) and CUDA kernels: portability macros, the
// status codes launchers return, element types and fused activations.
// No libtorch: everything here is plain C++ that nvcc and g++ both accept.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CNNK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNK_HOST_DEVICE inline
#endif

namespace cnnk {

// Returned by every launcher; Python turns a non-zero code into an exception
// (cnnkernels/_ext.py keeps the matching messages).
enum class Status : int {
  ok = 0,
  bad_argument = 1,     // sizes or parameters a launcher cannot handle
  unsupported_dtype = 2,
  index_overflow = 3,   // an offset does not fit the kernel's index type
  cuda_error = 4,       // a CUDA runtime call or launch failed
  not_built = 5,        // the backend was not compiled into this build
};

// Element types, numbered as cnnkernels/_ext.py numbers them.
enum class DType : int { f16 = 0, bf16 = 1, f32 = 2, f64 = 3 };

// Activations fused into epilogues, numbered as cnnkernels/_args.py numbers them.
enum class Activation : int { none = 0, relu = 1, relu6 = 2 };

// Activation applied to an accumulator.
template <typename T>
CNNK_HOST_DEVICE T apply_activation(T v, Activation act) {
  if (act == Activation::relu) return v > T(0) ? v : T(0);
  if (act == Activation::relu6) return v > T(0) ? (v < T(6) ? v : T(6)) : T(0);
  return v;
}

// Derivative of the activation, taken from its output y: relu passes the
// gradient where y > 0, relu6 where 0 < y < 6 (torch's convention: the
// gradient at the kinks is zero).
template <typename T>
CNNK_HOST_DEVICE T activation_grad_mask(T y, Activation act) {
  if (act == Activation::relu) return y > T(0) ? T(1) : T(0);
  if (act == Activation::relu6) return (y > T(0) && y < T(6)) ? T(1) : T(0);
  return T(1);
}

// Strides (in elements) of a 4-D tensor viewed as (n, c, h, w); any layout
// torch can produce: NCHW, channels_last, or a non-contiguous view.
struct Strides4 {
  int64_t n, c, h, w;
  CNNK_HOST_DEVICE int64_t offset(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

// A tensor argument of a launcher: data pointer and strides in elements.
struct Tensor4 {
  void* data;
  Strides4 stride;
};
struct Tensor1 {
  void* data;  // nullptr when absent (an optional tensor)
  int64_t stride;
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
