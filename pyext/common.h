// Conversions shared by the bindings. Python passes each tensor as a
// (data_ptr, strides) tuple, each optional tensor with data_ptr 0, and the
// CUDA stream as an integer handle (torch.cuda.current_stream().cuda_stream).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "cnnk/common.h"

namespace cnnk::pyext {

using TensorArg4 = std::tuple<std::uintptr_t, std::array<int64_t, 4>>;
using TensorArg1 = std::tuple<std::uintptr_t, int64_t>;

inline Tensor4 to_tensor4(const TensorArg4& t) {
  const auto& s = std::get<1>(t);
  return {reinterpret_cast<void*>(std::get<0>(t)), {s[0], s[1], s[2], s[3]}};
}

inline Tensor1 to_tensor1(const TensorArg1& t) {
  return {reinterpret_cast<void*>(std::get<0>(t)), std::get<1>(t)};
}

inline DType to_dtype(int code) { return static_cast<DType>(code); }

// Status codes cross into Python as plain ints; cnnkernels/_ext.py raises.
inline int to_int(Status s) { return static_cast<int>(s); }

// One registration function per op family, defined in pyext/<family>.cpp.
void register_conv2d(pybind11::module_& cpu, pybind11::module_* cuda);
void register_pool2d(pybind11::module_& cpu, pybind11::module_* cuda);

}  // namespace cnnk::pyext
