// Bindings of the pool2d launchers (see binding.h).
#include "binding.h"
#include "cnnk/pool2d.h"

namespace cnnk::pyext {

template <>
struct PyStruct<Pool2dGeometry> : std::true_type {
  static Pool2dGeometry read(const Fields& f) {
    return {CNNK_FIELD(N),          CNNK_FIELD(C),        CNNK_FIELD(H),
            CNNK_FIELD(W),          CNNK_FIELD(P),        CNNK_FIELD(Q),
            CNNK_FIELD(kernel_h),   CNNK_FIELD(kernel_w), CNNK_FIELD(stride_h),
            CNNK_FIELD(stride_w),   CNNK_FIELD(pad_h),    CNNK_FIELD(pad_w),
            CNNK_FIELD(dil_h),      CNNK_FIELD(dil_w),    CNNK_FIELD(adaptive),
            CNNK_FIELD(count_include_pad), CNNK_FIELD(divisor_override)};
  }
};

CNNK_BINDINGS(pool2d, m) {
  m.structure<Pool2dGeometry>("Pool2dGeometry");
  CNNK_LAUNCHER(m, max_pool2d_forward);
  CNNK_LAUNCHER(m, max_pool2d_backward);
  CNNK_LAUNCHER(m, avg_pool2d_forward);
  CNNK_LAUNCHER(m, avg_pool2d_backward);
  CNNK_LAUNCHER(m, max_pool2d_gather);
}

}  // namespace cnnk::pyext
