// Bindings of the conv2d launchers. Geometry arrives as the flat tuple
// cnnkernels/ops/conv2d.py builds:
// (N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups).
#include "cnnk/conv2d.h"

#include "common.h"

namespace py = pybind11;

namespace cnnk::pyext {
namespace {

using GeometryArg = std::array<int64_t, 16>;

Conv2dGeometry to_geometry(const GeometryArg& a, int activation) {
  return {a[0], a[1], a[2],  a[3],  a[4],  a[5],  a[6],  a[7],
          a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15],
          static_cast<Activation>(activation)};
}

}  // namespace

void register_conv2d(py::module_& cpu, py::module_* cuda) {
  const auto release = py::call_guard<py::gil_scoped_release>();
  cpu.def(
      "conv2d_forward",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& x,
         const TensorArg4& w, const TensorArg1& bias, const TensorArg4& y) {
        return to_int(cpu::conv2d_forward(to_dtype(dtype), to_geometry(geometry, activation),
                                          to_tensor4(x), to_tensor4(w), to_tensor1(bias),
                                          to_tensor4(y)));
      },
      release);
  cpu.def(
      "conv2d_grad_input",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& grad_y,
         const TensorArg4& y, const TensorArg4& w, const TensorArg4& grad_x) {
        return to_int(cpu::conv2d_grad_input(to_dtype(dtype), to_geometry(geometry, activation),
                                             to_tensor4(grad_y), to_tensor4(y), to_tensor4(w),
                                             to_tensor4(grad_x)));
      },
      release);
  cpu.def(
      "conv2d_grad_weight",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& grad_y,
         const TensorArg4& y, const TensorArg4& x, const TensorArg4& grad_w,
         const TensorArg1& grad_bias) {
        return to_int(cpu::conv2d_grad_weight(to_dtype(dtype), to_geometry(geometry, activation),
                                              to_tensor4(grad_y), to_tensor4(y), to_tensor4(x),
                                              to_tensor4(grad_w), to_tensor1(grad_bias)));
      },
      release);
#if defined(CNNK_WITH_CUDA)
  cuda->def(
      "conv2d_forward",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& x,
         const TensorArg4& w, const TensorArg1& bias, const TensorArg4& y, std::uintptr_t stream) {
        return to_int(cuda::conv2d_forward(to_dtype(dtype), to_geometry(geometry, activation),
                                           to_tensor4(x), to_tensor4(w), to_tensor1(bias),
                                           to_tensor4(y), reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
  cuda->def(
      "conv2d_grad_input",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& grad_y,
         const TensorArg4& y, const TensorArg4& w, const TensorArg4& grad_x,
         std::uintptr_t stream) {
        return to_int(cuda::conv2d_grad_input(
            to_dtype(dtype), to_geometry(geometry, activation), to_tensor4(grad_y), to_tensor4(y),
            to_tensor4(w), to_tensor4(grad_x), reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
  cuda->def(
      "conv2d_grad_weight_workspace_bytes",
      [](int dtype, const GeometryArg& geometry, int activation) {
        return cuda::conv2d_grad_weight_workspace_bytes(to_dtype(dtype),
                                                        to_geometry(geometry, activation));
      });
  cuda->def(
      "conv2d_grad_weight",
      [](int dtype, const GeometryArg& geometry, int activation, const TensorArg4& grad_y,
         const TensorArg4& y, const TensorArg4& x, const TensorArg4& grad_w,
         const TensorArg1& grad_bias, std::uintptr_t workspace, size_t workspace_bytes,
         std::uintptr_t stream) {
        return to_int(cuda::conv2d_grad_weight(
            to_dtype(dtype), to_geometry(geometry, activation), to_tensor4(grad_y), to_tensor4(y),
            to_tensor4(x), to_tensor4(grad_w), to_tensor1(grad_bias),
            reinterpret_cast<void*>(workspace), workspace_bytes,
            reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
#else
  (void)cuda;
#endif
}

}  // namespace cnnk::pyext
