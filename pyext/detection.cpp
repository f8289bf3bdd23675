// Bindings of the detection launchers (see binding.h).
#include "binding.h"
#include "cnnk/detection.h"

namespace cnnk::pyext {

template <>
struct PyStruct<BoxPairGeometry> : std::true_type {
  static BoxPairGeometry read(const Fields& f) {
    return {CNNK_FIELD(B), CNNK_FIELD(N), CNNK_FIELD(M), CNNK_FIELD(generalized)};
  }
};

template <>
struct PyStruct<BoxLossGeometry> : std::true_type {
  static BoxLossGeometry read(const Fields& f) {
    return {CNNK_FIELD(P), CNNK_FIELD(kind), CNNK_FIELD(eps)};
  }
};

template <>
struct PyStruct<NmsGeometry> : std::true_type {
  static NmsGeometry read(const Fields& f) {
    return {CNNK_FIELD(N), CNNK_FIELD(words), CNNK_FIELD(iou_threshold),
            CNNK_FIELD(iou_threshold_f32), CNNK_FIELD(by_class)};
  }
};

template <>
struct PyStruct<SoftNmsGeometry> : std::true_type {
  static SoftNmsGeometry read(const Fields& f) {
    return {CNNK_FIELD(N), CNNK_FIELD(gaussian), CNNK_FIELD(iou_threshold), CNNK_FIELD(sigma),
            CNNK_FIELD(score_threshold)};
  }
};

template <>
struct PyStruct<MatrixNmsGeometry> : std::true_type {
  static MatrixNmsGeometry read(const Fields& f) {
    return {CNNK_FIELD(N), CNNK_FIELD(gaussian), CNNK_FIELD(sigma), CNNK_FIELD(by_class)};
  }
};

template <>
struct PyStruct<YoloGeometry> : std::true_type {
  static YoloGeometry read(const Fields& f) {
    return {CNNK_FIELD(B), CNNK_FIELD(H), CNNK_FIELD(W), CNNK_FIELD(A), CNNK_FIELD(C),
            CNNK_FIELD(stride)};
  }
};

CNNK_BINDINGS(detection, m) {
  m.structure<BoxPairGeometry>("BoxPairGeometry");
  m.structure<BoxLossGeometry>("BoxLossGeometry");
  m.structure<NmsGeometry>("NmsGeometry");
  m.structure<SoftNmsGeometry>("SoftNmsGeometry");
  m.structure<MatrixNmsGeometry>("MatrixNmsGeometry");
  m.structure<YoloGeometry>("YoloGeometry");
  CNNK_LAUNCHER(m, box_iou);
  CNNK_LAUNCHER(m, box_iou_loss_forward);
  CNNK_LAUNCHER(m, box_iou_loss_backward);
  CNNK_LAUNCHER(m, nms);
  CNNK_LAUNCHER(m, soft_nms);
  CNNK_LAUNCHER(m, matrix_nms);
  CNNK_LAUNCHER(m, yolo_decode);
}

}  // namespace cnnk::pyext
