// What the CUDA conv2d algorithms with int indices share (direct,
// depthwise): the int-index check and the grad_weight launchers' tail.
// Include only from .cu files.
#pragma once

#include <cstdint>

#include "cnnk/conv2d.h"
#include "cnnk/cuda_launch.cuh"

namespace cnnk::cuda {

// The kernels' int indices hold for these geometries: every size, pixel
// count and reduction length below 2^30 (room for a chunk or split past
// the end), and the furthest input row/column a tap addresses within int.
inline bool conv2d_fits_int(const Conv2dGeometry& g) {
  constexpr int64_t kLimit = kIntMax / 2;
  const int64_t sizes[] = {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w,
                           g.pad_top, g.pad_left, g.dil_h, g.dil_w};
  for (int64_t v : sizes)
    if (v > kLimit) return false;
  return product_le({g.P, g.Q}, kLimit) && product_le({g.H, g.W}, kLimit) &&
         product_le({g.N, g.P, g.Q}, kLimit) && product_le({g.N, g.H, g.W}, kLimit) &&
         product_le({g.C_g(), g.R, g.S}, kLimit) && product_le({g.K_g(), g.R, g.S}, kLimit) &&
         (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + g.H + g.pad_top <= kIntMax &&
         (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + g.W + g.pad_left <= kIntMax &&
         g.stride_h * g.dil_h <= kIntMax && g.stride_w * g.dil_w <= kIntMax;
}

// The tail of a grad_weight launcher whose arguments are checked: the plan
// plan_for(dtype, g) (a function of the dtype and geometry alone, so the
// launcher's *_workspace_bytes sizes the workspace from the same plan), the
// lent workspace checked against the plan's, then the dtype dispatch:
// run(TypeTag<T>{}, plan) launches the kernels for dtype's element type T.
template <typename Plan, typename Run>
Status run_grad_weight_plan(DType dtype, const Conv2dGeometry& g,
                            Plan (*plan_for)(DType, const Conv2dGeometry&), Workspace workspace,
                            Run&& run) {
  const Plan plan = plan_for(dtype, g);
  if (plan.workspace_bytes > 0 &&
      (workspace.data == nullptr || workspace.bytes < plan.workspace_bytes))
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) { return run(type, plan); });
}

}  // namespace cnnk::cuda
