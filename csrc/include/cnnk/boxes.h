// Box math shared by the C++ (CPU) and CUDA detection kernels, written once
// for the host and the device (csrc/cpu/detection.cpp, csrc/cuda/detection.cu;
// kernels/detection.py mirrors it in Triton).
//
// Boxes are (x1, y1, x2, y2) corners ("xyxy"), as torchvision takes them.
// Every formula is torchvision's, operation for operation and in the same
// order, in the accumulator type T (float for float16, bfloat16 and float32
// boxes, double for float64): torchvision.ops.box_iou, generalized_box_iou,
// nms's overlap test and the generalized / distance / complete IoU losses.
// The products and sums go through mul/add/sub below, which on the device
// round each operation on its own (no fused multiply-add), so the CPU, the
// GPU and torchvision round alike and NMS keeps the same boxes.
//
// Where torchvision divides 0 by 0 (two zero-area boxes: box_iou; an empty
// enclosing box: generalized_box_iou) these functions give 0 instead of
// NaN; nms's test keeps torchvision's division, whose NaN suppresses nothing.
#pragma once

#include "cnnk/common.h"

namespace cnnk {

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// Correctly rounded arithmetic, never contracted into an FMA.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T>
inline T mul(T a, T b) {
  return a * b;
}
template <typename T>
inline T add(T a, T b) {
  return a + b;
}
template <typename T>
inline T sub(T a, T b) {
  return a - b;
}
#endif

CNNK_HOST_DEVICE float atan_of(float v) { return atanf(v); }
CNNK_HOST_DEVICE double atan_of(double v) { return atan(v); }

template <typename T>
CNNK_HOST_DEVICE T max_of(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
CNNK_HOST_DEVICE T min_of(T a, T b) {
  return b < a ? b : a;
}

// (x2 - x1) * (y2 - y1), negative for an inverted box.
template <typename T>
CNNK_HOST_DEVICE T box_area(const Box<T>& b) {
  return mul(sub(b.x2, b.x1), sub(b.y2, b.y1));
}

// Intersection area and union of two boxes, as torchvision's box_iou and
// nms compute them: the overlap's width and height clamped at 0, then
// union = (area_a + area_b) - inter.
template <typename T>
struct Overlap {
  T inter, uni;
};

template <typename T>
CNNK_HOST_DEVICE Overlap<T> box_overlap(const Box<T>& a, T area_a, const Box<T>& b, T area_b) {
  const T w = max_of(sub(min_of(a.x2, b.x2), max_of(a.x1, b.x1)), T(0));
  const T h = max_of(sub(min_of(a.y2, b.y2), max_of(a.y1, b.y1)), T(0));
  const T inter = mul(w, h);
  return {inter, sub(add(area_a, area_b), inter)};
}

// torchvision.ops.box_iou, 0 where it divides 0 by 0 (or by a negative
// union of inverted boxes, where it gives -0).
template <typename T>
CNNK_HOST_DEVICE T iou_value(Overlap<T> o) {
  return o.uni > T(0) ? o.inter / o.uni : T(0);
}

// torchvision.ops.generalized_box_iou: iou - (C - union) / C with C the
// smallest enclosing box's area (its sides clamped at 0); iou alone when C is 0.
template <typename T>
CNNK_HOST_DEVICE T giou_value(const Box<T>& a, const Box<T>& b, Overlap<T> o) {
  const T cw = max_of(sub(max_of(a.x2, b.x2), min_of(a.x1, b.x1)), T(0));
  const T ch = max_of(sub(max_of(a.y2, b.y2), min_of(a.y1, b.y1)), T(0));
  const T enclosing = mul(cw, ch);
  const T iou = iou_value(o);
  return enclosing > T(0) ? sub(iou, sub(enclosing, o.uni) / enclosing) : iou;
}

// nms's suppression test, torchvision's (cpu kernel): inter / union >
// threshold, the quotient rounded in T. A float quotient is compared with
// the largest float at most the double threshold, which decides exactly as
// comparing it with the double itself; 0 / 0 is NaN and suppresses nothing.
CNNK_HOST_DEVICE bool iou_exceeds(Overlap<float> o, double /*threshold*/, float threshold_f32) {
  return o.inter / o.uni > threshold_f32;
}
CNNK_HOST_DEVICE bool iou_exceeds(Overlap<double> o, double threshold, float /*threshold_f32*/) {
  return o.inter / o.uni > threshold;
}

// Soft-NMS's decay of a score by its IoU with the box just selected (Bodla
// et al., 2017): linear, 1 - iou where iou > threshold (else 1); Gaussian,
// exp(-iou^2 / sigma).
template <typename T>
CNNK_HOST_DEVICE T soft_nms_decay(T iou, bool gaussian, T threshold, T sigma) {
  if (gaussian) return exp_acc(-(iou * iou) / sigma);
  return iou > threshold ? T(1) - iou : T(1);
}

// Matrix NMS's decay factor of box j from a higher-scored box i of its class
// (SOLOv2): iou = IoU(i, j), compensate = the largest IoU of box i with a
// box above it; Gaussian exp(-sigma (iou^2 - compensate^2)), linear
// (1 - iou) / (1 - compensate). A box's decay is the least over i, and 1.
template <typename T>
CNNK_HOST_DEVICE T matrix_nms_decay(T iou, T compensate, bool gaussian, T sigma) {
  if (gaussian) return exp_acc(-sigma * (iou * iou - compensate * compensate));
  return (T(1) - iou) / (T(1) - compensate);
}

CNNK_HOST_DEVICE float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
CNNK_HOST_DEVICE double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }

// One YOLO prediction (cnnk/detection.h, YoloGeometry): logits tx, ty, tw,
// th of cell (y, x) and an anchor (pixels) -> the xyxy box.
template <typename T>
CNNK_HOST_DEVICE Box<T> yolo_box(T tx, T ty, T tw, T th, int64_t x, int64_t y, T anchor_w,
                                 T anchor_h, T stride) {
  const T cx = (sigmoid(tx) + T(x)) * stride, cy = (sigmoid(ty) + T(y)) * stride;
  const T half_w = anchor_w * exp_acc(tw) / T(2), half_h = anchor_h * exp_acc(th) / T(2);
  return {cx - half_w, cy - half_h, cx + half_w, cy + half_h};
}

// Decodes one YOLO prediction into row `row` of image b of boxes (B, rows, 4)
// and scores (B, rows, C): its yolo_box and its C scores, objectness x class
// sigmoid. logit(k) reads the prediction's k-th logit in the accumulator
// type A; round(v) converts an A to the outputs' type T (each backend's
// from_acc).
template <typename T, typename A, typename Logit, typename Round>
CNNK_HOST_DEVICE void yolo_store(const Logit& logit, int64_t x, int64_t y, A anchor_w,
                                 A anchor_h, A stride, int64_t classes, TensorN<3> boxes,
                                 TensorN<3> scores, int64_t b, int64_t row, const Round& round) {
  const Box<A> box = yolo_box(logit(0), logit(1), logit(2), logit(3), x, y, anchor_w, anchor_h,
                              stride);
  T* out = static_cast<T*>(boxes.data) + b * boxes.stride[0] + row * boxes.stride[1];
  const int64_t s = boxes.stride[2];
  out[0] = round(box.x1), out[s] = round(box.y1);
  out[2 * s] = round(box.x2), out[3 * s] = round(box.y2);
  const A objectness = sigmoid(logit(4));
  T* score = static_cast<T*>(scores.data) + b * scores.stride[0] + row * scores.stride[1];
  for (int64_t c = 0; c < classes; ++c)
    score[c * scores.stride[2]] = round(objectness * sigmoid(logit(5 + c)));
}

// The IoU losses of torchvision.ops (generalized_box_iou_loss,
// distance_box_iou_loss, complete_box_iou_loss), per pair of boxes a
// (predicted) and b (target), with their eps:
//   inter = the overlap's area where it is non-empty, else 0;
//   union = area_a + area_b - inter;  iou = inter / (union + eps)
//   C = the smallest enclosing box (w_c x h_c)
//   giou: 1 - (iou - (w_c h_c - union) / (w_c h_c + eps))
//   diou: 1 - iou + d^2 / (w_c^2 + h_c^2 + eps), d the centres' distance
//   ciou: diou + alpha v, v = 4 / pi^2 (atan(w_b / h_b) - atan(w_a / h_a))^2,
//         alpha = v / (1 - iou + v + eps) a constant for the gradient.
enum class BoxLoss : int { giou = 0, diou = 1, ciou = 2 };

template <typename T>
struct LossTerms {
  T ix1, iy1, ix2, iy2;  // the intersection's corners
  bool overlaps;
  T inter, uni, iou;
  T cw, ch;              // the enclosing box's width and height
  T dx, dy;              // centre of a minus centre of b
  T atan_a, atan_b;      // atan(w / h) of each box (ciou)
};

template <typename T>
CNNK_HOST_DEVICE LossTerms<T> loss_terms(const Box<T>& a, const Box<T>& b, BoxLoss kind,
                                         T eps) {
  LossTerms<T> t;
  t.ix1 = max_of(a.x1, b.x1), t.iy1 = max_of(a.y1, b.y1);
  t.ix2 = min_of(a.x2, b.x2), t.iy2 = min_of(a.y2, b.y2);
  t.overlaps = t.iy2 > t.iy1 && t.ix2 > t.ix1;
  t.inter = t.overlaps ? mul(sub(t.ix2, t.ix1), sub(t.iy2, t.iy1)) : T(0);
  t.uni = sub(add(box_area(a), box_area(b)), t.inter);
  t.iou = t.inter / add(t.uni, eps);
  t.cw = sub(max_of(a.x2, b.x2), min_of(a.x1, b.x1));
  t.ch = sub(max_of(a.y2, b.y2), min_of(a.y1, b.y1));
  t.dx = sub(add(a.x2, a.x1) / T(2), add(b.x1, b.x2) / T(2));
  t.dy = sub(add(a.y2, a.y1) / T(2), add(b.y1, b.y2) / T(2));
  t.atan_a = t.atan_b = T(0);
  if (kind == BoxLoss::ciou) {
    t.atan_a = atan_of(sub(a.x2, a.x1) / sub(a.y2, a.y1));
    t.atan_b = atan_of(sub(b.x2, b.x1) / sub(b.y2, b.y1));
  }
  return t;
}

template <typename T>
CNNK_HOST_DEVICE T ciou_v(const LossTerms<T>& t) {
  const T d = sub(t.atan_b, t.atan_a);
  return mul(T(0.40528473456935108577551785283891), mul(d, d));  // 4 / pi^2
}

template <typename T>
CNNK_HOST_DEVICE T box_loss(const Box<T>& a, const Box<T>& b, BoxLoss kind, T eps) {
  const LossTerms<T> t = loss_terms(a, b, kind, eps);
  if (kind == BoxLoss::giou) {
    const T enclosing = mul(t.cw, t.ch);
    return sub(T(1), sub(t.iou, sub(enclosing, t.uni) / add(enclosing, eps)));
  }
  const T diagonal = add(add(mul(t.cw, t.cw), mul(t.ch, t.ch)), eps);
  const T diou = add(sub(T(1), t.iou), add(mul(t.dx, t.dx), mul(t.dy, t.dy)) / diagonal);
  if (kind == BoxLoss::diou) return diou;
  const T v = ciou_v(t);
  const T alpha = v / add(add(sub(T(1), t.iou), v), eps);
  return add(diou, mul(alpha, v));
}

// Gradient of max(u, w) (is_max) or min(u, w) into gu, gw as torch's
// maximum / minimum pass it: all to the larger (smaller), half each on a tie.
template <typename T>
CNNK_HOST_DEVICE void extremum_grad(T u, T w, T g, bool is_max, T& gu, T& gw) {
  if (u == w) {
    gu += g / T(2), gw += g / T(2);
  } else if ((u > w) == is_max) {
    gu += g;
  } else {
    gw += g;
  }
}

// d loss / d a and d loss / d b times g, the reverse of box_loss through
// torch's derivative of each operation (alpha held constant, as torchvision's
// no_grad block does).
template <typename T>
CNNK_HOST_DEVICE void box_loss_grad(const Box<T>& a, const Box<T>& b, BoxLoss kind, T eps, T g,
                                    Box<T>& ga, Box<T>& gb) {
  const LossTerms<T> t = loss_terms(a, b, kind, eps);
  ga = {T(0), T(0), T(0), T(0)};
  gb = ga;
  const T den = t.uni + eps;
  T g_inter = -g / den;                    // loss = ... - inter / (union + eps)
  T g_uni = g * t.inter / (den * den);
  T g_cw = T(0), g_ch = T(0);
  if (kind == BoxLoss::giou) {             // + (C - union) / (C + eps)
    const T enclosing = t.cw * t.ch, den_c = enclosing + eps;
    const T g_num = g / den_c;
    const T g_enclosing = g_num - g * (enclosing - t.uni) / (den_c * den_c);
    g_uni -= g_num;
    g_cw = g_enclosing * t.ch, g_ch = g_enclosing * t.cw;
  } else {                                 // + (dx^2 + dy^2) / (cw^2 + ch^2 + eps)
    const T diagonal = t.cw * t.cw + t.ch * t.ch + eps;
    const T distance = t.dx * t.dx + t.dy * t.dy;
    const T g_distance = g / diagonal, g_diagonal = -g * distance / (diagonal * diagonal);
    g_cw = g_diagonal * T(2) * t.cw, g_ch = g_diagonal * T(2) * t.ch;
    const T g_dx = g_distance * T(2) * t.dx / T(2), g_dy = g_distance * T(2) * t.dy / T(2);
    ga.x1 += g_dx, ga.x2 += g_dx, gb.x1 -= g_dx, gb.x2 -= g_dx;
    ga.y1 += g_dy, ga.y2 += g_dy, gb.y1 -= g_dy, gb.y2 -= g_dy;
    if (kind == BoxLoss::ciou) {           // + alpha v
      const T v = ciou_v(t);
      const T alpha = v / (T(1) - t.iou + v + eps);
      const T g_d = g * alpha * T(0.40528473456935108577551785283891) * T(2) *
                    (t.atan_b - t.atan_a);
      const T wa = a.x2 - a.x1, ha = a.y2 - a.y1, wb = b.x2 - b.x1, hb = b.y2 - b.y1;
      const T ra = wa / ha, rb = wb / hb;
      const T g_ra = -g_d / (T(1) + ra * ra), g_rb = g_d / (T(1) + rb * rb);
      const T g_wa = g_ra / ha, g_ha = -g_ra * wa / (ha * ha);
      const T g_wb = g_rb / hb, g_hb = -g_rb * wb / (hb * hb);
      ga.x2 += g_wa, ga.x1 -= g_wa, ga.y2 += g_ha, ga.y1 -= g_ha;
      gb.x2 += g_wb, gb.x1 -= g_wb, gb.y2 += g_hb, gb.y1 -= g_hb;
    }
  }
  g_inter -= g_uni;                        // union = area_a + area_b - inter
  ga.x2 += g_uni * (a.y2 - a.y1), ga.x1 -= g_uni * (a.y2 - a.y1);
  ga.y2 += g_uni * (a.x2 - a.x1), ga.y1 -= g_uni * (a.x2 - a.x1);
  gb.x2 += g_uni * (b.y2 - b.y1), gb.x1 -= g_uni * (b.y2 - b.y1);
  gb.y2 += g_uni * (b.x2 - b.x1), gb.y1 -= g_uni * (b.x2 - b.x1);
  if (t.overlaps) {
    const T g_w = g_inter * (t.iy2 - t.iy1), g_h = g_inter * (t.ix2 - t.ix1);
    extremum_grad(a.x2, b.x2, g_w, false, ga.x2, gb.x2);
    extremum_grad(a.x1, b.x1, -g_w, true, ga.x1, gb.x1);
    extremum_grad(a.y2, b.y2, g_h, false, ga.y2, gb.y2);
    extremum_grad(a.y1, b.y1, -g_h, true, ga.y1, gb.y1);
  }
  extremum_grad(a.x2, b.x2, g_cw, true, ga.x2, gb.x2);
  extremum_grad(a.x1, b.x1, -g_cw, false, ga.x1, gb.x1);
  extremum_grad(a.y2, b.y2, g_ch, true, ga.y2, gb.y2);
  extremum_grad(a.y1, b.y1, -g_ch, false, ga.y1, gb.y1);
}

}  // namespace cnnk
