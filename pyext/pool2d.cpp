// Bindings of the pool2d launchers. Geometry arrives as the flat tuple of ints
// cnnkernels/ops/pool2d.py builds (Pool2dGeometry's fields in order):
// (N, C, H, W, P, Q, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
//  dil_h, dil_w, adaptive, count_include_pad, divisor_override).
#include "cnnk/pool2d.h"

#include "common.h"

namespace py = pybind11;

namespace cnnk::pyext {
namespace {

using GeometryArg = std::array<int64_t, 17>;

Pool2dGeometry to_geometry(const GeometryArg& a) {
  return {a[0], a[1], a[2],  a[3],  a[4],  a[5],  a[6],      a[7],      a[8],
          a[9], a[10], a[11], a[12], a[13], a[14] != 0, a[15] != 0, a[16]};
}

}  // namespace

void register_pool2d(py::module_& cpu, py::module_* cuda) {
  const auto release = py::call_guard<py::gil_scoped_release>();
  cpu.def(
      "max_pool2d_forward",
      [](int dtype, const GeometryArg& g, const TensorArg4& x, const TensorArg4& y,
         const TensorArg4& indices) {
        return to_int(cpu::max_pool2d_forward(to_dtype(dtype), to_geometry(g), to_tensor4(x),
                                              to_tensor4(y), to_tensor4(indices)));
      },
      release);
  cpu.def(
      "max_pool2d_backward",
      [](int dtype, const GeometryArg& g, const TensorArg4& grad_y, const TensorArg4& indices,
         const TensorArg4& grad_x) {
        return to_int(cpu::max_pool2d_backward(to_dtype(dtype), to_geometry(g),
                                               to_tensor4(grad_y), to_tensor4(indices),
                                               to_tensor4(grad_x)));
      },
      release);
  cpu.def(
      "avg_pool2d_forward",
      [](int dtype, const GeometryArg& g, const TensorArg4& x, const TensorArg4& y) {
        return to_int(cpu::avg_pool2d_forward(to_dtype(dtype), to_geometry(g), to_tensor4(x),
                                              to_tensor4(y)));
      },
      release);
  cpu.def(
      "avg_pool2d_backward",
      [](int dtype, const GeometryArg& g, const TensorArg4& grad_y, const TensorArg4& grad_x) {
        return to_int(cpu::avg_pool2d_backward(to_dtype(dtype), to_geometry(g),
                                               to_tensor4(grad_y), to_tensor4(grad_x)));
      },
      release);
#if defined(CNNK_WITH_CUDA)
  cuda->def(
      "max_pool2d_forward",
      [](int dtype, const GeometryArg& g, const TensorArg4& x, const TensorArg4& y,
         const TensorArg4& indices, std::uintptr_t stream) {
        return to_int(cuda::max_pool2d_forward(to_dtype(dtype), to_geometry(g), to_tensor4(x),
                                               to_tensor4(y), to_tensor4(indices),
                                               reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
  cuda->def(
      "max_pool2d_backward",
      [](int dtype, const GeometryArg& g, const TensorArg4& grad_y, const TensorArg4& indices,
         const TensorArg4& grad_x, std::uintptr_t stream) {
        return to_int(cuda::max_pool2d_backward(
            to_dtype(dtype), to_geometry(g), to_tensor4(grad_y), to_tensor4(indices),
            to_tensor4(grad_x), reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
  cuda->def(
      "avg_pool2d_forward",
      [](int dtype, const GeometryArg& g, const TensorArg4& x, const TensorArg4& y,
         std::uintptr_t stream) {
        return to_int(cuda::avg_pool2d_forward(to_dtype(dtype), to_geometry(g), to_tensor4(x),
                                               to_tensor4(y),
                                               reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
  cuda->def(
      "avg_pool2d_backward",
      [](int dtype, const GeometryArg& g, const TensorArg4& grad_y, const TensorArg4& grad_x,
         std::uintptr_t stream) {
        return to_int(cuda::avg_pool2d_backward(to_dtype(dtype), to_geometry(g),
                                                to_tensor4(grad_y), to_tensor4(grad_x),
                                                reinterpret_cast<cudaStream_t>(stream)));
      },
      release);
#else
  (void)cuda;
#endif
}

}  // namespace cnnk::pyext
