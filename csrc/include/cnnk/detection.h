// detection: box IoU matrices, the IoU losses and non-maximum suppression.
// The geometries the Python ops pass (cnnkernels/ops/detection.py, field for
// field) and the launchers of the CPU and CUDA kernels; the box math itself
// is cnnk/boxes.h.
//
// Shapes: boxes are (..., 4) xyxy in any strides; IoU matrices (B, N, M);
// losses one value per pair of boxes (P,). NMS reads the boxes through
// `order` (int64, N): the boxes in the order the greedy pass visits them
// (score descending; with classes, grouped by class, each group by score),
// and `classes` (int64 class of each box by its original index, null for
// one class); it writes kept (uint8, N): kept[p] for the box order[p].
// The semantics of each value are in boxes.h.
#pragma once

#include "cnnk/boxes.h"
#include "cnnk/common.h"

#if defined(CNNK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace cnnk {

// box_iou / generalized_box_iou: boxes1 (B, N, 4) against boxes2 (B, M, 4).
struct BoxPairGeometry {
  int64_t B, N, M;
  bool generalized;
};

// The IoU losses over P pairs of boxes.
struct BoxLossGeometry {
  int64_t P;
  BoxLoss kind;
  double eps;
};

// NMS over N boxes: words = ceil(N / 64) 64-bit words per mask row;
// iou_threshold_f32 is the largest float32 <= iou_threshold (boxes.h,
// iou_exceeds); by_class: classes is given.
struct NmsGeometry {
  int64_t N, words;
  double iou_threshold, iou_threshold_f32;
  bool by_class;
};

// Soft-NMS over N boxes (boxes.h, soft_nms_decay): repeatedly select the
// highest score (the lowest index on a tie; NaN scores never), decay the
// others by their IoU with it, until the best left is below
// score_threshold.
struct SoftNmsGeometry {
  int64_t N;
  bool gaussian;
  double iou_threshold, sigma, score_threshold;
};

// Matrix NMS over N boxes in score order (boxes.h, matrix_nms_decay).
struct MatrixNmsGeometry {
  int64_t N;
  bool gaussian;
  double sigma;
  bool by_class;
};

// YOLO head decoding (YOLOv2/v3): head (B, H, W, A * (5 + C)) through its
// strides; for cell (y, x) and anchor a with logits t (tx, ty, tw, th, to,
// class logits): centre ((sigmoid(tx) + x) stride, (sigmoid(ty) + y) stride),
// size (anchor_w e^tw, anchor_h e^th) in pixels, boxes xyxy; score of class
// c = sigmoid(to) sigmoid(t_c). Outputs boxes (B, H W A, 4), scores
// (B, H W A, C), row (y W + x) A + a.
struct YoloGeometry {
  int64_t B, H, W, A, C;
  double stride;
};

constexpr int64_t kNmsBlock = 64;  // boxes per mask word

// The NMS workspace the cuda kernels need, in bytes: the upper-triangle
// bitmask (N rows of `words` words) and the removed bits (`words` words).
inline int64_t nms_workspace_bytes(const NmsGeometry& g) {
  return 8 * g.words * (g.N + 1);
}

namespace cpu {
// out[b, n, m] = IoU (or GIoU) of boxes1[b, n] and boxes2[b, m].
Status box_iou(DType dtype, const BoxPairGeometry& g, TensorN<3> boxes1, TensorN<3> boxes2,
               TensorN<3> out);
// loss[p] = the loss of boxes1[p] against boxes2[p].
Status box_iou_loss_forward(DType dtype, const BoxLossGeometry& g, TensorN<2> boxes1,
                            TensorN<2> boxes2, Tensor1 loss);
// grad1[p] = grad_loss[p] d loss[p] / d boxes1[p]; grad2 likewise.
Status box_iou_loss_backward(DType dtype, const BoxLossGeometry& g, Tensor1 grad_loss,
                             TensorN<2> boxes1, TensorN<2> boxes2, TensorN<2> grad1,
                             TensorN<2> grad2);
// The greedy NMS over the boxes in `order`; the workspace is unused (the cpu
// computes each kept box's row of the mask when it is kept, into removed
// flags, and stores no mask).
Status nms(DType dtype, const NmsGeometry& g, TensorN<2> boxes, Tensor1 order, Tensor1 classes,
           Workspace workspace, Tensor1 kept);
// selected[0, count) = the indices in selection order, selected_scores their
// decayed scores; workspace (cuda): N accumulators (the running scores).
Status soft_nms(DType dtype, const SoftNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                Workspace workspace, Tensor1 selected, Tensor1 selected_scores, Tensor1 count);
// decayed[order[j]] = scores[order[j]] x the decay of the j-th box of the
// score order; workspace (cuda): N accumulators (the compensating IoUs).
Status matrix_nms(DType dtype, const MatrixNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                  Tensor1 order, Tensor1 classes, Workspace workspace, Tensor1 decayed);
// anchors (A, 2): width, height in pixels.
Status yolo_decode(DType dtype, const YoloGeometry& g, Tensor4 head, TensorN<2> anchors,
                   TensorN<3> boxes, TensorN<3> scores);
}  // namespace cpu

#if defined(CNNK_WITH_CUDA)
namespace cuda {
// Same contracts as the CPU launchers; work is queued on `stream`. nms's
// workspace holds at least nms_workspace_bytes(g).
Status box_iou(DType dtype, const BoxPairGeometry& g, TensorN<3> boxes1, TensorN<3> boxes2,
               TensorN<3> out, cudaStream_t stream);
Status box_iou_loss_forward(DType dtype, const BoxLossGeometry& g, TensorN<2> boxes1,
                            TensorN<2> boxes2, Tensor1 loss, cudaStream_t stream);
Status box_iou_loss_backward(DType dtype, const BoxLossGeometry& g, Tensor1 grad_loss,
                             TensorN<2> boxes1, TensorN<2> boxes2, TensorN<2> grad1,
                             TensorN<2> grad2, cudaStream_t stream);
Status nms(DType dtype, const NmsGeometry& g, TensorN<2> boxes, Tensor1 order, Tensor1 classes,
           Workspace workspace, Tensor1 kept, cudaStream_t stream);
Status soft_nms(DType dtype, const SoftNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                Workspace workspace, Tensor1 selected, Tensor1 selected_scores, Tensor1 count,
                cudaStream_t stream);
Status matrix_nms(DType dtype, const MatrixNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                  Tensor1 order, Tensor1 classes, Workspace workspace, Tensor1 decayed,
                  cudaStream_t stream);
Status yolo_decode(DType dtype, const YoloGeometry& g, Tensor4 head, TensorN<2> anchors,
                   TensorN<3> boxes, TensorN<3> scores, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace cnnk
