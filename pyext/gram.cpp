// Bindings of the gram launchers (see binding.h).
#include "binding.h"
#include "cnnk/gram.h"

namespace cnnk::pyext {

template <>
struct PyStruct<GramGeometry> : std::true_type {
  static GramGeometry read(const Fields& f) { return {CNNK_FIELD(B), CNNK_FIELD(C), CNNK_FIELD(L)}; }
};

CNNK_BINDINGS(gram, m) {
  m.structure<GramGeometry>("GramGeometry");
  CNNK_LAUNCHER(m, gram_matrix);
  CNNK_LAUNCHER(m, gram_matrix_backward);
}

}  // namespace cnnk::pyext
