// Bindings of the gram launchers (see binding.h).
#include "binding.h"
#include "cnnk/gram.h"

namespace cnnk::pyext {

template <>
struct PyStruct<GramGeometry> : std::true_type {
  static GramGeometry read(const Fields& f) {
    return {CNNK_FIELD(B), CNNK_FIELD(C), CNNK_FIELD(L), CNNK_FIELD(splits), CNNK_FIELD(slice_len)};
  }
};

template <>
struct PyStruct<StyleLossGeometry> : std::true_type {
  static StyleLossGeometry read(const Fields& f) {
    return {CNNK_FIELD(B),    CNNK_FIELD(C),      CNNK_FIELD(L),
            CNNK_FIELD(tile), CNNK_FIELD(splits), CNNK_FIELD(slice_len)};
  }
};

template <>
struct PyStruct<DifferenceGeometry> : std::true_type {
  static DifferenceGeometry read(const Fields& f) { return {CNNK_FIELD(N), CNNK_FIELD(chunk)}; }
};

CNNK_BINDINGS(gram, m) {
  m.structure<GramGeometry>("GramGeometry");
  CNNK_LAUNCHER(m, gram_matrix);
  CNNK_LAUNCHER(m, gram_matrix_backward);
  m.structure<StyleLossGeometry>("StyleLossGeometry");
  CNNK_LAUNCHER(m, style_loss);
  m.structure<DifferenceGeometry>("DifferenceGeometry");
  CNNK_LAUNCHER(m, difference_dot);
  CNNK_LAUNCHER(m, scaled_difference);
}

}  // namespace cnnk::pyext
