// Bindings of the conv2d launchers, every algorithm (see binding.h).
#include "binding.h"
#include "cnnk/conv2d.h"

namespace cnnk::pyext {

template <>
struct PyStruct<Conv2dGeometry> : std::true_type {
  static Conv2dGeometry read(const Fields& f) {
    return {CNNK_FIELD(N),        CNNK_FIELD(C),        CNNK_FIELD(H),        CNNK_FIELD(W),
            CNNK_FIELD(K),        CNNK_FIELD(R),        CNNK_FIELD(S),        CNNK_FIELD(P),
            CNNK_FIELD(Q),        CNNK_FIELD(stride_h), CNNK_FIELD(stride_w), CNNK_FIELD(pad_top),
            CNNK_FIELD(pad_left), CNNK_FIELD(dil_h),    CNNK_FIELD(dil_w),    CNNK_FIELD(groups),
            CNNK_FIELD(activation)};
  }
};

CNNK_BINDINGS(conv2d, m) {
  m.structure<Conv2dGeometry>("Conv2dGeometry");
  CNNK_LAUNCHER(m, conv2d_direct_forward);
  CNNK_LAUNCHER(m, conv2d_direct_grad_input);
  CNNK_LAUNCHER(m, conv2d_direct_grad_weight);
  CNNK_LAUNCHER(m, conv2d_activation_grad);
  // The cuda implicit_gemm launchers also take allow_tf32
  // (csrc/include/cnnk/conv2d.h).
  CNNK_LAUNCHER(m, conv2d_implicit_gemm_forward);
  CNNK_LAUNCHER(m, conv2d_implicit_gemm_grad_input);
  CNNK_LAUNCHER(m, conv2d_implicit_gemm_grad_weight);
  CNNK_LAUNCHER(m, conv2d_im2col);
  CNNK_LAUNCHER(m, conv2d_col2im);
  // The cuda depthwise grad_weight also takes a workspace.
  CNNK_LAUNCHER(m, conv2d_depthwise_forward);
  CNNK_LAUNCHER(m, conv2d_depthwise_grad_input);
  CNNK_LAUNCHER(m, conv2d_depthwise_grad_weight);
#if defined(CNNK_WITH_CUDA)
  // CUDA only: the workspace sizes.
  py::module_ cuda_module = m.cuda.cast<py::module_>();
  cuda_module.def("conv2d_direct_grad_weight_workspace_bytes",
                  &cuda::conv2d_direct_grad_weight_workspace_bytes);
  cuda_module.def("conv2d_implicit_gemm_grad_weight_workspace_bytes",
                  &cuda::conv2d_implicit_gemm_grad_weight_workspace_bytes);
  cuda_module.def("conv2d_depthwise_grad_weight_workspace_bytes",
                  &cuda::conv2d_depthwise_grad_weight_workspace_bytes);
#endif
}

}  // namespace cnnk::pyext
