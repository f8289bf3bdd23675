// detection, C++ CPU kernels: IoU matrices, the IoU losses (forward and
// gradient) and greedy NMS, on the box math of cnnk/boxes.h (OpenMP through
// cnnk/cpu_types.h: serial below a work threshold, else dynamic chunks).
//
// box_iou: one task per (b, n) row of the output; the row's box and area
// are loaded once, each boxes2 box once per row. Bound: B N M IoUs of ~12
// flops, writes B N M elements; reads boxes2 from cache.
//
// box_iou_loss_forward / _backward: one task per chunk of pairs; each pair
// independent (ciou: two atans). Bound: memory, 32 bytes of boxes per pair.
//
// nms: the greedy pass of torchvision's cpu kernel. The boxes are gathered
// in visiting order into arrays of x1, y1, x2, y2 and area (accumulator
// type), cut into class segments (one segment without classes). Within a
// segment, each box not yet removed is kept and its row of the upper
// triangle of the suppression mask is computed on the spot, over the
// segment's later boxes, and OR-ed into their removed flags (bytes): one
// branch-free pass over contiguous arrays, which the compiler vectorises
// (8x faster than a loop of 64-bit mask words with a test per box). Only
// kept boxes' rows are computed and none is stored. Segments (classes) are
// independent tasks; one segment runs on one thread.
// Bound: K x n_c IoU tests per class (K kept boxes), memory O(N) (the
// gathered boxes and a removed flag per box).
//
// soft_nms: serial, step by step (each selection needs the last one's
// decays): an argmax scan, then one branch-free decay pass. Bound: K x N
// IoUs for K selections. matrix_nms: the boxes gathered in score order,
// then two passes with one task per box (the compensating IoUs, the
// decays), each reading the boxes above it. Bound: N^2 / 2 IoUs per pass.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cnnk/cpu_types.h"
#include "cnnk/detection.h"

namespace cnnk::cpu {
namespace {

template <typename T, int R>
acc_t<T> load(const TensorN<R>& t, int64_t i, int64_t j) {
  return to_acc(static_cast<const T*>(t.data)[i * t.stride[0] + j * t.stride[1]]);
}

template <typename T>
Box<acc_t<T>> load_box(const TensorN<2>& t, int64_t i) {
  return {load<T>(t, i, 0), load<T>(t, i, 1), load<T>(t, i, 2), load<T>(t, i, 3)};
}

template <typename T>
Box<acc_t<T>> load_box3(const TensorN<3>& t, int64_t b, int64_t i) {
  const T* p = static_cast<const T*>(t.data) + b * t.stride[0] + i * t.stride[1];
  const int64_t s = t.stride[2];
  return {to_acc(p[0]), to_acc(p[s]), to_acc(p[2 * s]), to_acc(p[3 * s])};
}

template <typename T>
void store_box(const TensorN<2>& t, int64_t i, const Box<acc_t<T>>& v) {
  T* p = static_cast<T*>(t.data) + i * t.stride[0];
  const int64_t s = t.stride[1];
  p[0] = from_acc<T>(v.x1), p[s] = from_acc<T>(v.y1), p[2 * s] = from_acc<T>(v.x2);
  p[3 * s] = from_acc<T>(v.y2);
}

template <typename T>
Status box_iou_impl(const BoxPairGeometry& g, TensorN<3> b1, TensorN<3> b2, TensorN<3> out) {
  using A = acc_t<T>;
  return parallel_tasks<A>(g.B * g.N, 0, [&](int64_t row, A*) {
    const int64_t b = row / g.N, n = row % g.N;
    const Box<A> a = load_box3<T>(b1, b, n);
    const A area_a = box_area(a);
    T* o = static_cast<T*>(out.data) + b * out.stride[0] + n * out.stride[1];
    for (int64_t m = 0; m < g.M; ++m) {
      const Box<A> c = load_box3<T>(b2, b, m);
      const Overlap<A> ov = box_overlap(a, area_a, c, box_area(c));
      o[m * out.stride[2]] = from_acc<T>(g.generalized ? giou_value(a, c, ov) : iou_value(ov));
    }
  }, 12 * g.M + 1);
}

template <typename T>
Status loss_forward_impl(const BoxLossGeometry& g, TensorN<2> b1, TensorN<2> b2, Tensor1 loss) {
  using A = acc_t<T>;
  const A eps = static_cast<A>(g.eps);
  return parallel_tasks<A>(g.P, 0, [&](int64_t p, A*) {
    static_cast<T*>(loss.data)[p * loss.stride] =
        from_acc<T>(box_loss(load_box<T>(b1, p), load_box<T>(b2, p), g.kind, eps));
  }, 64);
}

template <typename T>
Status loss_backward_impl(const BoxLossGeometry& g, Tensor1 grad, TensorN<2> b1, TensorN<2> b2,
                          TensorN<2> g1, TensorN<2> g2) {
  using A = acc_t<T>;
  const A eps = static_cast<A>(g.eps);
  return parallel_tasks<A>(g.P, 0, [&](int64_t p, A*) {
    Box<A> ga, gb;
    box_loss_grad(load_box<T>(b1, p), load_box<T>(b2, p), g.kind, eps,
                  to_acc(static_cast<const T*>(grad.data)[p * grad.stride]), ga, gb);
    store_box<T>(g1, p, ga);
    store_box<T>(g2, p, gb);
  }, 128);
}

// The boxes in visiting order, as arrays of the accumulator type.
template <typename A>
struct SortedBoxes {
  std::vector<A> x1, y1, x2, y2, area;
  explicit SortedBoxes(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {}
  Box<A> box(int64_t p) const { return {x1[p], y1[p], x2[p], y2[p]}; }
};

// Greedy NMS of the segment [lo, hi) of the visiting order: each box not
// yet removed is kept and removes the later boxes it overlaps. The row of a
// kept box is one branch-free pass over the later boxes' arrays (the
// compiler vectorises it), flags as bytes.
template <typename A>
void nms_segment(const NmsGeometry& g, const SortedBoxes<A>& s, int64_t lo, int64_t hi,
                 uint8_t* removed, uint8_t* kept, int64_t kept_stride) {
  const float threshold_f32 = static_cast<float>(g.iou_threshold_f32);
  const A *x1 = s.x1.data(), *y1 = s.y1.data(), *x2 = s.x2.data(), *y2 = s.y2.data();
  const A* area = s.area.data();
  for (int64_t i = lo; i < hi; ++i) {
    kept[i * kept_stride] = !removed[i];
    if (removed[i]) continue;
    const Box<A> a = s.box(i);
    const A area_a = area[i];
    for (int64_t j = i + 1; j < hi; ++j) {
      const Overlap<A> o = box_overlap(a, area_a, Box<A>{x1[j], y1[j], x2[j], y2[j]}, area[j]);
      removed[j] |= static_cast<uint8_t>(iou_exceeds(o, g.iou_threshold, threshold_f32));
    }
  }
}

template <typename T>
Status nms_impl(const NmsGeometry& g, TensorN<2> boxes, Tensor1 order, Tensor1 classes,
                Tensor1 kept) {
  using A = acc_t<T>;
  const int64_t* ord = static_cast<const int64_t*>(order.data);
  const int64_t* cls = static_cast<const int64_t*>(classes.data);
  SortedBoxes<A> s(g.N);
  std::vector<int64_t> starts{0};  // segment boundaries in the visiting order
  int64_t previous = 0;
  for (int64_t p = 0; p < g.N; ++p) {
    const int64_t index = ord[p * order.stride];
    if (index < 0 || index >= g.N) return Status::bad_argument;
    const Box<A> b = load_box<T>(boxes, index);
    s.x1[p] = b.x1, s.y1[p] = b.y1, s.x2[p] = b.x2, s.y2[p] = b.y2, s.area[p] = box_area(b);
    if (g.by_class) {
      const int64_t c = cls[index * classes.stride];
      if (p > 0 && c != previous) starts.push_back(p);
      previous = c;
    }
  }
  starts.push_back(g.N);
  std::vector<uint8_t> removed(static_cast<size_t>(g.N), 0);
  uint8_t* flags = static_cast<uint8_t*>(kept.data);
  const int64_t segments = static_cast<int64_t>(starts.size()) - 1;
  const int64_t mean = g.N / (segments > 0 ? segments : 1);
  return parallel_tasks<A>(segments, 0, [&](int64_t k, A*) {
    nms_segment(g, s, starts[k], starts[k + 1], removed.data(), flags, kept.stride);
  }, 4 * mean * mean + 1);
}

// Soft-NMS: serial selection (each step needs the last one's decays); the
// decay of the remaining scores is one branch-free pass.
template <typename T>
Status soft_nms_impl(const SoftNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                     Tensor1 selected, Tensor1 selected_scores, Tensor1 count) {
  using A = acc_t<T>;
  const A lowest = -std::numeric_limits<A>::infinity();
  SortedBoxes<A> s(g.N);
  std::vector<A> score(static_cast<size_t>(g.N));
  for (int64_t i = 0; i < g.N; ++i) {
    const Box<A> b = load_box<T>(boxes, i);
    s.x1[i] = b.x1, s.y1[i] = b.y1, s.x2[i] = b.x2, s.y2[i] = b.y2, s.area[i] = box_area(b);
    const A v = to_acc(static_cast<const T*>(scores.data)[i * scores.stride]);
    score[i] = std::isnan(v) ? lowest : v;
  }
  const A threshold = static_cast<A>(g.iou_threshold), sigma = static_cast<A>(g.sigma);
  int64_t k = 0;
  for (; k < g.N; ++k) {
    int64_t m = -1;
    A best = lowest;
    for (int64_t i = 0; i < g.N; ++i)
      if (score[i] > best) best = score[i], m = i;
    if (m < 0 || best < static_cast<A>(g.score_threshold)) break;
    static_cast<int64_t*>(selected.data)[k * selected.stride] = m;
    static_cast<T*>(selected_scores.data)[k * selected_scores.stride] = from_acc<T>(best);
    score[m] = lowest;
    const Box<A> a = s.box(m);
    for (int64_t i = 0; i < g.N; ++i) {
      const A iou = iou_value(box_overlap(a, s.area[m], s.box(i), s.area[i]));
      const A decayed = score[i] * soft_nms_decay(iou, g.gaussian, threshold, sigma);
      score[i] = score[i] > lowest ? decayed : score[i];
    }
  }
  static_cast<int64_t*>(count.data)[0] = k;
  return Status::ok;
}

// Matrix NMS: the compensating IoUs, then the decays; each box (column) a
// task, reading the boxes above it in score order.
template <typename T>
Status matrix_nms_impl(const MatrixNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                       Tensor1 order, Tensor1 classes, Tensor1 decayed) {
  using A = acc_t<T>;
  const int64_t* ord = static_cast<const int64_t*>(order.data);
  SortedBoxes<A> s(g.N);
  std::vector<int64_t> cls(static_cast<size_t>(g.N), 0);
  std::vector<A> compensate(static_cast<size_t>(g.N));
  for (int64_t p = 0; p < g.N; ++p) {
    const int64_t index = ord[p * order.stride];
    if (index < 0 || index >= g.N) return Status::bad_argument;
    const Box<A> b = load_box<T>(boxes, index);
    s.x1[p] = b.x1, s.y1[p] = b.y1, s.x2[p] = b.x2, s.y2[p] = b.y2, s.area[p] = box_area(b);
    if (g.by_class) cls[p] = static_cast<const int64_t*>(classes.data)[index * classes.stride];
  }
  auto iou = [&](int64_t i, int64_t j) {
    return cls[i] == cls[j] ? iou_value(box_overlap(s.box(i), s.area[i], s.box(j), s.area[j]))
                            : A(0);
  };
  const int64_t work = 6 * g.N + 1;
  if (Status st = parallel_tasks<A>(g.N, 0, [&](int64_t p, A*) {
        A most = 0;
        for (int64_t k = 0; k < p; ++k) most = max_of(most, iou(k, p));
        compensate[p] = most;
      }, work); st != Status::ok)
    return st;
  const A sigma = static_cast<A>(g.sigma);
  return parallel_tasks<A>(g.N, 0, [&](int64_t p, A*) {
    A decay = 1;
    for (int64_t i = 0; i < p; ++i)
      decay = min_of(decay, matrix_nms_decay(iou(i, p), compensate[i], g.gaussian, sigma));
    const int64_t index = ord[p * order.stride];
    const A v = to_acc(static_cast<const T*>(scores.data)[index * scores.stride]);
    static_cast<T*>(decayed.data)[index * decayed.stride] = from_acc<T>(v * decay);
  }, work);
}

// YOLO decoding: one task per (image, cell row); each prediction reads its
// 5 + C logits and writes its box and C scores.
template <typename T>
Status yolo_impl(const YoloGeometry& g, Tensor4 head, TensorN<2> anchors, TensorN<3> boxes,
                 TensorN<3> scores) {
  using A = acc_t<T>;
  const T* h = static_cast<const T*>(head.data);
  const A stride = static_cast<A>(g.stride);
  return parallel_tasks<A>(g.B * g.H, 0, [&](int64_t task, A*) {
    const int64_t b = task / g.H, y = task % g.H;
    for (int64_t x = 0; x < g.W; ++x) {
      for (int64_t a = 0; a < g.A; ++a) {
        const int64_t row = (y * g.W + x) * g.A + a;
        auto logit = [&](int64_t k) {
          return to_acc(h[head.stride.offset(b, y, x, a * (5 + g.C) + k)]);
        };
        yolo_store<T>(logit, x, y, load<T>(anchors, a, 0), load<T>(anchors, a, 1), stride, g.C,
                      boxes, scores, b, row, [](A v) { return from_acc<T>(v); });
      }
    }
  }, g.W * g.A * (g.C + 30) + 1);
}

template <typename Run>
Status launch(DType dtype, bool empty, bool have_data, Run run) {
  if (empty) return Status::ok;
  if (!have_data) return Status::bad_argument;
  return dispatch_dtype(dtype, run);
}

}  // namespace

Status box_iou(DType dtype, const BoxPairGeometry& g, TensorN<3> boxes1, TensorN<3> boxes2,
               TensorN<3> out) {
  if (g.B < 0 || g.N < 0 || g.M < 0) return Status::bad_argument;
  return launch(dtype, g.B * g.N * g.M == 0, boxes1.data && boxes2.data && out.data,
                [&](auto type) {
                  return box_iou_impl<typename decltype(type)::type>(g, boxes1, boxes2, out);
                });
}

Status box_iou_loss_forward(DType dtype, const BoxLossGeometry& g, TensorN<2> boxes1,
                            TensorN<2> boxes2, Tensor1 loss) {
  if (g.P < 0) return Status::bad_argument;
  return launch(dtype, g.P == 0, boxes1.data && boxes2.data && loss.data, [&](auto type) {
    return loss_forward_impl<typename decltype(type)::type>(g, boxes1, boxes2, loss);
  });
}

Status box_iou_loss_backward(DType dtype, const BoxLossGeometry& g, Tensor1 grad_loss,
                             TensorN<2> boxes1, TensorN<2> boxes2, TensorN<2> grad1,
                             TensorN<2> grad2) {
  if (g.P < 0) return Status::bad_argument;
  const bool have = grad_loss.data && boxes1.data && boxes2.data && grad1.data && grad2.data;
  return launch(dtype, g.P == 0, have, [&](auto type) {
    return loss_backward_impl<typename decltype(type)::type>(g, grad_loss, boxes1, boxes2,
                                                             grad1, grad2);
  });
}

Status nms(DType dtype, const NmsGeometry& g, TensorN<2> boxes, Tensor1 order, Tensor1 classes,
           Workspace /*workspace*/, Tensor1 kept) {
  if (g.N < 0 || g.words != ceil_div(g.N, kNmsBlock)) return Status::bad_argument;
  const bool have = boxes.data && order.data && kept.data && (!g.by_class || classes.data);
  return launch(dtype, g.N == 0, have, [&](auto type) {
    return nms_impl<typename decltype(type)::type>(g, boxes, order, classes, kept);
  });
}

Status soft_nms(DType dtype, const SoftNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                Workspace /*workspace*/, Tensor1 selected, Tensor1 selected_scores,
                Tensor1 count) {
  if (g.N < 0) return Status::bad_argument;
  const bool have =
      boxes.data && scores.data && selected.data && selected_scores.data && count.data;
  if (g.N == 0) {
    if (count.data == nullptr) return Status::bad_argument;
    static_cast<int64_t*>(count.data)[0] = 0;
    return Status::ok;
  }
  return launch(dtype, false, have, [&](auto type) {
    return soft_nms_impl<typename decltype(type)::type>(g, boxes, scores, selected,
                                                        selected_scores, count);
  });
}

Status matrix_nms(DType dtype, const MatrixNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                  Tensor1 order, Tensor1 classes, Workspace /*workspace*/, Tensor1 decayed) {
  if (g.N < 0) return Status::bad_argument;
  const bool have = boxes.data && scores.data && order.data && decayed.data &&
                    (!g.by_class || classes.data);
  return launch(dtype, g.N == 0, have, [&](auto type) {
    return matrix_nms_impl<typename decltype(type)::type>(g, boxes, scores, order, classes,
                                                          decayed);
  });
}

Status yolo_decode(DType dtype, const YoloGeometry& g, Tensor4 head, TensorN<2> anchors,
                   TensorN<3> boxes, TensorN<3> scores) {
  if (g.B < 0 || g.H < 0 || g.W < 0 || g.A < 0 || g.C < 0) return Status::bad_argument;
  const bool have = head.data && anchors.data && boxes.data && scores.data;
  return launch(dtype, g.B * g.H * g.W * g.A == 0, have, [&](auto type) {
    return yolo_impl<typename decltype(type)::type>(g, head, anchors, boxes, scores);
  });
}

}  // namespace cnnk::cpu
