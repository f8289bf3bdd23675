// detection, CUDA: IoU matrices, the IoU losses (forward and gradient) and
// NMS, for f16, bf16, f32 (float accumulators) and f64 (double), on the box
// math of cnnk/boxes.h (shared with the CPU kernels). Boxes are read
// through their strides; no atomics: every output has one writer.
//
// box_iou_kernel<T, kGeneralized>: one thread per output element (b, n, m),
// m fastest, so a warp writes 32 consecutive elements of a row and reads 32
// consecutive boxes2 boxes; the boxes1 box is a broadcast load. Bound:
// writes B N M elements (the roofline: the output write), reads boxes from
// L1/L2.
//
// box_loss_kernel<T> / box_loss_grad_kernel<T>: one thread per pair of
// boxes. Bound: memory (32 bytes of boxes per pair in f32, 2 x 16 written
// by the gradient).
//
// nms: two kernels over the boxes in visiting order (`order`, int64):
//   nms_mask_kernel<T>: the upper triangle of the N x N IoU bitmask, tiled
//     64 x 64: block (column tile, row tile) of 64 threads, one row each;
//     the tile's 64 column boxes are gathered through `order` into shared
//     memory; thread r writes word mask[r][column tile], bit c set when box
//     c (> r, same class) has IoU > threshold with box r. Tiles below the
//     diagonal return at once; tiles with no two boxes of one class (classes
//     sorted: class of the first column > class of the last row) write zero
//     words without an IoU. Bound: N^2 / 2 IoU tests, N^2 / 8 bytes written.
//   nms_reduce_kernel: the greedy pass on the device, one block of 256
//     threads, no copy to the host: for each row tile b, the 64 diagonal
//     words are loaded into shared memory in parallel, one thread walks the
//     64 rows in order (a row not removed is kept and removes its word's
//     bits), then all threads OR the kept rows' words past b into the
//     removed bits in global memory. Bound: the mask's words of kept rows
//     past the diagonal; N / 64 block barriers.
// soft_nms_kernel<T>: one block of 256 threads (soft-NMS is sequential):
//   per step a block-wide argmax in shared memory (the first maximum), the
//   selection written by thread 0, then every thread decays its strided
//   share of the running scores (global scratch). Bound: K x N IoUs, one SM.
// matrix_nms_kernel<T, kDecay>: one thread per box of the score order, two
//   launches (the compensating IoUs, then the decays and decayed scores);
//   a warp reads each box above it as a broadcast. Bound: N^2 / 2 IoUs each.
// Limits: N < 2^31 - 64 and at most 65535 row tiles (N <= 4,194,240);
// the mask needs nms_workspace_bytes (N^2 / 8 bytes): per-class tiles are
// computed only within a class, but stored for all N.
#include <cstdint>

#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/detection.h"

namespace cnnk {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kReduceThreads = 256;

CNNK_HOST_DEVICE int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T>
__device__ __forceinline__ Box<acc_t<T>> load_box(const T* base, int64_t s) {
  return {load(base, 0), load(base, s), load(base, 2 * s), load(base, 3 * s)};
}

template <typename T, bool kGeneralized>
__global__ void __launch_bounds__(kThreads) box_iou_kernel(BoxPairGeometry g, TensorN<3> b1,
                                                           TensorN<3> b2, TensorN<3> out) {
  using A = acc_t<T>;
  const int64_t total = g.B * g.N * g.M;
  for (int64_t e = blockIdx.x * int64_t{kThreads} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * kThreads) {
    const int64_t m = e % g.M, bn = e / g.M, n = bn % g.N, b = bn / g.N;
    const Box<A> a = load_box(static_cast<const T*>(b1.data) + b * b1.stride[0] +
                                  n * b1.stride[1], b1.stride[2]);
    const Box<A> c = load_box(static_cast<const T*>(b2.data) + b * b2.stride[0] +
                                  m * b2.stride[1], b2.stride[2]);
    const Overlap<A> o = box_overlap(a, box_area(a), c, box_area(c));
    const A v = kGeneralized ? giou_value(a, c, o) : iou_value(o);
    static_cast<T*>(out.data)[b * out.stride[0] + n * out.stride[1] + m * out.stride[2]] =
        from_acc<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) box_loss_kernel(BoxLossGeometry g, TensorN<2> b1,
                                                            TensorN<2> b2, Tensor1 loss) {
  using A = acc_t<T>;
  const int64_t p = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  if (p >= g.P) return;
  const Box<A> a = load_box(static_cast<const T*>(b1.data) + p * b1.stride[0], b1.stride[1]);
  const Box<A> b = load_box(static_cast<const T*>(b2.data) + p * b2.stride[0], b2.stride[1]);
  static_cast<T*>(loss.data)[p * loss.stride] =
      from_acc<T>(box_loss(a, b, g.kind, static_cast<A>(g.eps)));
}

template <typename T>
__device__ __forceinline__ void store_box(T* p, int64_t s, const Box<acc_t<T>>& v) {
  p[0] = from_acc<T>(v.x1), p[s] = from_acc<T>(v.y1), p[2 * s] = from_acc<T>(v.x2);
  p[3 * s] = from_acc<T>(v.y2);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) box_loss_grad_kernel(
    BoxLossGeometry g, Tensor1 grad, TensorN<2> b1, TensorN<2> b2, TensorN<2> g1,
    TensorN<2> g2) {
  using A = acc_t<T>;
  const int64_t p = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  if (p >= g.P) return;
  const Box<A> a = load_box(static_cast<const T*>(b1.data) + p * b1.stride[0], b1.stride[1]);
  const Box<A> b = load_box(static_cast<const T*>(b2.data) + p * b2.stride[0], b2.stride[1]);
  Box<A> ga, gb;
  box_loss_grad(a, b, g.kind, static_cast<A>(g.eps),
                load(static_cast<const T*>(grad.data), p * grad.stride), ga, gb);
  store_box(static_cast<T*>(g1.data) + p * g1.stride[0], g1.stride[1], ga);
  store_box(static_cast<T*>(g2.data) + p * g2.stride[0], g2.stride[1], gb);
}

struct NmsArgs {
  NmsGeometry g;
  TensorN<2> boxes;
  const int64_t* order;
  int64_t order_stride;
  const int64_t* classes;  // null without classes
  int64_t classes_stride;
  unsigned long long* mask;     // N x words
  unsigned long long* removed;  // words
  uint8_t* kept;
  int64_t kept_stride;
};

__device__ __forceinline__ int64_t class_at(const NmsArgs& a, int64_t p) {
  return a.classes == nullptr ? 0 : __ldg(a.classes + __ldg(a.order + p * a.order_stride) *
                                                          a.classes_stride);
}

template <typename T>
__global__ void __launch_bounds__(kNmsBlock) nms_mask_kernel(NmsArgs a) {
  using A = acc_t<T>;
  const int row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (col_tile < row_tile) return;
  const int64_t row0 = int64_t{row_tile} * kNmsBlock, col0 = int64_t{col_tile} * kNmsBlock;
  const int rows = static_cast<int>(smaller(a.g.N - row0, kNmsBlock));
  const int cols = static_cast<int>(smaller(a.g.N - col0, kNmsBlock));
  __shared__ Box<A> tile[kNmsBlock];
  __shared__ A tile_area[kNmsBlock];
  __shared__ int64_t tile_class[kNmsBlock];
  const T* boxes = static_cast<const T*>(a.boxes.data);
  if (threadIdx.x < cols) {
    const int64_t index = __ldg(a.order + (col0 + threadIdx.x) * a.order_stride);
    tile[threadIdx.x] = load_box(boxes + index * a.boxes.stride[0], a.boxes.stride[1]);
    tile_area[threadIdx.x] = box_area(tile[threadIdx.x]);
    tile_class[threadIdx.x] = class_at(a, col0 + threadIdx.x);
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;
  const int64_t row = row0 + threadIdx.x;
  unsigned long long bits = 0;
  // Classes ascend along the order: a tile whose first column's class is
  // above the last row's holds no pair of one class.
  if (tile_class[0] <= class_at(a, row0 + rows - 1)) {
    const int64_t index = __ldg(a.order + row * a.order_stride);
    const Box<A> box = load_box(boxes + index * a.boxes.stride[0], a.boxes.stride[1]);
    const A area = box_area(box);
    const int64_t cls = class_at(a, row);
    const float threshold_f32 = static_cast<float>(a.g.iou_threshold_f32);
    for (int c = col_tile == row_tile ? threadIdx.x + 1 : 0; c < cols; ++c) {
      const bool suppress = tile_class[c] == cls &&
          iou_exceeds(box_overlap(box, area, tile[c], tile_area[c]), a.g.iou_threshold,
                      threshold_f32);
      bits |= static_cast<unsigned long long>(suppress) << c;
    }
  }
  a.mask[row * a.g.words + col_tile] = bits;
}

__global__ void __launch_bounds__(kReduceThreads) nms_reduce_kernel(NmsArgs a) {
  __shared__ unsigned long long diagonal[kNmsBlock];
  __shared__ unsigned long long kept_bits;
  const int64_t words = a.g.words;
  for (int64_t w = threadIdx.x; w < words; w += kReduceThreads) a.removed[w] = 0;
  __syncthreads();
  for (int64_t b = 0; b < words; ++b) {
    const int64_t row0 = b * kNmsBlock;
    const int rows = static_cast<int>(smaller(a.g.N - row0, kNmsBlock));
    if (threadIdx.x < rows) diagonal[threadIdx.x] = a.mask[(row0 + threadIdx.x) * words + b];
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long removed = a.removed[b], keep = 0;
      for (int k = 0; k < rows; ++k) {
        if (!((removed >> k) & 1ull)) {
          keep |= 1ull << k;
          removed |= diagonal[k];
        }
      }
      kept_bits = keep;
    }
    __syncthreads();
    const unsigned long long keep = kept_bits;
    if (threadIdx.x < rows) a.kept[(row0 + threadIdx.x) * a.kept_stride] =
          static_cast<uint8_t>((keep >> threadIdx.x) & 1ull);
    for (int64_t w = b + 1 + threadIdx.x; w < words; w += kReduceThreads) {
      unsigned long long bits = 0;
      for (unsigned long long k = keep; k != 0; k &= k - 1)
        bits |= a.mask[(row0 + __ffsll(static_cast<long long>(k)) - 1) * words + w];
      a.removed[w] |= bits;
    }
    __syncthreads();
  }
}

struct SoftNmsArgs {
  SoftNmsGeometry g;
  TensorN<2> boxes;
  Tensor1 scores, selected, selected_scores, count;
  void* work;  // N accumulators: the running scores
};

template <typename T>
__device__ __forceinline__ Box<acc_t<T>> box_at(const TensorN<2>& t, int64_t i) {
  return load_box(static_cast<const T*>(t.data) + i * t.stride[0], t.stride[1]);
}

// One block: each step, a block-wide argmax (first maximum), then every
// thread decays its strided share of the scores.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) soft_nms_kernel(SoftNmsArgs a) {
  using A = acc_t<T>;
  __shared__ A best_value[kReduceThreads];
  __shared__ int best_index[kReduceThreads];
  A* score = static_cast<A*>(a.work);
  const A lowest = -INFINITY;
  const int n = static_cast<int>(a.g.N);  // the launcher checks N < 2^31
  for (int i = threadIdx.x; i < n; i += kReduceThreads) {
    const A v = load(static_cast<const T*>(a.scores.data), int64_t{i} * a.scores.stride);
    score[i] = isnan(v) ? lowest : v;
  }
  __syncthreads();
  int k = 0;
  for (; k < n; ++k) {
    A best = lowest;
    int m = -1;
    for (int i = threadIdx.x; i < n; i += kReduceThreads)
      if (score[i] > best) best = score[i], m = i;
    best_value[threadIdx.x] = best, best_index[threadIdx.x] = m;
    __syncthreads();
#pragma unroll
    for (int half = kReduceThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) {
        const A v = best_value[threadIdx.x + half];
        const int i = best_index[threadIdx.x + half];
        if (i >= 0 && (v > best_value[threadIdx.x] ||
                       (v == best_value[threadIdx.x] &&
                        (best_index[threadIdx.x] < 0 || i < best_index[threadIdx.x]))))
          best_value[threadIdx.x] = v, best_index[threadIdx.x] = i;
      }
      __syncthreads();
    }
    best = best_value[0], m = best_index[0];
    __syncthreads();  // every thread has read the winner before the next step writes
    if (m < 0 || best < static_cast<A>(a.g.score_threshold)) break;
    if (threadIdx.x == 0) {
      static_cast<int64_t*>(a.selected.data)[int64_t{k} * a.selected.stride] = m;
      static_cast<T*>(a.selected_scores.data)[int64_t{k} * a.selected_scores.stride] =
          from_acc<T>(best);
    }
    const Box<A> box = box_at<T>(a.boxes, m);
    const A area = box_area(box);
    for (int i = threadIdx.x; i < n; i += kReduceThreads) {
      const Box<A> other = box_at<T>(a.boxes, i);
      const A iou = iou_value(box_overlap(box, area, other, box_area(other)));
      const A decay = soft_nms_decay(iou, a.g.gaussian, static_cast<A>(a.g.iou_threshold),
                                     static_cast<A>(a.g.sigma));
      score[i] = i == m ? lowest : (score[i] > lowest ? score[i] * decay : score[i]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) static_cast<int64_t*>(a.count.data)[0] = k;
}

struct MatrixNmsArgs {
  MatrixNmsGeometry g;
  TensorN<2> boxes;
  Tensor1 scores, order, classes, decayed;
  void* compensate;  // N accumulators
};

template <typename T>
__device__ __forceinline__ acc_t<T> matrix_iou(const MatrixNmsArgs& a, int64_t i, int64_t j) {
  const int64_t* order = static_cast<const int64_t*>(a.order.data);
  const int64_t bi = __ldg(order + i * a.order.stride), bj = __ldg(order + j * a.order.stride);
  if (a.g.by_class) {
    const int64_t* cls = static_cast<const int64_t*>(a.classes.data);
    if (__ldg(cls + bi * a.classes.stride) != __ldg(cls + bj * a.classes.stride)) return 0;
  }
  const Box<acc_t<T>> u = box_at<T>(a.boxes, bi), v = box_at<T>(a.boxes, bj);
  return iou_value(box_overlap(u, box_area(u), v, box_area(v)));
}

// One thread per box p of the score order: the largest IoU with a box above
// it (kDecay false), or its decay and decayed score (kDecay true). Threads
// of a warp read the same box i at once (a broadcast).
template <typename T, bool kDecay>
__global__ void __launch_bounds__(kThreads) matrix_nms_kernel(MatrixNmsArgs a) {
  using A = acc_t<T>;
  const int64_t p = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  if (p >= a.g.N) return;
  A* compensate = static_cast<A*>(a.compensate);
  A value = kDecay ? A(1) : A(0);
  for (int64_t i = 0; i < p; ++i) {
    const A iou = matrix_iou<T>(a, i, p);
    value = kDecay ? min_of(value, matrix_nms_decay(iou, compensate[i], a.g.gaussian,
                                                    static_cast<A>(a.g.sigma)))
                   : max_of(value, iou);
  }
  if (!kDecay) {
    compensate[p] = value;
    return;
  }
  const int64_t index = static_cast<const int64_t*>(a.order.data)[p * a.order.stride];
  const A v = load(static_cast<const T*>(a.scores.data), index * a.scores.stride);
  static_cast<T*>(a.decayed.data)[index * a.decayed.stride] = from_acc<T>(v * value);
}

// One thread per prediction (image, cell, anchor); its C scores written in
// a loop.
template <typename T>
__global__ void __launch_bounds__(kThreads) yolo_decode_kernel(YoloGeometry g, Tensor4 head,
                                                               TensorN<2> anchors,
                                                               TensorN<3> boxes,
                                                               TensorN<3> scores) {
  using A = acc_t<T>;
  const int64_t e = blockIdx.x * int64_t{kThreads} + threadIdx.x;
  if (e >= g.B * g.H * g.W * g.A) return;
  const int64_t a = e % g.A, cell = e / g.A, x = cell % g.W, y = (cell / g.W) % g.H;
  const int64_t b = cell / (g.W * g.H), row = e - b * g.H * g.W * g.A;
  const T* h = static_cast<const T*>(head.data);
  auto logit = [&](int64_t k) { return load(h, head.stride.offset(b, y, x, a * (5 + g.C) + k)); };
  const T* anchor = static_cast<const T*>(anchors.data) + a * anchors.stride[0];
  yolo_store<T>(logit, x, y, load(anchor, 0), load(anchor, anchors.stride[1]),
                static_cast<A>(g.stride), g.C, boxes, scores, b, row,
                [](A v) { return from_acc<T>(v); });
}

template <typename Run>
Status checked(DType dtype, bool empty, bool have_data, Run run) {
  if (!supported_dtype(dtype)) return Status::unsupported_dtype;
  if (empty) return Status::ok;
  if (!have_data) return Status::bad_argument;
  return dispatch_dtype(dtype, run);
}

int blocks_for(int64_t count) {
  return static_cast<int>(smaller(ceil_div(count, kThreads), int64_t{1} << 20));
}

}  // namespace

Status box_iou(DType dtype, const BoxPairGeometry& g, TensorN<3> boxes1, TensorN<3> boxes2,
               TensorN<3> out, cudaStream_t stream) {
  if (g.B < 0 || g.N < 0 || g.M < 0) return Status::bad_argument;
  if (!product_le({g.B, g.N, g.M}, INT64_MAX / 2)) return Status::index_overflow;
  return checked(dtype, g.B * g.N * g.M == 0, boxes1.data && boxes2.data && out.data,
                 [&](auto type) {
    using T = typename decltype(type)::type;
    const int blocks = blocks_for(g.B * g.N * g.M);
    if (g.generalized)
      box_iou_kernel<T, true><<<blocks, kThreads, 0, stream>>>(g, boxes1, boxes2, out);
    else
      box_iou_kernel<T, false><<<blocks, kThreads, 0, stream>>>(g, boxes1, boxes2, out);
    return launched();
  });
}

Status box_iou_loss_forward(DType dtype, const BoxLossGeometry& g, TensorN<2> boxes1,
                            TensorN<2> boxes2, Tensor1 loss, cudaStream_t stream) {
  if (g.P < 0) return Status::bad_argument;
  if (g.P > kIntMax) return Status::index_overflow;
  return checked(dtype, g.P == 0, boxes1.data && boxes2.data && loss.data, [&](auto type) {
    using T = typename decltype(type)::type;
    box_loss_kernel<T><<<ceil_div(g.P, kThreads), kThreads, 0, stream>>>(g, boxes1, boxes2, loss);
    return launched();
  });
}

Status box_iou_loss_backward(DType dtype, const BoxLossGeometry& g, Tensor1 grad_loss,
                             TensorN<2> boxes1, TensorN<2> boxes2, TensorN<2> grad1,
                             TensorN<2> grad2, cudaStream_t stream) {
  if (g.P < 0) return Status::bad_argument;
  if (g.P > kIntMax) return Status::index_overflow;
  const bool have = grad_loss.data && boxes1.data && boxes2.data && grad1.data && grad2.data;
  return checked(dtype, g.P == 0, have, [&](auto type) {
    using T = typename decltype(type)::type;
    box_loss_grad_kernel<T><<<ceil_div(g.P, kThreads), kThreads, 0, stream>>>(
        g, grad_loss, boxes1, boxes2, grad1, grad2);
    return launched();
  });
}

Status nms(DType dtype, const NmsGeometry& g, TensorN<2> boxes, Tensor1 order, Tensor1 classes,
           Workspace workspace, Tensor1 kept, cudaStream_t stream) {
  if (g.N < 0 || g.words != ceil_div(g.N, kNmsBlock)) return Status::bad_argument;
  if (g.words > kMaxGridY || g.N > kIntMax - kNmsBlock) return Status::index_overflow;
  if (g.N > 0 && static_cast<int64_t>(workspace.bytes) < nms_workspace_bytes(g))
    return Status::bad_argument;
  const bool have = boxes.data && order.data && kept.data && workspace.data &&
                    (!g.by_class || classes.data);
  return checked(dtype, g.N == 0, have, [&](auto type) {
    using T = typename decltype(type)::type;
    NmsArgs a{g, boxes, static_cast<const int64_t*>(order.data), order.stride,
              g.by_class ? static_cast<const int64_t*>(classes.data) : nullptr, classes.stride,
              static_cast<unsigned long long*>(workspace.data), nullptr,
              static_cast<uint8_t*>(kept.data), kept.stride};
    a.removed = a.mask + g.N * g.words;
    const dim3 grid(static_cast<unsigned>(g.words), static_cast<unsigned>(g.words));
    nms_mask_kernel<T><<<grid, kNmsBlock, 0, stream>>>(a);
    nms_reduce_kernel<<<1, kReduceThreads, 0, stream>>>(a);
    return launched();
  });
}

Status soft_nms(DType dtype, const SoftNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                Workspace workspace, Tensor1 selected, Tensor1 selected_scores, Tensor1 count,
                cudaStream_t stream) {
  if (g.N < 0) return Status::bad_argument;
  if (g.N > kIntMax) return Status::index_overflow;
  // Empty tensors have null data: with no box only the count is written.
  const bool have = count.data && (g.N == 0 || (boxes.data && scores.data && selected.data &&
                                                selected_scores.data && workspace.data));
  return checked(dtype, false, have, [&](auto type) {
    using T = typename decltype(type)::type;
    if (workspace.bytes < sizeof(acc_t<T>) * static_cast<size_t>(g.N)) return Status::bad_argument;
    soft_nms_kernel<T><<<1, kReduceThreads, 0, stream>>>(
        SoftNmsArgs{g, boxes, scores, selected, selected_scores, count, workspace.data});
    return launched();
  });
}

Status matrix_nms(DType dtype, const MatrixNmsGeometry& g, TensorN<2> boxes, Tensor1 scores,
                  Tensor1 order, Tensor1 classes, Workspace workspace, Tensor1 decayed,
                  cudaStream_t stream) {
  if (g.N < 0) return Status::bad_argument;
  if (g.N > kIntMax) return Status::index_overflow;
  const bool have = boxes.data && scores.data && order.data && decayed.data &&
                    workspace.data && (!g.by_class || classes.data);
  return checked(dtype, g.N == 0, have, [&](auto type) {
    using T = typename decltype(type)::type;
    if (workspace.bytes < sizeof(acc_t<T>) * static_cast<size_t>(g.N)) return Status::bad_argument;
    const MatrixNmsArgs a{g, boxes, scores, order, classes, decayed, workspace.data};
    const auto blocks = static_cast<unsigned>(ceil_div(g.N, kThreads));
    matrix_nms_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a);
    matrix_nms_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a);
    return launched();
  });
}

Status yolo_decode(DType dtype, const YoloGeometry& g, Tensor4 head, TensorN<2> anchors,
                   TensorN<3> boxes, TensorN<3> scores, cudaStream_t stream) {
  if (g.B < 0 || g.H < 0 || g.W < 0 || g.A < 0 || g.C < 0) return Status::bad_argument;
  if (!product_le({g.B, g.H, g.W, g.A}, kIntMax)) return Status::index_overflow;
  const int64_t predictions = g.B * g.H * g.W * g.A;
  const bool have = head.data && anchors.data && boxes.data && scores.data;
  return checked(dtype, predictions == 0, have, [&](auto type) {
    using T = typename decltype(type)::type;
    yolo_decode_kernel<T><<<static_cast<unsigned>(ceil_div(predictions, kThreads)), kThreads, 0,
                            stream>>>(g, head, anchors, boxes, scores);
    return launched();
  });
}

}  // namespace cuda
}  // namespace cnnk
