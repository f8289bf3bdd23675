// What every CUDA launcher shares: the dtype dispatch onto the CUDA element
// types, the dtype check, the grid limits and the overflow-safe size checks
// before a launch, and the launch's status. Include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "cnnk/common.h"

namespace cnnk::cuda {

constexpr int64_t kIntMax = 2147483647;    // int indices in the kernels
constexpr int64_t kMaxGridX = 2147483647;  // CUDA's gridDim.x limit
constexpr int64_t kMaxGridY = 65535;       // CUDA's gridDim.y limit

template <typename T>
struct TypeTag {
  using type = T;
};

inline bool supported_dtype(DType dtype) {
  return dtype == DType::float16 || dtype == DType::bfloat16 || dtype == DType::float32 ||
         dtype == DType::float64;
}

// Returns body(TypeTag<T>{}) with T the CUDA element type of dtype.
template <typename Body>
Status dispatch_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::float16: return body(TypeTag<__half>{});
    case DType::bfloat16: return body(TypeTag<__nv_bfloat16>{});
    case DType::float32: return body(TypeTag<float>{});
    case DType::float64: return body(TypeTag<double>{});
  }
  return Status::unsupported_dtype;
}

// Whether a product of non-negative factors stays <= limit (no overflow).
inline bool product_le(std::initializer_list<int64_t> factors, int64_t limit) {
  for (int64_t f : factors)
    if (f == 0) return true;
  int64_t p = 1;
  for (int64_t f : factors) {
    if (p > limit / f) return false;
    p *= f;
  }
  return true;
}

// The status of the launches queued so far (a bad configuration shows here).
inline Status launched() {
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::cuda_error;
}

}  // namespace cnnk::cuda
