// The extension module cnnkernels._C: submodule `cpu` always, submodule
// `cuda` when the build found nvcc, and build_info() for cnnkernels.info().
#include <pybind11/pybind11.h>

#include <string>

#include "common.h"

#ifndef CNNK_CUDA_ARCHS
#define CNNK_CUDA_ARCHS ""
#endif
#ifndef CNNK_CUDA_VERSION
#define CNNK_CUDA_VERSION ""
#endif

namespace py = pybind11;

#if defined(CNNK_WITH_CUDA)
namespace cnnk {
// Defined in the source CMake generates from the CUDA compiles' ptxas -v output.
const char* ptxas_report();
}  // namespace cnnk
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "cnnkernels C++/CUDA kernels over raw pointers (no libtorch)";
  py::module_ cpu = m.def_submodule("cpu", "C++ CPU kernels");
#if defined(CNNK_WITH_CUDA)
  py::module_ cuda = m.def_submodule("cuda", "CUDA kernels");
  cnnk::pyext::register_conv2d(cpu, &cuda);
  cnnk::pyext::register_pool2d(cpu, &cuda);
  cuda.def("ptxas_report", []() { return std::string(cnnk::ptxas_report()); },
           "ptxas -v resource report of every CUDA kernel in this build");
  const bool with_cuda = true;
#else
  cnnk::pyext::register_conv2d(cpu, nullptr);
  cnnk::pyext::register_pool2d(cpu, nullptr);
  const bool with_cuda = false;
#endif
  m.def("build_info", [with_cuda]() {
    py::dict info;
    info["cuda"] = with_cuda;
    info["cuda_archs"] = std::string(CNNK_CUDA_ARCHS);
    info["cuda_version"] = std::string(CNNK_CUDA_VERSION);
#if defined(_OPENMP)
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  });
}
