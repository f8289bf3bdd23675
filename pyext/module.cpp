// The extension module cnnkernels._C: the codes (Status, DType, Activation),
// submodule `cpu` always, submodule `cuda` when the build found nvcc, every
// family's launchers (pyext/<family>.cpp registers itself with
// CNNK_BINDINGS), struct_fields (the C++ field list of every geometry) and
// build_info() for cnnkernels.info().
#include <string>
#include <vector>

#include "binding.h"

#ifndef CNNK_CUDA_ARCHS
#define CNNK_CUDA_ARCHS ""
#endif
#ifndef CNNK_CUDA_VERSION
#define CNNK_CUDA_VERSION ""
#endif

namespace py = pybind11;

namespace cnnk {
#if defined(CNNK_WITH_CUDA)
// Defined in the source CMake generates from the CUDA compiles' ptxas -v output.
const char* ptxas_report();
#endif

namespace pyext {
std::vector<Bindings>& all_bindings() {
  static std::vector<Bindings> bindings;
  return bindings;
}
}  // namespace pyext
}  // namespace cnnk

PYBIND11_MODULE(_C, m) {
  using namespace cnnk;
  m.doc() = "cnnkernels C++/CUDA kernels over raw pointers (no libtorch)";
  py::enum_<Status>(m, "Status")
      .value("ok", Status::ok)
      .value("bad_argument", Status::bad_argument)
      .value("unsupported_dtype", Status::unsupported_dtype)
      .value("index_overflow", Status::index_overflow)
      .value("cuda_error", Status::cuda_error)
      .value("out_of_memory", Status::out_of_memory);
  py::enum_<DType>(m, "DType")
      .value("float16", DType::float16)
      .value("bfloat16", DType::bfloat16)
      .value("float32", DType::float32)
      .value("float64", DType::float64);
  py::enum_<Activation>(m, "Activation")
      .value("none", Activation::none)
      .value("relu", Activation::relu)
      .value("relu6", Activation::relu6)
      .value("silu", Activation::silu);

  pyext::Modules modules{m.def_submodule("cpu", "C++ CPU kernels"), py::none(), py::dict()};
#if defined(CNNK_WITH_CUDA)
  py::module_ cuda = m.def_submodule("cuda", "CUDA kernels");
  cuda.def("ptxas_report", []() { return std::string(ptxas_report()); },
           "ptxas -v resource report of every CUDA kernel in this build");
  modules.cuda = cuda;
  const bool with_cuda = true;
#else
  const bool with_cuda = false;
#endif
  for (pyext::Bindings bind : pyext::all_bindings()) bind(modules);
  m.attr("struct_fields") = modules.struct_fields;

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
