// Bindings of the cpu GEMM core: its launcher, the instruction set chosen at
// run time and the FMA-throughput probe (see binding.h).
#include "binding.h"
#include "cnnk/cpu_gemm.h"
#include "cnnk/gemm.h"

namespace cnnk::pyext {

CNNK_BINDINGS(gemm, m) {
  m.launcher("gemm_matmul", &cpu::gemm_matmul, nullptr);
  m.cpu.def("gemm_isa", [] { return cpu::gemm::isa_name(cpu::gemm::isa()); },
            "The instruction set of the GEMM micro-kernels in use.");
  m.cpu.def("fma_peak", &cpu::gemm::fma_peak, py::arg("f64"), py::arg("threads"),
            py::arg("seconds"), py::call_guard<py::gil_scoped_release>(),
            "Achievable FMA throughput (flop/s) of `threads` threads.");
}

}  // namespace cnnk::pyext
