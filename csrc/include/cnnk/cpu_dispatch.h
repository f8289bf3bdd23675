// dtype dispatch of the C++ CPU kernels, which compute in fp32 and fp64.
#pragma once

#include "cnnk/common.h"

namespace cnnk::cpu {

// Calls body(T{}) with T the element type of dtype.
template <typename Body>
Status dispatch_float_types(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::f32: body(float{}); return Status::ok;
    case DType::f64: body(double{}); return Status::ok;
    default: return Status::unsupported_dtype;
  }
}

}  // namespace cnnk::cpu
