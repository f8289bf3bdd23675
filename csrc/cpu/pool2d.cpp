// pool2d (max and average, sliding or adaptive windows), C++ CPU kernels
// (OpenMP, scheduled by cnnk/cpu_types.h: serial below a work threshold,
// else dynamically taken chunks of items).
//
// Two layouts, chosen per call from the strides:
//   channels-contiguous (channels_last: every tensor's channel stride is 1,
//     C > 1): the loops run over the window's taps with the channels
//     innermost, so every inner loop is a contiguous, vectorisable pass over
//     C. Items: (n, output row) forward; backward (n, input row) for average
//     and for disjoint max windows, (n, channel block) for the max scatter.
//   planes (anything else; NCHW reads rows with unit stride): separable.
//     Forward reduces each needed input row over every output column's
//     window (a pass over the taps, vectorisable along the output columns),
//     then each output row over its window's rows (vectorisable along the
//     columns). Overlapping windows (SPP's 13x13 at stride 1) cost kw + kh
//     steps per element instead of kw * kh. Average backward is the
//     transpose: each needed output row spread over the input columns, then
//     each input row summed over its covering output rows. Items: (plane,
//     block of rows); planes are split only when there are too few for the
//     threads.
// Max backward goes through the indices. channels_last with sliding windows
// (adaptive ones too when the size divides) gathers: each input row is built
// alone from the windows that hold it, a compare-and-select pass over C per
// window tap. Otherwise each plane (channels_last: each image's channel
// block) is zeroed and the gradients scattered at their indices in output
// order; one item owns the plane, so no atomics. Only an index inside its
// window counts (as in the GPU gathers): a window with no tap inside the
// input (dilation) returns -inf and an index that is no element of it, and
// its output then passes no gradient.
//
// Numerics: elements load into float (double for float64), where the max
// compares and the average sums, and float16 / bfloat16 round once on store
// (cnnk/cpu_types.h). Sums run in an order fixed by the geometry and layout
// alone, never by the thread count: deterministic. The forward average
// divides by the window's divisor (as torch does); the backward multiplies by
// the reciprocal factors of each output row and column, computed once.
// Max keeps torch's tie rules in both layouts (the first maximum in row-major
// window order; the last NaN).
//
// Cost: memory-bound. Forward reads x once per needed row (channels_last:
// once per window tap, overlapping windows re-read from cache) and writes y
// (+ 8-byte indices); backward reads grad_y (+ indices) and writes grad_x
// once, plus a zero fill for overlapping max windows. Scratch per thread:
// planes: the row results of a block, O(rows * (Q + W)); channels_last:
// O(C), the max scatter of half types O(H * W * channel block). Limits: the
// Python layer checks sizes and strides; indices are int32 inside the
// kernels when a plane has fewer than 2^31 elements.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "cnnk/cpu_types.h"
#include "cnnk/pool2d.h"

namespace cnnk::cpu {
namespace {

constexpr int64_t kInt32Limit = int64_t{1} << 31;

// Divides indices in [0, 2^31) by a fixed divisor d <= 2^31 with a multiply
// and a shift (Granlund & Montgomery: with d <= 2^l, m = ceil(2^(31 + l) / d)
// is exact for every 31-bit dividend), anything else with a division: the max
// scatter splits every index into its row and column.
class FastDiv {
 public:
  explicit FastDiv(int64_t d) : d_(d), fast_(d <= kInt32Limit) {
    int l = 0;
    while (l < 31 && (int64_t{1} << l) < d) ++l;
    shift_ = 31 + l;
    m_ = fast_ ? ((uint64_t{1} << shift_) + static_cast<uint64_t>(d) - 1) / static_cast<uint64_t>(d)
               : 0;
  }
  int64_t operator()(int64_t i) const {
    return fast_ && i < kInt32Limit ? static_cast<int64_t>((static_cast<uint64_t>(i) * m_) >> shift_)
                                    : i / d_;
  }

 private:
  int64_t d_;
  bool fast_;
  int shift_;
  uint64_t m_;
};

bool in_window(const PoolWindow& win, int64_t i) {
  return i >= win.start && i < win.end && (win.step == 1 || (i - win.start) % win.step == 0);
}

// One tap of the sliding windows along a row: output column q reads input
// column q * stride + off, for q in [lo, hi) (the columns inside the input).
struct Tap {
  int64_t off, lo, hi;
};

// The taps that read any input, ascending (a window's order): only the j
// whose offset j * dil - pad lies in [-(out - 1) * stride, in), so a window
// far larger than the input costs nothing extra.
std::vector<Tap> sliding_taps(int64_t in, int64_t out, int64_t kernel, int64_t stride,
                              int64_t pad, int64_t dil) {
  const int64_t first = std::max<int64_t>(0, -floor_div((out - 1) * stride - pad, dil));
  const int64_t last = std::min(kernel, floor_div(in - 1 + pad, dil) + 1);
  std::vector<Tap> taps;
  for (int64_t j = first; j < last; ++j) {
    const int64_t off = j * dil - pad;
    const int64_t lo = off >= 0 ? 0 : ceil_div(-off, stride);
    const int64_t hi = std::min(out, floor_div(in - 1 - off, stride) + 1);
    if (lo < hi) taps.push_back({off, lo, hi});
  }
  return taps;
}

// What every item of a launch reads: the windows of each output row and
// column and the column taps, computed once.
struct Windows {
  std::vector<PoolWindow> rows, cols;
  std::vector<Tap> col_taps;  // sliding windows only
  int64_t max_rows = 0;       // the most rows a window spans (inside the input)
  int64_t max_cols = 0;

  explicit Windows(const Pool2dGeometry& g) : rows(g.P), cols(g.Q) {
    for (int64_t p = 0; p < g.P; ++p) {
      rows[p] = pool_window_rows(g, p);
      max_rows = std::max(max_rows, ceil_div(std::max<int64_t>(rows[p].end - rows[p].start, 0),
                                             rows[p].step));
    }
    for (int64_t q = 0; q < g.Q; ++q) {
      cols[q] = pool_window_cols(g, q);
      max_cols = std::max(max_cols, ceil_div(std::max<int64_t>(cols[q].end - cols[q].start, 0),
                                             cols[q].step));
    }
    if (!g.adaptive) col_taps = sliding_taps(g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w);
  }
};

// The input rows [lo, hi) that the windows of output rows [p0, p1) read. Not
// simply the first window's start: a dilated window's first tap inside the
// input moves back and forth as the window slides.
IndexRange rows_read(const Windows& win, int64_t p0, int64_t p1) {
  IndexRange range{INT64_MAX, 0};
  for (int64_t p = p0; p < p1; ++p)
    if (win.rows[p].start < win.rows[p].end) {
      range.lo = std::min(range.lo, win.rows[p].start);
      range.hi = std::max(range.hi, win.rows[p].end);
    }
  if (range.lo >= range.hi) range = {0, 0};
  return range;
}

// The most input rows that one block of output rows reads.
int64_t rows_read_max(const Windows& win, int64_t P, int64_t block) {
  int64_t most = 0;
  for (int64_t p0 = 0; p0 < P; p0 += block) {
    const IndexRange range = rows_read(win, p0, std::min(P, p0 + block));
    most = std::max(most, range.hi - range.lo);
  }
  return most;
}

// Calls f with the stride as a compile-time constant where it is 1 or 2 (the
// common strides: the inner loops then vectorise), else as it is.
template <typename F>
void with_stride(int64_t stride, F f) {
  if (stride == 1) return f(std::integral_constant<int64_t, 1>{});
  if (stride == 2) return f(std::integral_constant<int64_t, 2>{});
  f(stride);
}

// The n elements at src (element stride s) as accumulator values: src itself
// when it already is one (no copy), else converted into buf.
template <typename T>
const acc_t<T>* load_row(const T* src, int64_t s, int64_t n, acc_t<T>* buf) {
  if constexpr (std::is_same_v<T, acc_t<T>>)
    if (s == 1) return src;
  for (int64_t i = 0; i < n; ++i) buf[i] = to_acc(src[i * s]);
  return buf;
}

template <typename T>
void store_row(const acc_t<T>* src, int64_t n, T* dst, int64_t s) {
  for (int64_t i = 0; i < n; ++i) dst[i * s] = from_acc<T>(src[i]);
}

// Global pooling (one window, the whole plane) reduces each plane with
// kLanes (cnnk/cpu_types.h) interleaved partial results, combined in lane
// order at the end: an order fixed by the layout that vectorises (a single
// running sum or max would wait on its last step each element).
// A dense plane is read in pieces of kLoadChunk elements (converted into
// scratch for half types), else by rows.
constexpr int64_t kLoadChunk = 1024;

template <typename Acc>
void lane_sum(const Acc* __restrict__ v, int64_t n, Acc* __restrict__ lanes) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += v[i + k];
  for (int64_t k = 0; i < n; ++i, ++k) lanes[k] += v[i];
}

// Lane k keeps the max of its elements and its index (first + element);
// lane_max_result combines them with torch's rules: a NaN wins, the last
// NaN (the largest index) among NaNs, else the largest value and, on a tie,
// the smallest index.
template <typename Acc, typename Index>
void lane_max(const Acc* __restrict__ v, int64_t n, Index first, Acc* __restrict__ top,
              Index* __restrict__ at) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const Acc x = v[i + k];
      const bool take = (x > top[k]) | (x != x);
      top[k] = take ? x : top[k];
      at[k] = take ? static_cast<Index>(first + i + k) : at[k];
    }
  for (int64_t k = 0; i < n; ++i, ++k) {
    const Acc x = v[i];
    if (x > top[k] || std::isnan(x)) {
      top[k] = x;
      at[k] = static_cast<Index>(first + i);
    }
  }
}

template <typename Acc, typename Index>
void lane_max_result(const Acc* top, const Index* at, Acc& value, Index& index) {
  value = top[0];
  index = at[0];
  for (int64_t k = 1; k < kLanes; ++k) {
    const bool take = std::isnan(top[k])
                          ? !std::isnan(value) || at[k] > index
                          : !std::isnan(value) && (top[k] > value || (top[k] == value && at[k] < index));
    if (take) {
      value = top[k];
      index = at[k];
    }
  }
}

bool global_window(const Pool2dGeometry& g) { return g.adaptive && g.P == 1 && g.Q == 1; }

// Items of a plane loop: `planes` planes of `rows` rows each, split into
// blocks of rows only when the planes are too few to share among the threads.
struct PlaneItems {
  int64_t rows, block, blocks, count;
  PlaneItems(int64_t planes, int64_t rows_, int threads) : rows(rows_) {
    block = rows;
    if (threads > 1 && planes < int64_t{4} * threads)
      block = ceil_div(rows, std::min(rows, ceil_div(int64_t{4} * threads, planes)));
    blocks = ceil_div(rows, block);
    count = planes * blocks;
  }

  // Item `item`: the plane (n, c) of C channels and its rows [lo, hi).
  struct Item {
    int64_t n, c, lo, hi;
  };
  Item at(int64_t item, int64_t C) const {
    const int64_t nc = item / blocks, lo = item % blocks * block;
    return {nc / C, nc % C, lo, std::min(rows, lo + block)};
  }
};

// The work of a separable forward pass over planes: each input row over
// the column windows, each output row over its window's rows.
double plane_pass_work(const Pool2dGeometry& g, const Windows& win) {
  const int64_t taps_w = g.adaptive ? win.max_cols : static_cast<int64_t>(win.col_taps.size());
  return static_cast<double>(g.N * g.C) *
         static_cast<double>(g.H * (g.W + g.Q * taps_w) + g.P * g.Q * win.max_rows);
}

// Its parallel split: threads, items of output rows, the input rows an item
// reads at most and the work of one item.
struct PlanePass {
  double work;
  int threads;
  PlaneItems items;
  int64_t span, work_per_item;
  PlanePass(const Pool2dGeometry& g, const Windows& win)
      : work(plane_pass_work(g, win)),
        threads(parallel_threads(work, g.N * g.C * g.P)),
        items(g.N * g.C, g.P, threads),
        span(rows_read_max(win, g.P, items.block)),
        work_per_item(static_cast<int64_t>(work / static_cast<double>(items.count)) + 1) {}
};

// Channels-contiguous: every tensor's channel stride is 1 (channels_last
// and its views), with more than one channel to run along.
bool channels_inner(const Pool2dGeometry& g, std::initializer_list<const Tensor4*> tensors) {
  if (g.C < 2) return false;
  for (const Tensor4* t : tensors)
    if (t->data != nullptr && t->stride.c != 1) return false;
  return true;
}

// ---------------------------------------------------------------- max forward

// Planes, per block of output rows: each needed input row reduced over every
// column window (value and column), then each output row over its window's
// rows. The same rule in both passes (take a value greater than the best, or
// a NaN) gives torch's: rows ascending, columns ascending within a row.
template <typename T, typename Index>
Status max_forward_planes(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices,
                          const Windows& win) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  int64_t* ip = static_cast<int64_t*>(indices.data);
  const int64_t planes = g.N * g.C;
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  if (global_window(g)) {
    const int64_t plane = g.H * g.W;
    const bool dense = x.stride.w == 1 && x.stride.h == g.W;
    const int threads = parallel_threads(static_cast<double>(planes * plane), planes);
    const ThreadScratch<Acc> values(threads, std::max(g.W, kLoadChunk) + kLanes);
    const ThreadScratch<Index> index_scratch(threads, kLanes);
    if (!values.ok() || !index_scratch.ok()) return Status::out_of_memory;
    parallel_chunks(threads, planes, plane, [&](int64_t begin, int64_t end, int t) {
      Acc* top = values.of(t);
      Acc* buf = top + kLanes;
      Index* at = index_scratch.of(t);
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / g.C, c = nc % g.C;
        std::fill(top, top + kLanes, neg_inf);
        std::fill(at, at + kLanes, Index(0));
        const T* base = xp + x.stride.offset(n, c, 0, 0);
        if (dense) {
          for (int64_t i = 0; i < plane; i += kLoadChunk) {
            const int64_t size = std::min(kLoadChunk, plane - i);
            lane_max(load_row(base + i, 1, size, buf), size, static_cast<Index>(i), top, at);
          }
        } else {
          for (int64_t h = 0; h < g.H; ++h)
            lane_max(load_row(base + h * x.stride.h, x.stride.w, g.W, buf), g.W,
                     static_cast<Index>(h * g.W), top, at);
        }
        Acc value;
        Index index;
        lane_max_result(top, at, value, index);
        yp[y.stride.offset(n, c, 0, 0)] = from_acc<T>(value);
        if (ip) ip[indices.stride.offset(n, c, 0, 0)] = index;
      }
    });
    return Status::ok;
  }
  const PlanePass pass(g, win);
  const int threads = pass.threads;
  const PlaneItems& items = pass.items;
  const int64_t span = pass.span, work_per_item = pass.work_per_item;
  const int64_t values_size = span * g.Q + g.Q + g.W, index_size = span * g.Q + g.Q;
  const ThreadScratch<Acc> values(threads, values_size);
  const ThreadScratch<Index> index_scratch(threads, index_size);
  if (!values.ok() || !index_scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, items.count, work_per_item, [&](int64_t begin, int64_t end, int t) {
    Acc* rv = values.of(t);  // row results, span x Q
    Acc* best = rv + span * g.Q;
    Acc* buf = best + g.Q;
    Index* rc = index_scratch.of(t);
    Index* best_index = rc + span * g.Q;
    for (int64_t item = begin; item < end; ++item) {
      const PlaneItems::Item block = items.at(item, g.C);
      const int64_t n = block.n, c = block.c, p0 = block.lo, p1 = block.hi;
      const IndexRange read = rows_read(win, p0, p1);
      const int64_t h0 = read.lo, h1 = read.hi;
      for (int64_t h = h0; h < h1; ++h) {
        const Acc* row = load_row(xp + x.stride.offset(n, c, h, 0), x.stride.w, g.W, buf);
        Acc* v_out = rv + (h - h0) * g.Q;
        Index* c_out = rc + (h - h0) * g.Q;
        for (int64_t q = 0; q < g.Q; ++q) {
          v_out[q] = neg_inf;
          c_out[q] = static_cast<Index>(win.cols[q].start);
        }
        if (g.adaptive) {
          // In registers: through memory each step would wait on the last store.
          for (int64_t q = 0; q < g.Q; ++q) {
            Acc top = neg_inf;
            Index at = c_out[q];
            for (int64_t w = win.cols[q].start; w < win.cols[q].end; ++w) {
              const Acc v = row[w];
              if (v > top || std::isnan(v)) {
                top = v;
                at = static_cast<Index>(w);
              }
            }
            v_out[q] = top;
            c_out[q] = at;
          }
          continue;
        }
        with_stride(g.stride_w, [&](auto s) {
          for (const Tap& tap : win.col_taps)
            for (int64_t q = tap.lo; q < tap.hi; ++q) {
              const int64_t w = q * s + tap.off;
              const Acc v = row[w];
              // Branch-free (a blend), so that the loop vectorises.
              const bool take = (v > v_out[q]) | (v != v);
              v_out[q] = take ? v : v_out[q];
              c_out[q] = take ? static_cast<Index>(w) : c_out[q];
            }
        });
      }
      for (int64_t p = p0; p < p1; ++p) {
        const PoolWindow& rows = win.rows[p];
        for (int64_t q = 0; q < g.Q; ++q) {
          best[q] = neg_inf;
          best_index[q] = static_cast<Index>(rows.start * g.W + win.cols[q].start);
        }
        for (int64_t h = rows.start; h < rows.end; h += rows.step) {
          const Acc* __restrict__ v_in = rv + (h - h0) * g.Q;
          const Index* __restrict__ c_in = rc + (h - h0) * g.Q;
          Acc* __restrict__ top = best;
          Index* __restrict__ at = best_index;
          const Index base = static_cast<Index>(h * g.W);
          for (int64_t q = 0; q < g.Q; ++q) {
            const Acc v = v_in[q];
            const bool take = (v > top[q]) | (v != v);
            top[q] = take ? v : top[q];
            at[q] = take ? static_cast<Index>(base + c_in[q]) : at[q];
          }
        }
        store_row<T>(best, g.Q, yp + y.stride.offset(n, c, p, 0), y.stride.w);
        if (ip) {
          int64_t* out = ip + indices.stride.offset(n, c, p, 0);
          for (int64_t q = 0; q < g.Q; ++q) out[q * indices.stride.w] = best_index[q];
        }
      }
    }
  });
  return Status::ok;
}

// Channels innermost, per (n, output row): every output pixel's window taps
// in row-major order, each a pass over the channels.
template <typename T, typename Index>
Status max_forward_channels(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices,
                            const Windows& win) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  int64_t* ip = static_cast<int64_t*>(indices.data);
  const int64_t items = g.N * g.P, work = g.Q * g.C * win.max_rows * win.max_cols + g.Q * g.C;
  const int threads = parallel_threads(static_cast<double>(items) * static_cast<double>(work), items);
  const ThreadScratch<Acc> values(threads, g.C);
  const ThreadScratch<Index> index_scratch(threads, g.C);
  if (!values.ok() || !index_scratch.ok()) return Status::out_of_memory;
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  parallel_chunks(threads, items, work, [&](int64_t begin, int64_t end, int t) {
    Acc* best = values.of(t);
    Index* best_index = index_scratch.of(t);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.P, p = item % g.P;
      const PoolWindow& rows = win.rows[p];
      for (int64_t q = 0; q < g.Q; ++q) {
        const PoolWindow& cols = win.cols[q];
        const Index first = static_cast<Index>(rows.start * g.W + cols.start);
        for (int64_t c = 0; c < g.C; ++c) {
          best[c] = neg_inf;
          best_index[c] = first;
        }
        for (int64_t h = rows.start; h < rows.end; h += rows.step)
          for (int64_t w = cols.start; w < cols.end; w += cols.step) {
            const T* src = xp + x.stride.offset(n, 0, h, w);
            const Index tap = static_cast<Index>(h * g.W + w);
            for (int64_t c = 0; c < g.C; ++c) {
              const Acc v = to_acc(src[c]);
              const bool take = (v > best[c]) | (v != v);
              best[c] = take ? v : best[c];
              best_index[c] = take ? tap : best_index[c];
            }
          }
        store_row<T>(best, g.C, yp + y.stride.offset(n, 0, p, q), 1);
        if (ip) {
          int64_t* out = ip + indices.stride.offset(n, 0, p, q);
          for (int64_t c = 0; c < g.C; ++c) out[c] = best_index[c];
        }
      }
    }
  });
  return Status::ok;
}

template <typename T>
Status max_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, Tensor4 indices) {
  const Windows win(g);
  // int32 indices when every index, a window's first too (which may lie past
  // the input), fits.
  int64_t last_row = 0, last_col = 0;
  for (const PoolWindow& rows : win.rows) last_row = std::max(last_row, rows.start);
  for (const PoolWindow& cols : win.cols) last_col = std::max(last_col, cols.start);
  const bool small = (std::max(last_row, g.H) + 1) * g.W + last_col < kInt32Limit;
  if (channels_inner(g, {&x, &y, &indices}))
    return small ? max_forward_channels<T, int32_t>(g, x, y, indices, win)
                 : max_forward_channels<T, int64_t>(g, x, y, indices, win);
  return small ? max_forward_planes<T, int32_t>(g, x, y, indices, win)
               : max_forward_planes<T, int64_t>(g, x, y, indices, win);
}

// --------------------------------------------------------------- max backward

// channels_last with sliding windows is gathered: each input row (W x C) is
// built alone, zeroed, then for each output row whose windows hold it
// (ascending) and each column tap (descending, so that output columns
// ascend) the window's gradients are added along C where their index is this
// element. An element thus sums its windows in (p, q) order, the scatter's
// order below, so both give the same bits; and only an index inside its
// window counts, by construction. The inner loop is a contiguous
// compare-and-select pass over the channels, compiled per instruction set.
// Cost: one compare-select per window tap of every output, so windows with
// more than kGatherTaps taps (SPP's 13 x 13) scatter instead. Planes (NCHW)
// scatter: their rows are too short for per-row passes (measured 3x slower
// than the scatter on VGG's 28 x 28 maps).
constexpr size_t kGatherTaps = 32;

// v where keep, else +0: a bitwise select, so that neither the vectorised
// loop nor its scalar remainder branches on the data.
template <typename Acc>
inline Acc kept_or_zero(bool keep, Acc v) {
  using Bits = std::conditional_t<sizeof(Acc) == 8, uint64_t, uint32_t>;
  Bits bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= Bits(0) - Bits(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// acc[k] += grad[k] where idx[k] is the position pos. acc never overlaps idx
// or grad: `omp simd` says so where the restrict qualifiers are lost to
// inlining.
template <typename T, typename Acc>
inline void add_at_argmax(const int64_t* __restrict idx, const T* __restrict grad, int64_t n,
                          int64_t pos, Acc* __restrict acc) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) acc[k] += kept_or_zero(idx[k] == pos, to_acc(grad[k]));
}

// Adaptive windows whose size divides the input are sliding windows (kernel =
// stride = input / output); true with `sliding` set when g has sliding
// windows, or such adaptive ones.
bool sliding_windows(const Pool2dGeometry& g, Pool2dGeometry& sliding) {
  sliding = g;
  if (!g.adaptive) return true;
  if (g.H % g.P != 0 || g.W % g.Q != 0) return false;
  sliding.adaptive = false;
  sliding.kernel_h = sliding.stride_h = g.H / g.P;
  sliding.kernel_w = sliding.stride_w = g.W / g.Q;
  sliding.pad_h = sliding.pad_w = 0;
  sliding.dil_h = sliding.dil_w = 1;
  return true;
}

// One launch of the gather, with what every row reads computed once: the
// output rows whose windows hold each input row, and the column taps in the
// order an element sums them.
struct MaxGather {
  const Pool2dGeometry& g;
  Tensor4 grad_y, indices, grad_x;
  // Input row h's output rows, ascending, at [h * kernel_h, (h + 1) * kernel_h), -1 for none.
  std::vector<int64_t> row_windows;
  std::vector<Tap> taps;  // descending offsets: output columns ascend per element

  MaxGather(const Pool2dGeometry& g_, Tensor4 grad_y_, Tensor4 indices_, Tensor4 grad_x_,
            const Windows& win)
      : g(g_), grad_y(grad_y_), indices(indices_), grad_x(grad_x_),
        row_windows(g.H * g.kernel_h, -1), taps(win.col_taps.rbegin(), win.col_taps.rend()) {
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t i = g.kernel_h - 1, k = 0; i >= 0; --i) {
        const int64_t t = h + g.pad_h - i * g.dil_h;
        if (t >= 0 && t % g.stride_h == 0 && t / g.stride_h < g.P)
          row_windows[h * g.kernel_h + k++] = t / g.stride_h;
      }
  }
};

// channels_last: input row h of image n, W x C, into acc (grad_x's row for
// float types) and then grad_x.
template <typename T>
CNNK_VECTOR_CLONES void gather_channels_row(const MaxGather& m, int64_t n, int64_t h,
                                            acc_t<T>* scratch) {
  using Acc = acc_t<T>;
  const Pool2dGeometry& g = m.g;
  T* dst = static_cast<T*>(m.grad_x.data) + m.grad_x.stride.offset(n, 0, h, 0);
  Acc* acc = scratch != nullptr ? scratch : reinterpret_cast<Acc*>(dst);
  std::fill(acc, acc + g.W * g.C, Acc(0));
  for (int64_t i = 0; i < g.kernel_h; ++i) {
    const int64_t p = m.row_windows[h * g.kernel_h + i];
    if (p < 0) break;
    for (const Tap& tap : m.taps)
      for (int64_t q = tap.lo; q < tap.hi; ++q) {
        const int64_t w = q * g.stride_w + tap.off;
        add_at_argmax(
            static_cast<const int64_t*>(m.indices.data) + m.indices.stride.offset(n, 0, p, q),
            static_cast<const T*>(m.grad_y.data) + m.grad_y.stride.offset(n, 0, p, q), g.C,
            h * g.W + w, acc + w * g.C);
      }
  }
  if (scratch != nullptr)
    for (int64_t w = 0; w < g.W; ++w)
      store_row<T>(acc + w * g.C, g.C, dst + w * m.grad_x.stride.w, 1);
}

template <typename T>
Status max_backward_gather(const MaxGather& m) {
  using Acc = acc_t<T>;
  const Pool2dGeometry& g = m.g;
  const int64_t taps = static_cast<int64_t>(m.taps.size()) * g.kernel_h;
  const double work = static_cast<double>(g.N * g.C) *
                      static_cast<double>(g.H * g.W + g.P * g.Q * taps);
  const int64_t row_work = g.W + g.Q * taps / g.stride_h + 1;
  const bool direct = std::is_same_v<T, Acc> && m.grad_x.stride.w == g.C;
  const int threads = parallel_threads(work, g.N * g.H);
  const ThreadScratch<Acc> scratch(threads, direct ? 1 : g.W * g.C);
  if (!scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, g.N * g.H, g.C * row_work, [&](int64_t begin, int64_t end, int t) {
    for (int64_t item = begin; item < end; ++item)
      gather_channels_row<T>(m, item / g.H, item % g.H, direct ? nullptr : scratch.of(t));
  });
  return Status::ok;
}

// Where each output of a plane of unit-step windows sends its gradient:
// target[k] = idx[k] when that lies in output k's window, else -1. One pass
// per window row over the whole plane (the windows' first elements, widths
// and heights computed once per launch), vectorised per instruction set:
// the scalar test per output doubled the scatter's time, and passes per
// output row were too short on small maps.
CNNK_VECTOR_CLONES void window_targets(const int64_t* __restrict idx, int64_t outputs,
                                       int64_t max_rows, int64_t W,
                                       const int64_t* __restrict first,
                                       const int64_t* __restrict width,
                                       const int64_t* __restrict height,
                                       int64_t* __restrict target) {
  for (int64_t k = 0; k < outputs; ++k) target[k] = -1;
  for (int64_t r = 0; r < max_rows; ++r)
    for (int64_t k = 0; k < outputs; ++k) {
      const bool inside = (r < height[k]) & (static_cast<uint64_t>(idx[k] - first[k] - r * W) <
                                             static_cast<uint64_t>(width[k]));
      target[k] = inside ? idx[k] : target[k];
    }
}

// Dilated windows: the index split into its row and column.
void dilated_window_targets(const int64_t* idx, int64_t idx_step, int64_t Q, PoolWindow rows,
                            const Windows& win, const FastDiv& by_width, int64_t H, int64_t W,
                            int64_t* target) {
  for (int64_t q = 0; q < Q; ++q) {
    const int64_t i = idx[q * idx_step];
    const PoolWindow& cols = win.cols[q];
    const bool in_plane = static_cast<uint64_t>(i) < static_cast<uint64_t>(H * W);
    const int64_t h = by_width(in_plane ? i : 0), w = (in_plane ? i : 0) - h * W;
    const bool inside = in_plane && h >= rows.start && h < rows.end && w >= cols.start &&
                        w < cols.end && (h - rows.start) % rows.step == 0 &&
                        (w - cols.start) % cols.step == 0;
    target[q] = inside ? i : -1;
  }
}

// The windows of output rows [p0, p1), for window_targets: each one's first
// element, width and height, row-major over the outputs.
struct PlaneWindows {
  std::vector<int64_t> first, width, height;
  PlaneWindows(const Pool2dGeometry& g, const Windows& win, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (const PoolWindow& cols : win.cols) {
        first.push_back(win.rows[p].start * g.W + cols.start);
        width.push_back(std::max<int64_t>(cols.end - cols.start, 0));
        height.push_back(std::max<int64_t>(win.rows[p].end - win.rows[p].start, 0));
      }
  }
};

// The scatter runs blocks of about kScatterBlock outputs (their targets in
// L1/L2). Planes of at most kSharedWindows outputs share one PlaneWindows (24
// bytes an output) for the launch; larger ones build each block's.
constexpr int64_t kScatterBlock = 4096;
constexpr int64_t kSharedWindows = int64_t{1} << 16;

// Any windows, scattered: each plane (channels_last: each image's block of
// channels) is zeroed and the gradients added at their indices in output
// order; one item owns the plane, so no atomics. Only an index inside its
// window counts.
template <typename T>
Status max_backward_planes(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices,
                           Tensor4 grad_x, const Windows& win) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const int64_t planes = g.N * g.C, plane = g.H * g.W;
  // A scatter per plane, into grad_x itself when it is a dense float plane.
  const bool direct = std::is_same_v<T, Acc> && grad_x.stride.w == 1 && grad_x.stride.h == g.W;
  const bool dilated = !g.adaptive && (g.dil_h > 1 || g.dil_w > 1);
  const double work = static_cast<double>(planes) * static_cast<double>(plane + g.P * g.Q);
  const int threads = parallel_threads(work, planes);
  const ThreadScratch<Acc> scratch(threads, direct ? 1 : plane);
  // Per thread: a block's targets, and its indices when they are not dense.
  const int64_t block = std::clamp<int64_t>(kScatterBlock / g.Q, 1, g.P);
  const bool dense_indices = indices.stride.w == 1 && indices.stride.h == g.Q;
  const ThreadScratch<int64_t> targets(threads, (dense_indices ? 1 : 2) * block * g.Q);
  if (!scratch.ok() || !targets.ok()) return Status::out_of_memory;
  const FastDiv by_width(g.W);
  std::optional<PlaneWindows> shared;
  if (!dilated && g.P * g.Q <= kSharedWindows) shared.emplace(g, win, 0, g.P);
  parallel_chunks(threads, planes, plane + g.P * g.Q, [&](int64_t begin, int64_t end, int t) {
    int64_t* target = targets.of(t);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      T* dst = gxp + grad_x.stride.offset(n, c, 0, 0);
      Acc* acc = direct ? reinterpret_cast<Acc*>(dst) : scratch.of(t);
      std::fill(acc, acc + plane, Acc(0));
      for (int64_t p0 = 0; p0 < g.P; p0 += block) {
        const int64_t p1 = std::min(g.P, p0 + block), outputs = (p1 - p0) * g.Q;
        const int64_t* idx = ip + indices.stride.offset(n, c, p0, 0);
        if (dilated) {
          for (int64_t p = p0; p < p1; ++p)
            dilated_window_targets(idx + (p - p0) * indices.stride.h, indices.stride.w, g.Q,
                                   win.rows[p], win, by_width, g.H, g.W, target + (p - p0) * g.Q);
        } else {
          if (!dense_indices) {
            int64_t* copy = target + outputs;
            for (int64_t p = 0; p < p1 - p0; ++p)
              for (int64_t q = 0; q < g.Q; ++q)
                copy[p * g.Q + q] = idx[p * indices.stride.h + q * indices.stride.w];
            idx = copy;
          }
          std::optional<PlaneWindows> local;
          const PlaneWindows& windows = shared ? *shared : local.emplace(g, win, p0, p1);
          const int64_t at = shared ? p0 * g.Q : 0;
          window_targets(idx, outputs, win.max_rows, g.W, windows.first.data() + at,
                         windows.width.data() + at, windows.height.data() + at, target);
        }
        // A miss adds +0 to acc[0], which leaves it as it is (never -0).
        for (int64_t p = p0; p < p1; ++p) {
          const T* grow = gyp + grad_y.stride.offset(n, c, p, 0);
          const int64_t* row_target = target + (p - p0) * g.Q;
          for (int64_t q = 0; q < g.Q; ++q)
            acc[std::max<int64_t>(row_target[q], 0)] +=
                kept_or_zero(row_target[q] >= 0, to_acc(grow[q * grad_y.stride.w]));
        }
      }
      if (!direct)
        for (int64_t h = 0; h < g.H; ++h)
          store_row<T>(acc + h * g.W, g.W, dst + h * grad_x.stride.h, grad_x.stride.w);
    }
  });
  return Status::ok;
}

template <typename T>
Status max_backward_channels(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices,
                             Tensor4 grad_x, const Windows& win) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* gxp = static_cast<T*>(grad_x.data);
  // A scatter per (n, block of channels), into grad_x itself for float
  // types, else into an H x W x block accumulator.
  constexpr bool direct = std::is_same_v<T, Acc>;
  const int64_t plane = g.H * g.W;
  const double work = static_cast<double>(g.N) * static_cast<double>(g.C) *
                      static_cast<double>(plane + g.P * g.Q);
  int threads = parallel_threads(work, g.N * g.C);
  int64_t block = g.C;
  if (threads > 1 && g.N < int64_t{4} * threads)
    block = std::max<int64_t>(std::min<int64_t>(g.C, 16),
                              ceil_div(g.C, ceil_div(int64_t{4} * threads, g.N)));
  const int64_t blocks = ceil_div(g.C, block);
  threads = static_cast<int>(std::min<int64_t>(threads, g.N * blocks));
  const ThreadScratch<Acc> scratch(threads, direct ? 1 : plane * block);
  if (!scratch.ok()) return Status::out_of_memory;
  const FastDiv by_width(g.W);
  parallel_chunks(threads, g.N * blocks, block * (plane + g.P * g.Q), [&](int64_t begin,
                                                                           int64_t end, int t) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * block;
      const int64_t width = std::min(g.C, c0 + block) - c0;
      // Element (h, w, c0 + c) of the block lives at at(h, w) + c.
      auto at = [&](int64_t h, int64_t w) -> Acc* {
        if constexpr (direct)
          return reinterpret_cast<Acc*>(gxp + grad_x.stride.offset(n, c0, h, w));
        else
          return scratch.of(t) + (h * g.W + w) * block;
      };
      for (int64_t h = 0; h < g.H; ++h)
        for (int64_t w = 0; w < g.W; ++w) std::fill(at(h, w), at(h, w) + width, Acc(0));
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q) {
          const int64_t* idx = ip + indices.stride.offset(n, c0, p, q);
          const T* grad = gyp + grad_y.stride.offset(n, c0, p, q);
          for (int64_t c = 0; c < width; ++c) {
            const int64_t i = idx[c];
            if (i < 0 || i >= plane) continue;
            const int64_t h = by_width(i), w = i - h * g.W;
            if (in_window(win.rows[p], h) && in_window(win.cols[q], w))
              at(h, w)[c] += to_acc(grad[c]);
          }
        }
      if constexpr (!direct)
        for (int64_t h = 0; h < g.H; ++h)
          for (int64_t w = 0; w < g.W; ++w)
            store_row<T>(at(h, w), width, gxp + grad_x.stride.offset(n, c0, h, w), 1);
    }
  });
  return Status::ok;
}

template <typename T>
Status max_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 indices, Tensor4 grad_x) {
  const bool channels = channels_inner(g, {&grad_y, &indices, &grad_x});
  Pool2dGeometry sliding;
  if (channels && sliding_windows(g, sliding)) {
    const Windows win(sliding);
    const auto row_taps = sliding_taps(g.H, g.P, sliding.kernel_h, sliding.stride_h,
                                       sliding.pad_h, sliding.dil_h);
    if (row_taps.size() * win.col_taps.size() <= kGatherTaps)
      return max_backward_gather<T>(MaxGather(sliding, grad_y, indices, grad_x, win));
  }
  const Windows win(g);
  if (channels) return max_backward_channels<T>(g, grad_y, indices, grad_x, win);
  return max_backward_planes<T>(g, grad_y, indices, grad_x, win);
}

// ------------------------------------------------------------ average forward

// The divisors of output row p, per column (avg_pool_divisor): a product of
// accumulator values where it is exact (the factors' product fits the
// mantissa), else of the integers.
template <typename Acc>
struct Divisors {
  std::vector<int64_t> row, col;
  std::vector<Acc> col_acc;
  bool exact = true;

  explicit Divisors(const Pool2dGeometry& g) : row(g.P), col(g.Q), col_acc(g.Q) {
    int64_t max_row = 1, max_col = 1;
    for (int64_t p = 0; p < g.P; ++p) max_row = std::max(max_row, row[p] = avg_pool_row_factor(g, p));
    for (int64_t q = 0; q < g.Q; ++q) {
      max_col = std::max(max_col, col[q] = avg_pool_col_factor(g, q));
      col_acc[q] = static_cast<Acc>(col[q]);
    }
    const int64_t limit = int64_t{1} << std::numeric_limits<Acc>::digits;
    exact = max_row <= limit / max_col;
  }
  // The divisor of (p, q) for every q, into out.
  void of_row(const Pool2dGeometry& g, int64_t p, Acc* out) const {
    if (g.divisor_override != 0) {
      std::fill(out, out + g.Q, static_cast<Acc>(g.divisor_override));
    } else if (exact) {
      const Acc r = static_cast<Acc>(row[p]);
      for (int64_t q = 0; q < g.Q; ++q) out[q] = r * col_acc[q];
    } else {
      for (int64_t q = 0; q < g.Q; ++q) out[q] = static_cast<Acc>(row[p] * col[q]);
    }
  }
};

// Planes, per block of output rows: each needed input row summed over every
// column window, then each output row over its window's rows, divided.
template <typename T>
Status avg_forward_planes(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, const Windows& win) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  const Divisors<Acc> divisors(g);
  const int64_t planes = g.N * g.C;
  if (global_window(g)) {
    const int64_t plane = g.H * g.W;
    const bool dense = x.stride.w == 1 && x.stride.h == g.W;
    const int threads = parallel_threads(static_cast<double>(planes * plane), planes);
    const ThreadScratch<Acc> scratch(threads, std::max(g.W, kLoadChunk) + kLanes);
    if (!scratch.ok()) return Status::out_of_memory;
    Acc divisor;
    divisors.of_row(g, 0, &divisor);
    parallel_chunks(threads, planes, plane, [&](int64_t begin, int64_t end, int t) {
      Acc* lanes = scratch.of(t);
      Acc* buf = lanes + kLanes;
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / g.C, c = nc % g.C;
        std::fill(lanes, lanes + kLanes, Acc(0));
        const T* base = xp + x.stride.offset(n, c, 0, 0);
        if (dense) {
          for (int64_t i = 0; i < plane; i += kLoadChunk) {
            const int64_t size = std::min(kLoadChunk, plane - i);
            lane_sum(load_row(base + i, 1, size, buf), size, lanes);
          }
        } else {
          for (int64_t h = 0; h < g.H; ++h)
            lane_sum(load_row(base + h * x.stride.h, x.stride.w, g.W, buf), g.W, lanes);
        }
        Acc sum = Acc(0);
        for (int64_t k = 0; k < kLanes; ++k) sum += lanes[k];
        yp[y.stride.offset(n, c, 0, 0)] = from_acc<T>(sum / divisor);
      }
    });
    return Status::ok;
  }
  const PlanePass pass(g, win);
  const int threads = pass.threads;
  const PlaneItems& items = pass.items;
  const int64_t span = pass.span, work_per_item = pass.work_per_item;
  const int64_t size = span * g.Q + 2 * g.Q + g.W;
  const ThreadScratch<Acc> scratch(threads, size);
  if (!scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, items.count, work_per_item, [&](int64_t begin, int64_t end, int t) {
    Acc* rs = scratch.of(t);  // row sums, span x Q
    Acc* sum = rs + span * g.Q;
    Acc* divisor = sum + g.Q;
    Acc* buf = divisor + g.Q;
    for (int64_t item = begin; item < end; ++item) {
      const PlaneItems::Item block = items.at(item, g.C);
      const int64_t n = block.n, c = block.c, p0 = block.lo, p1 = block.hi;
      const IndexRange read = rows_read(win, p0, p1);
      const int64_t h0 = read.lo, h1 = read.hi;
      for (int64_t h = h0; h < h1; ++h) {
        const Acc* row = load_row(xp + x.stride.offset(n, c, h, 0), x.stride.w, g.W, buf);
        Acc* out = rs + (h - h0) * g.Q;
        std::fill(out, out + g.Q, Acc(0));
        if (g.adaptive) {
          for (int64_t q = 0; q < g.Q; ++q) {
            Acc sum = Acc(0);  // in a register, not through memory each step
            for (int64_t w = win.cols[q].start; w < win.cols[q].end; ++w) sum += row[w];
            out[q] = sum;
          }
          continue;
        }
        with_stride(g.stride_w, [&](auto s) {
          for (const Tap& tap : win.col_taps)
            for (int64_t q = tap.lo; q < tap.hi; ++q) out[q] += row[q * s + tap.off];
        });
      }
      for (int64_t p = p0; p < p1; ++p) {
        const PoolWindow& rows = win.rows[p];
        std::fill(sum, sum + g.Q, Acc(0));
        for (int64_t h = rows.start; h < rows.end; h += rows.step) {
          const Acc* in = rs + (h - h0) * g.Q;
          for (int64_t q = 0; q < g.Q; ++q) sum[q] += in[q];
        }
        divisors.of_row(g, p, divisor);
        for (int64_t q = 0; q < g.Q; ++q) sum[q] /= divisor[q];
        store_row<T>(sum, g.Q, yp + y.stride.offset(n, c, p, 0), y.stride.w);
      }
    }
  });
  return Status::ok;
}

// Channels innermost, per (n, output row): every output pixel's window taps
// in row-major order, each a pass over the channels.
template <typename T>
Status avg_forward_channels(const Pool2dGeometry& g, Tensor4 x, Tensor4 y, const Windows& win) {
  using Acc = acc_t<T>;
  const T* xp = static_cast<const T*>(x.data);
  T* yp = static_cast<T*>(y.data);
  const Divisors<Acc> divisors(g);
  const int64_t items = g.N * g.P, work = g.Q * g.C * win.max_rows * win.max_cols + g.Q * g.C;
  const int threads = parallel_threads(static_cast<double>(items) * static_cast<double>(work), items);
  const int64_t size = g.C + g.Q;
  const ThreadScratch<Acc> scratch(threads, size);
  if (!scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, items, work, [&](int64_t begin, int64_t end, int t) {
    Acc* sum = scratch.of(t);
    Acc* divisor = sum + g.C;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.P, p = item % g.P;
      const PoolWindow& rows = win.rows[p];
      divisors.of_row(g, p, divisor);
      for (int64_t q = 0; q < g.Q; ++q) {
        const PoolWindow& cols = win.cols[q];
        std::fill(sum, sum + g.C, Acc(0));
        for (int64_t h = rows.start; h < rows.end; h += rows.step)
          for (int64_t w = cols.start; w < cols.end; w += cols.step) {
            const T* src = xp + x.stride.offset(n, 0, h, w);
            for (int64_t c = 0; c < g.C; ++c) sum[c] += to_acc(src[c]);
          }
        const Acc d = divisor[q];
        for (int64_t c = 0; c < g.C; ++c) sum[c] /= d;
        store_row<T>(sum, g.C, yp + y.stride.offset(n, 0, p, q), 1);
      }
    }
  });
  return Status::ok;
}

template <typename T>
Status avg_forward(const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  const Windows win(g);
  if (channels_inner(g, {&x, &y})) return avg_forward_channels<T>(g, x, y, win);
  return avg_forward_planes<T>(g, x, y, win);
}

// ----------------------------------------------------------- average backward

// grad_x[h, w] = sum over the windows (p, q) containing (h, w) of grad_y[p, q]
// * row_scale[p] * col_scale[q] (1 / the divisor's factors; with an override
// 1 / divisor_override and 1): the columns first (q descending for each
// input column, the order of for_each_covering_output), then the rows (p
// descending). Both layouts sum in this order: the same bits.
template <typename Acc>
struct Scales {
  std::vector<Acc> row, col;
  explicit Scales(const Pool2dGeometry& g) : row(g.P), col(g.Q) {
    const bool override = g.divisor_override != 0;
    for (int64_t p = 0; p < g.P; ++p)
      row[p] = override ? Acc(1) / Acc(g.divisor_override) : Acc(1) / Acc(avg_pool_row_factor(g, p));
    for (int64_t q = 0; q < g.Q; ++q)
      col[q] = override ? Acc(1) : Acc(1) / Acc(avg_pool_col_factor(g, q));
  }
};

// Calls visit(o) for every output index whose window contains input index i
// along the rows (or the columns), outputs descending. The loop runs over the
// covering windows only (a range, sliding_covering_outputs), never over a
// window's taps.
template <typename Visit>
void for_each_covering_output(const Pool2dGeometry& g, int64_t i, bool rows, Visit visit) {
  const int64_t out = rows ? g.P : g.Q, in = rows ? g.H : g.W;
  if (g.adaptive) {
    const IndexRange range = adaptive_covering_outputs(i, in, out);
    for (int64_t o = range.hi - 1; o >= range.lo; --o) visit(o);
    return;
  }
  const int64_t kernel = rows ? g.kernel_h : g.kernel_w, stride = rows ? g.stride_h : g.stride_w;
  const int64_t pad = rows ? g.pad_h : g.pad_w, dil = rows ? g.dil_h : g.dil_w;
  const IndexRange range = sliding_covering_outputs(i, out, kernel, stride, pad, dil);
  for (int64_t o = range.hi - 1; o >= range.lo; --o)
    if (dil == 1 || (i + pad - o * stride) % dil == 0) visit(o);
}

IndexRange covering_rows(const Pool2dGeometry& g, int64_t h) {
  return g.adaptive ? adaptive_covering_outputs(h, g.H, g.P)
                    : sliding_covering_outputs(h, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h);
}

// Planes, per block of input rows: each output row the block needs spread
// over the input columns (grad_y * col_scale, the taps as in the forward, so
// the inner loop runs along the output columns), then each input row summed
// over its covering output rows.
template <typename T>
Status avg_backward_planes(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x,
                           const Windows& win) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const Scales<Acc> scale(g);
  const int64_t planes = g.N * g.C;
  if (global_window(g)) {
    // Every element of a plane gets (grad_y * col_scale) * row_scale, the
    // general order's value.
    const int64_t plane = g.H * g.W;
    const bool dense = grad_x.stride.w == 1 && grad_x.stride.h == g.W;
    const int threads = parallel_threads(static_cast<double>(planes * plane), planes);
    parallel_chunks(threads, planes, plane, [&](int64_t begin, int64_t end, int) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / g.C, c = nc % g.C;
        const T value = from_acc<T>(to_acc(gyp[grad_y.stride.offset(n, c, 0, 0)]) * scale.col[0] *
                                    scale.row[0]);
        T* dst = gxp + grad_x.stride.offset(n, c, 0, 0);
        if (dense) {
          std::fill(dst, dst + plane, value);
        } else {
          for (int64_t h = 0; h < g.H; ++h)
            for (int64_t w = 0; w < g.W; ++w) dst[h * grad_x.stride.h + w * grad_x.stride.w] = value;
        }
      }
    });
    return Status::ok;
  }
  const int64_t taps_w = g.adaptive ? win.max_cols : static_cast<int64_t>(win.col_taps.size());
  const int64_t covering_rows_max = g.adaptive ? ceil_div(g.P, g.H) + 1
                                               : ceil_div(g.kernel_h * g.dil_h, g.stride_h);
  const double work =
      static_cast<double>(planes) *
      static_cast<double>(g.P * g.Q * (1 + taps_w) + g.H * g.W * (1 + std::min(covering_rows_max, g.P)));
  const int threads = parallel_threads(work, planes * g.H);
  const PlaneItems items(planes, g.H, threads);
  int64_t span = 0;  // the most output rows one block reads
  for (int64_t h0 = 0; h0 < g.H; h0 += items.block) {
    const int64_t h1 = std::min(g.H, h0 + items.block) - 1;
    span = std::max(span, covering_rows(g, h1).hi - covering_rows(g, h0).lo);
  }
  span = std::clamp<int64_t>(span, 0, g.P);
  const int64_t size = span * g.W + g.Q + g.W;
  const ThreadScratch<Acc> scratch(threads, size);
  if (!scratch.ok()) return Status::out_of_memory;
  const bool direct = std::is_same_v<T, Acc> && grad_x.stride.w == 1;
  const int64_t work_per_item = static_cast<int64_t>(work / static_cast<double>(items.count)) + 1;
  parallel_chunks(threads, items.count, work_per_item, [&](int64_t begin, int64_t end, int t) {
    Acc* spread = scratch.of(t);  // span x W
    Acc* grad = spread + span * g.W;
    Acc* buf = grad + g.Q;
    for (int64_t item = begin; item < end; ++item) {
      const PlaneItems::Item block = items.at(item, g.C);
      const int64_t n = block.n, c = block.c, h0 = block.lo, h1 = block.hi;
      const int64_t p0 = covering_rows(g, h0).lo;
      const int64_t p1 = std::max(p0, covering_rows(g, h1 - 1).hi);
      for (int64_t p = p0; p < p1; ++p) {
        const T* src = gyp + grad_y.stride.offset(n, c, p, 0);
        for (int64_t q = 0; q < g.Q; ++q) grad[q] = to_acc(src[q * grad_y.stride.w]) * scale.col[q];
        Acc* out = spread + (p - p0) * g.W;
        std::fill(out, out + g.W, Acc(0));
        if (g.adaptive) {
          for (int64_t q = g.Q - 1; q >= 0; --q)
            for (int64_t w = win.cols[q].start; w < win.cols[q].end; ++w) out[w] += grad[q];
          continue;
        }
        with_stride(g.stride_w, [&](auto s) {
          for (const Tap& tap : win.col_taps)
            for (int64_t q = tap.lo; q < tap.hi; ++q) out[q * s + tap.off] += grad[q];
        });
      }
      for (int64_t h = h0; h < h1; ++h) {
        T* dst = gxp + grad_x.stride.offset(n, c, h, 0);
        Acc* out = direct ? reinterpret_cast<Acc*>(dst) : buf;
        std::fill(out, out + g.W, Acc(0));
        for_each_covering_output(g, h, true, [&](int64_t p) {
          const Acc* in = spread + (p - p0) * g.W;
          const Acc s = scale.row[p];
          for (int64_t w = 0; w < g.W; ++w) out[w] += in[w] * s;
        });
        if (!direct) store_row<T>(out, g.W, dst, grad_x.stride.w);
      }
    }
  });
  return Status::ok;
}

// Channels innermost, per (n, input row): every input pixel sums its
// covering windows, each a pass over the channels.
template <typename T>
Status avg_backward_channels(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* gyp = static_cast<const T*>(grad_y.data);
  T* gxp = static_cast<T*>(grad_x.data);
  const Scales<Acc> scale(g);
  const int64_t items = g.N * g.H;
  const int64_t covering = g.adaptive ? (ceil_div(g.P, g.H) + 1) * (ceil_div(g.Q, g.W) + 1)
                                      : ceil_div(g.kernel_h * g.dil_h, g.stride_h) *
                                            ceil_div(g.kernel_w * g.dil_w, g.stride_w);
  const int64_t work = g.W * g.C * (1 + std::min(covering, g.P * g.Q));
  const int threads = parallel_threads(static_cast<double>(items) * static_cast<double>(work), items);
  const ThreadScratch<Acc> scratch(threads, 2 * g.C);
  if (!scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, items, work, [&](int64_t begin, int64_t end, int t) {
    Acc* sum = scratch.of(t);
    Acc* cols = sum + g.C;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.H, h = item % g.H;
      for (int64_t w = 0; w < g.W; ++w) {
        std::fill(sum, sum + g.C, Acc(0));
        for_each_covering_output(g, h, true, [&](int64_t p) {
          std::fill(cols, cols + g.C, Acc(0));
          for_each_covering_output(g, w, false, [&](int64_t q) {
            const T* src = gyp + grad_y.stride.offset(n, 0, p, q);
            const Acc s = scale.col[q];
            for (int64_t c = 0; c < g.C; ++c) cols[c] += to_acc(src[c]) * s;
          });
          const Acc s = scale.row[p];
          for (int64_t c = 0; c < g.C; ++c) sum[c] += cols[c] * s;
        });
        store_row<T>(sum, g.C, gxp + grad_x.stride.offset(n, 0, h, w), 1);
      }
    }
  });
  return Status::ok;
}

template <typename T>
Status avg_backward(const Pool2dGeometry& g, Tensor4 grad_y, Tensor4 grad_x) {
  if (channels_inner(g, {&grad_y, &grad_x})) return avg_backward_channels<T>(g, grad_y, grad_x);
  return avg_backward_planes<T>(g, grad_y, grad_x, Windows(g));
}

// ------------------------------------------------------------------- gather

template <typename T>
Status gather(const Pool2dGeometry& g, Tensor4 x, Tensor4 indices, Tensor4 y) {
  const T* xp = static_cast<const T*>(x.data);
  const int64_t* ip = static_cast<const int64_t*>(indices.data);
  T* yp = static_cast<T*>(y.data);
  const T nan = from_acc<T>(std::numeric_limits<acc_t<T>>::quiet_NaN());
  const int64_t planes = g.N * g.C, plane = g.H * g.W;
  const FastDiv by_width(g.W);
  const int threads = parallel_threads(static_cast<double>(planes) * static_cast<double>(g.P * g.Q),
                                       planes);
  parallel_chunks(threads, planes, g.P * g.Q, [&](int64_t begin, int64_t end, int) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q) {
          const int64_t i = ip[indices.stride.offset(n, c, p, q)];
          T& out = yp[y.stride.offset(n, c, p, q)];
          if (i < 0 || i >= plane) {
            out = nan;
            continue;
          }
          const int64_t h = by_width(i);
          out = xp[x.stride.offset(n, c, h, i - h * g.W)];
        }
    }
  });
  return Status::ok;
}

// The launchers' checks in one place, then run(TypeTag<T>) with dtype's
// element type T, unless there is nothing to compute (no element).
template <typename Run>
Status launch(DType dtype, const Pool2dGeometry& g, bool have_data, Run run) {
  if (Status s = check_pool2d_geometry(g); s != Status::ok) return s;
  if (g.N * g.C == 0) return Status::ok;
  if (!have_data) return Status::bad_argument;
  return dispatch_dtype(dtype, run);
}

}  // namespace

Status max_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y,
                          Tensor4 indices) {
  return launch(dtype, g, x.data && y.data, [&](auto type) {
    return max_forward<typename decltype(type)::type>(g, x, y, indices);
  });
}

Status max_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 indices, Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && indices.data && grad_x.data, [&](auto type) {
    return max_backward<typename decltype(type)::type>(g, grad_y, indices, grad_x);
  });
}

Status avg_pool2d_forward(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 y) {
  return launch(dtype, g, x.data && y.data, [&](auto type) {
    return avg_forward<typename decltype(type)::type>(g, x, y);
  });
}

Status avg_pool2d_backward(DType dtype, const Pool2dGeometry& g, Tensor4 grad_y,
                           Tensor4 grad_x) {
  return launch(dtype, g, grad_y.data && grad_x.data, [&](auto type) {
    return avg_backward<typename decltype(type)::type>(g, grad_y, grad_x);
  });
}

Status max_pool2d_gather(DType dtype, const Pool2dGeometry& g, Tensor4 x, Tensor4 indices,
                         Tensor4 y) {
  return launch(dtype, g, x.data && indices.data && y.data, [&](auto type) {
    return gather<typename decltype(type)::type>(g, x, indices, y);
  });
}

}  // namespace cnnk::cpu
