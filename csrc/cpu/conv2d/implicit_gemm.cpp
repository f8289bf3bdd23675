// conv2d, implicit_gemm algorithm, C++ CPU kernels on the GEMM core
// (cnnk/cpu_gemm.h): each pass is a GEMM whose operands are gathered from the
// tensors straight into packed panels (no patch matrix in memory), with the
// epilogue (bias, residual, the pre-activation's store, activation,
// conversion, store) applied to the finished tile.
//
//   forward      per group: Y[k, pq] = W[k, l] * X_n[l, pq], l = (c, r, s);
//                M = K/groups, reduction C/groups * R * S, columns = output
//                pixels of one image in blocks of PIXEL_BLOCK. A (the weight)
//                is packed once. Stride 1: B is read in place from a
//                zero-padded copy of the input (forward_in_place: tap (c, r, s)
//                of nr consecutive pixels is nr consecutive values), nothing
//                else packed. Otherwise a task (n, group, pixel block) gathers
//                its B panels.
//   grad_input   stride 1: the same GEMM as the forward over grad_y (masked by
//                the activation's derivative on load) with the filter flipped
//                and transposed, its padding (R - 1) * dil - pad: a gather,
//                no scatter. Strided, and stride 1 with few input channels
//                (scatter_is_cheaper): per image and block of input channels,
//                the GEMM W^T * dY' into a tile of (c, r, s) rows, scattered
//                into the block's planes (col2im) by the task that owns them.
//   grad_weight  per group: dW[k, l] = sum over (n, pq) of dY'[k, (n, pq)] *
//                X[l, (n, pq)]: the reduction split into fixed chunks of
//                (n, pq) (set by the sizes, never by the thread count), one
//                partial per chunk, summed in chunk order; grad_bias is the
//                row sums of dY', taken while packing it.
// Reduction order of the taps: channel-fastest when the gathered tensor has
// contiguous channels (channels_last: the gather reads runs of channels),
// else tap-fastest (NCHW: it reads runs of an input row). Every output is the
// sum in a fixed order: deterministic on a machine (the instruction set may
// change the rounding: FMA or not).
//
// Cost: 2 * N * K * P * Q * (C / groups) * R * S flops per pass on the
// micro-kernel; the packed gather touches (C / groups) * R * S * P * Q
// elements per image and group (the in-place path copies the input once,
// (C / groups) * H * W), each used by all K / groups output channels, so the
// pass is compute-bound once K / groups is a few dozen (below that, the
// gather and the epilogue bound it). fp16/bf16 convert to fp32 while packing, fp64
// runs the fp64 micro-kernel. Limits: the Python layer checks sizes and
// strides; scratch is allocated before the threads start (out of memory is
// Status::out_of_memory).
#include <omp.h>

#include <algorithm>
#include <memory>
#include <type_traits>

#include "cnnk/conv2d.h"
#include "cnnk/cpu_gemm.h"
#include "cnnk/cpu_types.h"

namespace cnnk::cpu {
namespace {

using gemm::KC;
using gemm::round_up;

// Output pixels per task of the forward GEMM (a multiple of every nr).
constexpr int64_t PIXEL_BLOCK = 256;
// Columns (taps) per task of the grad_weight GEMM.
constexpr int64_t TAP_BLOCK = 256;
// The grad_weight reduction (n, pq) is cut into chunks of at least this
// many, at most MAX_SPLITS chunks.
constexpr int64_t SPLIT_MIN = 4096;
constexpr int64_t MAX_SPLITS = 32;

// The reduction index l of a group's filter taps as (c, r, s), with the
// output rows and columns whose tap reads inside the input (tap_table).
struct Tap {
  int64_t c, r, s;
  IndexRange rows, cols;
};
struct Taps {
  int64_t C, R, S;
  bool channels_fast;
  Tap operator()(int64_t l) const {
    if (channels_fast) return {l % C, l / (S * C), (l / C) % S, {}, {}};
    return {l / (R * S), (l / S) % R, l % S, {}, {}};
  }
};

// taps(l) for every l < count with its valid output rows and columns in g,
// computed once per call (no divisions in the packing loops); nullptr when
// out of memory.
inline AlignedBuffer<Tap> tap_table(const Taps& taps, int64_t count, const Conv2dGeometry& g) {
  auto table = allocate_aligned<Tap>(count);
  if (table != nullptr)
    for (int64_t l = 0; l < count; ++l) {
      Tap t = taps(l);
      t.rows = conv_valid_outputs(g.P, g.H, t.r, g.stride_h, g.pad_top, g.dil_h);
      t.cols = conv_valid_outputs(g.Q, g.W, t.s, g.stride_w, g.pad_left, g.dil_w);
      table[l] = t;
    }
  return table;
}

// A gathered tensor: x, or grad_y through the activation's derivative at y.
template <typename T, bool Masked>
struct Source {
  const T* data;
  Strides4 stride;
  const T* mask;  // the activation's saved tensor (cnnk/conv2d.h), when Masked
  Strides4 mask_stride;
  Activation activation;

  acc_t<T> at(int64_t data_offset, int64_t mask_offset) const {
    const acc_t<T> v = to_acc(data[data_offset]);
    if constexpr (Masked) return activation_grad(v, to_acc(mask[mask_offset]), activation);
    return v;
  }

  // Puts `count` elements, `step` and `mask_step` apart from the offsets,
  // through the cursor; unit steps get their own (vectorised) loop.
  void put_run(gemm::Cursor<acc_t<T>>& cursor, int64_t count, int64_t offset, int64_t step,
               int64_t mask_offset, int64_t mask_step) const {
    if (step == 1 && (!Masked || mask_step == 1))
      cursor.put(count, [&](int64_t e) { return at(offset + e, mask_offset + e); });
    else
      cursor.put(count, [&](int64_t e) { return at(offset + e * step, mask_offset + e * mask_step); });
  }
};

// B[l, col0 + j] for l in [l0, l0 + kc), j in [0, cols): the input of the
// forward-like GEMM at (n, c_base + c, p * sh - pt + r * dh, q * sw - pl + s * dw)
// for output pixel j0 + j = (p, q) of image n and tap l = (c, r, s).
template <typename T, bool Masked>
void gather_pixels(const Conv2dGeometry& g, const Source<T, Masked>& src, const Taps& taps,
                   const Tap* table, int64_t n, int64_t c_base, int64_t l0, int64_t kc,
                   int64_t j0, int64_t cols, int nr, acc_t<T>* b, int64_t col0) {
  using Acc = acc_t<T>;
  if (taps.channels_fast) {  // per pixel, runs of channels
    for (int64_t j = 0, p = j0 / g.Q, q = j0 % g.Q; j < cols; ++j) {
      Acc* column = b + (((col0 + j) / nr) * kc) * nr + (col0 + j) % nr;
      for (int64_t l = 0; l < kc;) {
        const Tap& t = table[l0 + l];
        const int64_t run = std::min(taps.C - t.c, kc - l);
        const int64_t ih = conv_input_index(p, t.r, g.stride_h, g.pad_top, g.dil_h);
        const int64_t iw = conv_input_index(q, t.s, g.stride_w, g.pad_left, g.dil_w);
        Acc* out = column + l * nr;
        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
          const int64_t at = src.stride.offset(n, c_base + t.c, ih, iw);
          const int64_t mask_at = src.mask_stride.offset(n, c_base + t.c, ih, iw);
          for (int64_t e = 0; e < run; ++e)
            out[e * nr] = src.at(at + e * src.stride.c, mask_at + e * src.mask_stride.c);
        } else {
          for (int64_t e = 0; e < run; ++e) out[e * nr] = Acc(0);
        }
        l += run;
      }
      if (++q == g.Q) q = 0, ++p;
    }
    return;
  }
  for (int64_t l = 0; l < kc; ++l) {  // per tap, runs of an input row
    const Tap& t = table[l0 + l];
    const IndexRange rows = t.rows, valid = t.cols;
    gemm::Cursor<Acc> cursor{b + (col0 / nr) * kc * nr + l * nr, col0 % nr, nr, 1, kc * nr};
    for (int64_t j = 0, p = j0 / g.Q, q = j0 % g.Q; j < cols; j += g.Q - q, ++p, q = 0) {
      const int64_t end = std::min(g.Q, q + cols - j);
      if (p < rows.lo || p >= rows.hi) {
        cursor.zeros(end - q);
        continue;
      }
      const int64_t lo = std::clamp(valid.lo, q, end), hi = std::clamp(valid.hi, lo, end);
      const int64_t ih = conv_input_index(p, t.r, g.stride_h, g.pad_top, g.dil_h);
      const int64_t iw = conv_input_index(lo, t.s, g.stride_w, g.pad_left, g.dil_w);
      const int64_t at = src.stride.offset(n, c_base + t.c, ih, iw);
      const int64_t mask_at = src.mask_stride.offset(n, c_base + t.c, ih, iw);
      const int64_t step = g.stride_w * src.stride.w, mask_step = g.stride_w * src.mask_stride.w;
      cursor.zeros(lo - q);
      src.put_run(cursor, hi - lo, at, step, mask_at, mask_step);
      cursor.zeros(end - hi);
    }
  }
}

// Largest zero-padded copy of the source the in-place path makes (bytes);
// beyond it the packed path runs.
constexpr int64_t IN_PLACE_MAX_BYTES = int64_t{1} << 30;

// A zero-padded copy of the source of a stride-1 convolution, converted
// (and masked) to Acc, for reading taps in place: per image and channel a
// plane of hp = P + (R - 1) * dh rows of wp = Q + (S - 1) * dw values (the
// rows and columns the taps read; input row h at padded row h + pad_top,
// the padding possibly negative: grad_input's transposed problem), planes an
// odd number of cache lines apart (the kc rows a micro-kernel reads, one or
// a few per channel, then fall into every L1 set instead of a few: a 56 x 56
// plane is 196 lines, 16 of 64 sets). Virtual pixel j = p * wp + q of a
// plane reads tap (r, s) at j + r * dh * wp + s * dw. data is null when the
// copy would pass IN_PLACE_MAX_BYTES or memory is short.
template <typename Acc>
struct PaddedPlanes {
  AlignedBuffer<Acc> data;
  int64_t hp, wp, plane;
};

template <typename T, bool Masked>
PaddedPlanes<acc_t<T>> pad_planes(const Conv2dGeometry& g, const Source<T, Masked>& src,
                                  int nr) {
  using Acc = acc_t<T>;
  const int64_t hp = g.P + (g.R - 1) * g.dil_h, wp = g.Q + (g.S - 1) * g.dil_w;
  const int64_t line = cache_lines<Acc>(1);
  const int64_t plane = (cache_lines<Acc>(hp * wp) / line | 1) * line, planes = g.N * g.C;
  if (planes > IN_PLACE_MAX_BYTES / static_cast<int64_t>(sizeof(Acc)) / plane)
    return {nullptr, hp, wp, plane};
  // A tap of the last plane reads up to (R - 1) * dh rows + (S - 1) * dw +
  // P * wp rounded up to nr past the plane's start: at most wp + nr past its end.
  const int64_t slack = wp + nr;
  auto padded = allocate_aligned<Acc>(planes * plane + slack);
  if (padded == nullptr) return {nullptr, hp, wp, plane};
  std::fill(padded.get() + planes * plane, padded.get() + planes * plane + slack, Acc(0));
#pragma omp parallel for schedule(dynamic) num_threads(parallel_threads(planes * plane, planes))
  for (int64_t nc = 0; nc < planes; ++nc) {
    const int64_t n = nc / g.C, c = nc % g.C;
    Acc* out = padded.get() + nc * plane;
    std::fill(out, out + plane, Acc(0));
    // Input columns inside the plane; none when the padding alone is wider
    // than the plane (a single output column, its stride taken as 1).
    const int64_t w_lo = std::max<int64_t>(0, -g.pad_left);
    const int64_t w_hi = std::max(w_lo, std::min(g.W, wp - g.pad_left));
    for (int64_t ph = std::max<int64_t>(0, g.pad_top); ph < std::min(hp, g.pad_top + g.H); ++ph) {
      Acc* row = out + ph * wp + g.pad_left;
      const int64_t at = src.stride.offset(n, c, ph - g.pad_top, 0);
      const int64_t mask_at = src.mask_stride.offset(n, c, ph - g.pad_top, 0);
      if constexpr (!Masked && std::is_same_v<T, Acc>) {
        if (src.stride.w == 1) {
          std::copy(src.data + at + w_lo, src.data + at + w_hi, row + w_lo);
          continue;
        }
      }
      if (src.stride.w == 1 && (!Masked || src.mask_stride.w == 1))
        for (int64_t w = w_lo; w < w_hi; ++w) row[w] = src.at(at + w, mask_at + w);
      else
        for (int64_t w = w_lo; w < w_hi; ++w)
          row[w] = src.at(at + w * src.stride.w, mask_at + w * src.mask_stride.w);
    }
  }
  return {std::move(padded), hp, wp, plane};
}

// Planes a stride-1 convolution reads its taps from in place: image n's
// channel c starts at data + n * image + c * plane, virtual pixel j = p * wp
// + q reads tap (r, s) at j + r * dh * wp + s * dw. padded: a zero-padded copy
// (pad_planes) with slack past its end, so a micro-panel may read past a
// plane's last pixel; otherwise the source itself (a 1 x 1 filter over
// contiguous rows), whose last partial micro-panel of each block is packed.
template <typename Acc>
struct PlaneView {
  const Acc* data;
  int64_t image, plane, wp;
  bool padded;
};

// The forward-like GEMM of a stride-1 convolution with B read in place from
// planes (PlaneView) and the output computed on the virtual grid P x wp
// (columns q >= Q computed and dropped): nr consecutive pixels are nr
// consecutive values for every tap, so the micro-kernel loads B's rows from
// the planes (run_rows) and nothing is packed but the weights.
template <typename Acc, typename Epilogue>
Status forward_in_place(const Conv2dGeometry& g, const PlaneView<Acc>& view,
                        const gemm::MicroKernel<Acc>& mk, const Acc* a, const Tap* table,
                        Epilogue epilogue) {
  const int64_t M = g.K_g(), L = g.reduction_size(), G = g.groups, Cg = g.C_g();
  const int64_t m_pad = round_up(M, mk.mr);
  auto rows = allocate_aligned<int64_t>(L);
  if (rows == nullptr) return Status::out_of_memory;
  const int64_t plane = view.plane, wp = view.wp;
  for (int64_t l = 0; l < L; ++l)
    rows[l] = table[l].c * plane + table[l].r * g.dil_h * wp + table[l].s * g.dil_w;

  const int64_t pixels = g.P * wp, block = std::min(PIXEL_BLOCK, round_up(pixels, mk.nr));
  const int64_t blocks = (pixels + block - 1) / block;
  const int64_t tail_size = view.padded ? 0 : KC * mk.nr;
  return parallel_tasks<Acc>(g.N * G * blocks, m_pad * block + tail_size,
                             [&](int64_t task, Acc* tile) {
    const int64_t jb = task % blocks, gi = (task / blocks) % G, n = task / (blocks * G);
    const int64_t j0 = jb * block, cols = std::min(block, pixels - j0);
    const int64_t full = view.padded ? (cols + mk.nr - 1) / mk.nr : cols / mk.nr;
    const int64_t rest = cols - full * mk.nr;
    const Acc* image = view.data + n * view.image + gi * Cg * plane + j0;
    Acc* tail = tile + m_pad * block;
    for (int64_t l0 = 0; l0 < L; l0 += KC) {
      const int64_t kc = std::min(KC, L - l0);
      const Acc* a_chunk = a + gi * m_pad * L + l0 * m_pad;
      gemm::multiply_rows(mk, kc, m_pad / mk.mr, full, a_chunk, image, rows.get() + l0, tile,
                          block, l0 > 0);
      if (rest > 0) {
        for (int64_t l = 0; l < kc; ++l) {
          const Acc* row = image + full * mk.nr + rows[l0 + l];
          std::copy(row, row + rest, tail + l * mk.nr);
          std::fill(tail + l * mk.nr + rest, tail + (l + 1) * mk.nr, Acc(0));
        }
        gemm::multiply_packed(mk, kc, m_pad / mk.mr, 1, a_chunk, tail, tile + full * mk.nr,
                              block, l0 > 0);
      }
    }
    epilogue(n, gi, 0, M, tile, block, j0, cols, wp);
  },
      gemm::tile_work(m_pad, block, L));
}

// The forward-like GEMM: for every image n, group and output channel o of
// the group, out(n, o, pixel) = sum over taps l of
// weights[row_offset(group, o) + tap_offset(group, tap l)] * (gathered
// source); epilogue(n, group, i0, rows, tile, ldc, j0, cols, width) stores a
// finished tile (rows: the group's output channels [i0, i0 + rows), columns:
// pixels [j0, j0 + cols) of image n on a grid `width` wide). The weight
// offsets are tabulated once, so packing A is a load
// and a conversion per element.
template <typename T, bool Masked, typename RowOffset, typename TapOffset, typename Epilogue>
Status forward_gemm(const Conv2dGeometry& g, const Source<T, Masked>& src, const T* weights,
                    RowOffset row_offset, TapOffset tap_offset, Epilogue epilogue) {
  using Acc = acc_t<T>;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const int64_t M = g.K_g(), L = g.reduction_size(), G = g.groups;
  const int64_t m_pad = round_up(M, mk.mr);
  const Taps taps{g.C_g(), g.R, g.S, src.stride.c == 1 && g.C_g() > 1};

  auto a = allocate_aligned<Acc>(G * m_pad * L);
  const auto table = tap_table(taps, L, g);
  auto offsets = allocate_aligned<int64_t>(G * (M + L));
  if (a == nullptr || table == nullptr || offsets == nullptr) return Status::out_of_memory;
  int64_t* rows = offsets.get();
  int64_t* columns = rows + G * M;
  for (int64_t gi = 0; gi < G; ++gi) {
    for (int64_t i = 0; i < M; ++i) rows[gi * M + i] = row_offset(gi, i);
    for (int64_t l = 0; l < L; ++l) columns[gi * L + l] = tap_offset(gi, table[l]);
  }
  const int64_t chunks = (L + KC - 1) / KC;
#pragma omp parallel for schedule(dynamic) num_threads(parallel_threads(G * m_pad * L, G * chunks))
  for (int64_t gc = 0; gc < G * chunks; ++gc) {
    const int64_t gi = gc / chunks, l0 = (gc % chunks) * KC, kc = std::min(KC, L - l0);
    const int64_t* row = rows + gi * M;
    const int64_t* column = columns + gi * L + l0;
    gemm::pack_a<Acc>(M, kc, mk.mr, [weights, row, column](int64_t i, int64_t l) {
      return to_acc(weights[row[i] + column[l]]);
    }, a.get() + gi * m_pad * L + l0 * m_pad);
  }

  // In place for stride 1: a 1 x 1 filter over unit-stride rows that need
  // no conversion reads the source itself; with more taps, they share a
  // zero-padded copy (a 1 x 1 filter reads each input value once: packing
  // it costs one pass, the copy two).
  // The in-place path computes round_up(P * wp, nr) columns per image for
  // P * Q outputs; the packed path computes P * Q columns but first gathers
  // each column's taps, which costs about what kGatherRows rows of the
  // micro-kernel do (measured with the AVX-512 kernels, 1 thread, batch 8:
  // twice the columns in place won at 72 and 132 output rows on 4 x 4
  // planes, lost at 264; eight times the columns, 2 x 2 planes, lost). In
  // place when its extra columns cost less: LeNet's 6 -> 16 5 x 5 at 14 x 14
  // (160 columns for 100 outputs) runs 1.5x faster in place.
  constexpr int64_t kGatherRows = 160;
  const auto in_place_pays = [&](int64_t wp) {
    return round_up(g.P * wp, mk.nr) * m_pad <= g.P * g.Q * (m_pad + kGatherRows);
  };
  if (g.stride_h == 1 && g.stride_w == 1) {
    if (g.R * g.S == 1 && in_place_pays(g.Q) && !Masked && std::is_same_v<T, Acc> &&
        src.stride.w == 1 &&
        (g.H == 1 || src.stride.h == g.W) && g.pad_top == 0 && g.pad_left == 0 &&
        g.P == g.H && g.Q == g.W) {  // output pixel j reads input pixel j
      const PlaneView<Acc> view{reinterpret_cast<const Acc*>(src.data), src.stride.n,
                                src.stride.c, g.W, false};
      return forward_in_place(g, view, mk, a.get(), table.get(), epilogue);
    }
    if (g.R * g.S > 1 && in_place_pays(g.Q + (g.S - 1) * g.dil_w)) {
      const PaddedPlanes<Acc> padded = pad_planes(g, src, mk.nr);
      if (padded.data != nullptr)  // else: out of memory for the copy, the packed path
        return forward_in_place(
            g, PlaneView<Acc>{padded.data.get(), g.C * padded.plane, padded.plane, padded.wp, true},
            mk, a.get(), table.get(), epilogue);
    }
  }

  // Columns are the output pixels of all images, (n, pq) flattened, so a
  // small plane (7 x 7, 2 x 2) fills the micro-tiles' columns with the next
  // images' pixels instead of padding; when the column blocks are fewer than
  // the threads, the rows (output channels) are split too. Neither changes
  // any output's reduction order.
  const int64_t PQ = g.P * g.Q, NPQ = g.N * PQ, block = std::min(PIXEL_BLOCK, NPQ);
  const int64_t blocks = (NPQ + block - 1) / block, cols_pad = round_up(block, mk.nr);
  const int64_t m_panels = m_pad / mk.mr;
  const int64_t row_blocks = std::clamp<int64_t>(
      (2 * omp_get_max_threads() + G * blocks - 1) / (G * blocks), 1, m_panels);
  const int64_t panels_per_block = (m_panels + row_blocks - 1) / row_blocks;
  return parallel_tasks<Acc>(G * blocks * row_blocks, KC * cols_pad + m_pad * cols_pad,
                             [&](int64_t task, Acc* scratch) {
    const int64_t ib = task % row_blocks, jb = (task / row_blocks) % blocks;
    const int64_t gi = task / (row_blocks * blocks);
    const int64_t ip0 = ib * panels_per_block;
    const int64_t panels = std::min(panels_per_block, m_panels - ip0);
    if (panels <= 0) return;
    const int64_t i0 = ip0 * mk.mr, rows = std::min(panels * mk.mr, M - i0);
    const int64_t j0 = jb * block, cols = std::min(block, NPQ - j0);
    Acc* b = scratch;
    Acc* tile = scratch + KC * cols_pad;
    for (int64_t l0 = 0; l0 < L; l0 += KC) {
      const int64_t kc = std::min(KC, L - l0);
      for (int64_t j = 0; j < cols;) {  // one image's run of pixels at a time
        const int64_t n = (j0 + j) / PQ, pq = (j0 + j) % PQ, run = std::min(PQ - pq, cols - j);
        gather_pixels(g, src, taps, table.get(), n, gi * g.C_g(), l0, kc, pq, run, mk.nr, b, j);
        j += run;
      }
      gemm::zero_b_padding(kc, cols, mk.nr, b);
      gemm::multiply_packed(mk, kc, panels, (cols + mk.nr - 1) / mk.nr,
                            a.get() + gi * m_pad * L + l0 * m_pad + i0 * kc, b, tile, cols_pad,
                            l0 > 0);
    }
    for (int64_t j = 0; j < cols;) {
      const int64_t n = (j0 + j) / PQ, pq = (j0 + j) % PQ, run = std::min(PQ - pq, cols - j);
      epilogue(n, gi, i0, rows, tile + j, cols_pad, pq, run, g.Q);
      j += run;
    }
  },
      gemm::tile_work(panels_per_block * mk.mr, cols_pad, L));
}

// The forward epilogue's optional tensors (cnnk/conv2d.h): the residual
// added to z, and where z is kept; null data for an absent one.
struct ResidualPreact {
  Tensor4 residual, preact;
};

// Where output (n, k, p, q) of a forward tensor with `stride` is; null for
// an absent tensor.
template <typename P>
P* element_at(P* data, const Strides4& stride, int64_t n, int64_t k, int64_t p, int64_t q) {
  return data ? data + stride.offset(n, k, p, q) : nullptr;
}

// Stores a finished tile of the forward-like GEMM into out (N, K, P, Q):
// tile column j is pixel j0 + j of a grid `width` wide (Q, or the padded
// width of the in-place path, whose columns q >= Q are dropped); row i (the
// group's channel i) gets z = acc + bias[i] (bias may be null), with Extra
// plus the residual and z stored to preact (either may be absent), and the
// activation Act. The loops without Extra, and with a residual alone in
// unit-stride rows (a residual block's usual case), vectorise.
template <typename T, Activation Act, bool Extra>
void store_tile_as(const Conv2dGeometry& g, Tensor4 out, const ResidualPreact& extra, int64_t n,
                   int64_t gi, int64_t i0, int64_t M, const acc_t<T>* tile, int64_t ldc,
                   int64_t j0, int64_t cols, int64_t width, const acc_t<T>* bias) {
  using Acc = acc_t<T>;
  const int64_t k0 = gi * g.K_g() + i0;
  T* base = static_cast<T*>(out.data) + n * out.stride.n + k0 * out.stride.c;
  const T* residual = static_cast<const T*>(extra.residual.data);
  T* preact = static_cast<T*>(extra.preact.data);
  const Strides4 rs = extra.residual.stride, zs = extra.preact.stride;
  if (out.stride.c == 1) {  // channels_last: the channels of a pixel are contiguous
    for (int64_t j = 0, p = j0 / width, q = j0 % width; j < cols; ++j) {
      if (q < g.Q) {
        T* pixel = base + p * out.stride.h + q * out.stride.w;
        const T* res = element_at(residual, rs, n, k0, p, q);
        T* pre = element_at(preact, zs, n, k0, p, q);
        for (int64_t i = 0; i < M; ++i) {
          Acc z = tile[i * ldc + j] + (bias ? bias[i] : Acc(0));
          if constexpr (Extra) {
            if (res) z += to_acc(res[i * rs.c]);
            if (pre) pre[i * zs.c] = from_acc<T>(z);
          }
          pixel[i] = from_acc<T>(apply_activation(z, Act));
        }
      }
      if (++q == width) q = 0, ++p;
    }
    return;
  }
  for (int64_t i = 0; i < M; ++i) {
    T* plane = base + i * out.stride.c;
    const Acc* row = tile + i * ldc;
    const Acc b = bias ? bias[i] : Acc(0);
    for (int64_t j = 0, p = j0 / width, q = j0 % width; j < cols; j += width - q, ++p, q = 0) {
      const int64_t run = std::min(g.Q, q + cols - j) - q;  // one output row's pixels
      T* __restrict dst = plane + p * out.stride.h + q * out.stride.w;
      const Acc* __restrict src = row + j;
      if constexpr (Extra) {
        const T* __restrict res = element_at(residual, rs, n, k0 + i, p, q);
        T* __restrict pre = element_at(preact, zs, n, k0 + i, p, q);
        if (res && !pre && out.stride.w == 1 && rs.w == 1) {  // vectorised
          for (int64_t e = 0; e < run; ++e)
            dst[e] = from_acc<T>(apply_activation(src[e] + b + to_acc(res[e]), Act));
        } else {
          for (int64_t e = 0; e < run; ++e) {
            Acc z = src[e] + b;
            if (res) z += to_acc(res[e * rs.w]);
            if (pre) pre[e * zs.w] = from_acc<T>(z);
            dst[e * out.stride.w] = from_acc<T>(apply_activation(z, Act));
          }
        }
      } else if (out.stride.w == 1) {  // vectorised
        for (int64_t e = 0; e < run; ++e) dst[e] = from_acc<T>(apply_activation(src[e] + b, Act));
      } else {
        for (int64_t e = 0; e < run; ++e)
          dst[e * out.stride.w] = from_acc<T>(apply_activation(src[e] + b, Act));
      }
    }
  }
}

template <typename T, bool Extra>
void store_tile_with(const Conv2dGeometry& g, Tensor4 out, const ResidualPreact& extra,
                     int64_t n, int64_t gi, int64_t i0, int64_t rows, const acc_t<T>* tile,
                     int64_t ldc, int64_t j0, int64_t cols, int64_t width, const acc_t<T>* bias,
                     Activation activation) {
  switch (activation) {
    case Activation::relu:
      return store_tile_as<T, Activation::relu, Extra>(g, out, extra, n, gi, i0, rows, tile, ldc,
                                                       j0, cols, width, bias);
    case Activation::relu6:
      return store_tile_as<T, Activation::relu6, Extra>(g, out, extra, n, gi, i0, rows, tile, ldc,
                                                        j0, cols, width, bias);
    case Activation::silu:
      return store_tile_as<T, Activation::silu, Extra>(g, out, extra, n, gi, i0, rows, tile, ldc,
                                                       j0, cols, width, bias);
    default:
      return store_tile_as<T, Activation::none, Extra>(g, out, extra, n, gi, i0, rows, tile, ldc,
                                                       j0, cols, width, bias);
  }
}

// store_tile_as for a run-time activation, with the residual and
// pre-activation loops only when `extra` has either.
template <typename T>
void store_tile(const Conv2dGeometry& g, Tensor4 out, const ResidualPreact& extra, int64_t n,
                int64_t gi, int64_t i0, int64_t rows, const acc_t<T>* tile, int64_t ldc,
                int64_t j0, int64_t cols, int64_t width, const acc_t<T>* bias,
                Activation activation) {
  if (extra.residual.data || extra.preact.data)
    return store_tile_with<T, true>(g, out, extra, n, gi, i0, rows, tile, ldc, j0, cols, width,
                                    bias, activation);
  store_tile_with<T, false>(g, out, extra, n, gi, i0, rows, tile, ldc, j0, cols, width, bias,
                            activation);
}

template <typename T>
Status forward(const Conv2dGeometry& g, Tensor4 x, Tensor4 w, Tensor1 bias, Tensor4 residual,
               Tensor4 y, Tensor4 preact) {
  using Acc = acc_t<T>;
  const T* wp = static_cast<const T*>(w.data);
  const T* bp = static_cast<const T*>(bias.data);
  const Source<T, false> src{static_cast<const T*>(x.data), x.stride, nullptr, {}, g.activation};
  const ResidualPreact extra{residual, preact};
  const int64_t M = g.K_g();
  auto biases = allocate_aligned<Acc>(g.K);
  if (biases == nullptr) return Status::out_of_memory;
  for (int64_t k = 0; k < g.K; ++k) biases[k] = bp ? to_acc(bp[k * bias.stride]) : Acc(0);
  return forward_gemm(
      g, src, wp, [&](int64_t gi, int64_t k) { return (gi * M + k) * w.stride.n; },
      [&](int64_t, const Tap& t) { return w.stride.offset(0, t.c, t.r, t.s); },
      [&](int64_t n, int64_t gi, int64_t i0, int64_t rows, const Acc* tile, int64_t ldc,
          int64_t j0, int64_t cols, int64_t width) {
        store_tile<T>(g, y, extra, n, gi, i0, rows, tile, ldc, j0, cols, width,
                      biases.get() + gi * M + i0, g.activation);
      });
}

// grad_input of a stride-1 convolution as the forward GEMM over grad_y.
template <typename T>
Status grad_input_stride1(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 w,
                          Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const T* wp = static_cast<const T*>(w.data);
  Conv2dGeometry t = g;  // input grad_y (N, K, P, Q), output grad_x (N, C, H, W)
  t.C = g.K, t.H = g.P, t.W = g.Q, t.K = g.C, t.P = g.H, t.Q = g.W;
  t.pad_top = (g.R - 1) * g.dil_h - g.pad_top;
  t.pad_left = (g.S - 1) * g.dil_w - g.pad_left;
  t.activation = Activation::none;
  const int64_t Kg = g.K_g();
  // Output channel c of the transposed problem, tap (k, r, s): w[gi * Kg + k, c,
  // R - 1 - r, S - 1 - s].
  auto row_offset = [&](int64_t, int64_t c) { return c * w.stride.c; };
  auto tap_offset = [&](int64_t gi, const Tap& t) {
    return w.stride.offset(gi * Kg + t.c, 0, g.R - 1 - t.r, g.S - 1 - t.s);
  };
  auto store = [&](int64_t n, int64_t gi, int64_t i0, int64_t rows, const Acc* tile,
                   int64_t ldc, int64_t j0, int64_t cols, int64_t width) {
    store_tile<T>(t, grad_x, ResidualPreact{}, n, gi, i0, rows, tile, ldc, j0, cols, width,
                  nullptr, Activation::none);
  };
  if (g.activation == Activation::none)
    return forward_gemm(t, Source<T, false>{static_cast<const T*>(grad_y.data), grad_y.stride,
                                            nullptr, {}, Activation::none},
                        wp, row_offset, tap_offset, store);
  return forward_gemm(t, Source<T, true>{static_cast<const T*>(grad_y.data), grad_y.stride,
                                         static_cast<const T*>(y.data), y.stride, g.activation},
                      wp, row_offset, tap_offset, store);
}

// grad_input of a strided convolution: per image and block of a group's
// input channels, dX_cols[(c, r, s), pq] = W^T[(c, r, s), k] * dY'[k, pq]
// (the GEMM), scattered into the block's planes (col2im) in a fixed order:
// pixel blocks, then taps, then pixels. A task is a block of channels and a
// group of images: it packs its rows of W^T once for its images, and each
// image's dY' once. Of the two splits into about four tasks per thread, by
// images first (W^T packed per image) or by channels first (dY' packed per
// channel block), the one that packs fewer values runs: W^T per image took
// 2/3 of ResNet-50's last downsample's backward (2048 x 1024 rows, 7 x 7
// pixels), dY' per channel block 40% more time on the first (512 x 256, 28 x 28).
template <typename T, bool Masked>
Status grad_input_scatter(const Conv2dGeometry& g, const Source<T, Masked>& dy, Tensor4 w,
                          Tensor4 grad_x) {
  using Acc = acc_t<T>;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const T* wp = static_cast<const T*>(w.data);
  const int64_t Kg = g.K_g(), Cg = g.C_g(), RS = g.R * g.S, G = g.groups;
  // Channel blocks of at most 576 GEMM rows and groups of images, about four
  // tasks per thread: `split` more channel blocks per (image group, group).
  const int64_t wanted = 4 * int64_t{omp_get_max_threads()}, PQ = g.P * g.Q;
  struct Split {
    int64_t channels, images, packed;
  };
  auto split = [&](int64_t image_groups) {
    const int64_t channels =
        std::clamp<int64_t>(ceil_div(Cg, ceil_div(wanted, G * image_groups)), 1,
                            std::max<int64_t>(1, 576 / RS));
    const int64_t images = ceil_div(g.N, image_groups);
    return Split{channels, images,
                 ceil_div(g.N, images) * Cg * RS * Kg + g.N * ceil_div(Cg, channels) * Kg * PQ};
  };
  const Split by_images = split(std::min(g.N, ceil_div(wanted, G)));
  Split by_channels = split(1);
  by_channels = split(std::clamp<int64_t>(
      ceil_div(wanted, G * ceil_div(Cg, by_channels.channels)), 1, g.N));
  const Split chosen = by_images.packed <= by_channels.packed ? by_images : by_channels;
  const int64_t channels = chosen.channels, images = chosen.images;
  const int64_t blocks_c = ceil_div(Cg, channels), image_groups = ceil_div(g.N, images);
  const int64_t rows_pad = round_up(channels * RS, mk.mr);
  const int64_t block = std::min(PIXEL_BLOCK, PQ);
  const int64_t blocks_p = (PQ + block - 1) / block, cols_pad = round_up(block, mk.nr);
  // grad_y as the input of a 1 x 1 convolution: its taps are the channels k.
  Conv2dGeometry pointwise = g;
  pointwise.C = g.K, pointwise.H = g.P, pointwise.W = g.Q, pointwise.R = pointwise.S = 1;
  pointwise.stride_h = pointwise.stride_w = pointwise.dil_h = pointwise.dil_w = 1;
  pointwise.pad_top = pointwise.pad_left = 0;
  const Taps channel_taps{Kg, 1, 1, false};
  const auto channel_table = tap_table(channel_taps, Kg, pointwise);
  const auto row_table = tap_table(Taps{Cg, g.R, g.S, false}, Cg * RS, g);  // rows (c, r, s)
  auto row_offsets = allocate_aligned<int64_t>(Cg * RS);
  if (channel_table == nullptr || row_table == nullptr || row_offsets == nullptr)
    return Status::out_of_memory;
  for (int64_t i = 0; i < Cg * RS; ++i) {
    const Tap& t = row_table[i];
    row_offsets[i] = w.stride.offset(0, t.c, t.r, t.s);
  }
  T* gxp = static_cast<T*>(grad_x.data);
  return parallel_tasks<Acc>(
      image_groups * G * blocks_c,
      cache_lines<Acc>(rows_pad * Kg) + KC * cols_pad + rows_pad * cols_pad +
          channels * g.H * g.W,
      [&](int64_t task, Acc* scratch) {
        const int64_t cb = task % blocks_c, gi = (task / blocks_c) % G;
        const int64_t n0 = task / (blocks_c * G) * images, n1 = std::min(g.N, n0 + images);
        const int64_t c0 = cb * channels, count = std::min(channels, Cg - c0), rows = count * RS;
        Acc* a = scratch;
        Acc* b = a + cache_lines<Acc>(rows_pad * Kg);
        Acc* tile = b + KC * cols_pad;
        Acc* planes = tile + rows_pad * cols_pad;
        for (int64_t l0 = 0; l0 < Kg; l0 += KC)
          gemm::pack_a<Acc>(rows, std::min(KC, Kg - l0), mk.mr,
                            [wp, tap = row_offsets.get() + c0 * RS,
                             base = (gi * Kg + l0) * w.stride.n, wn = w.stride.n](int64_t i,
                                                                                  int64_t k) {
                              return to_acc(wp[base + k * wn + tap[i]]);
                            },
                            a + l0 * rows_pad);
        for (int64_t n = n0; n < n1; ++n) {
          std::fill(planes, planes + count * g.H * g.W, Acc(0));
          for (int64_t jb = 0; jb < blocks_p; ++jb) {
            const int64_t j0 = jb * block, cols = std::min(block, PQ - j0);
            for (int64_t l0 = 0; l0 < Kg; l0 += KC) {
              const int64_t kc = std::min(KC, Kg - l0);
              gather_pixels(pointwise, dy, channel_taps, channel_table.get(), n, gi * Kg, l0, kc,
                            j0, cols, mk.nr, b, 0);
              gemm::zero_b_padding(kc, cols, mk.nr, b);
              gemm::multiply_packed(mk, kc, rows_pad / mk.mr, (cols + mk.nr - 1) / mk.nr,
                                    a + l0 * rows_pad, b, tile, cols_pad, l0 > 0);
            }
            for (int64_t i = 0; i < rows; ++i) {  // col2im
              const Tap& t = row_table[c0 * RS + i];
              const int64_t r = t.r, s = t.s;
              const IndexRange valid_p = t.rows, valid_q = t.cols;
              Acc* plane = planes + (t.c - c0) * g.H * g.W;
              const Acc* row = tile + i * cols_pad;
              for (int64_t j = 0, p = j0 / g.Q, q = j0 % g.Q; j < cols; j += g.Q - q, ++p, q = 0) {
                const int64_t end = std::min(g.Q, q + cols - j);
                if (p < valid_p.lo || p >= valid_p.hi) continue;
                const int64_t lo = std::clamp(valid_q.lo, q, end);
                const int64_t hi = std::clamp(valid_q.hi, lo, end);
                Acc* out = plane + conv_input_index(p, r, g.stride_h, g.pad_top, g.dil_h) * g.W +
                           conv_input_index(lo, s, g.stride_w, g.pad_left, g.dil_w);
                const Acc* in = row + j + (lo - q);
                const int64_t step = g.stride_w;
                for (int64_t e = 0; e < hi - lo; ++e) out[e * step] += in[e];
              }
            }
          }
          for (int64_t c = 0; c < count; ++c)
            for (int64_t h = 0; h < g.H; ++h) {
              T* out = gxp + grad_x.stride.offset(n, gi * Cg + c0 + c, h, 0);
              const Acc* in = planes + (c * g.H + h) * g.W;
              if (grad_x.stride.w == 1)
                for (int64_t iw = 0; iw < g.W; ++iw) out[iw] = from_acc<T>(in[iw]);
              else
                for (int64_t iw = 0; iw < g.W; ++iw)
                  out[iw * grad_x.stride.w] = from_acc<T>(in[iw]);
            }
        }
      },
      images * gemm::tile_work(rows_pad, PQ, Kg));
}

// Packs A = dY'[k, f] for the group's K/groups rows and reduction indices
// f in [f0, f0 + kc) of the flattened (n, pq), adding each value to its
// row's bias sum when bias_sums is given.
template <typename T, bool Masked>
void gather_grad_rows(const Conv2dGeometry& g, const Source<T, Masked>& dy, int64_t k_base,
                      int64_t f0, int64_t kc, int mr, acc_t<T>* a, acc_t<T>* bias_sums) {
  using Acc = acc_t<T>;
  const int64_t M = g.K_g(), PQ = g.P * g.Q;
  for (int64_t i0 = 0; i0 < M; i0 += mr) {  // zero the padding rows
    Acc* panel = a + i0 * kc;
    for (int64_t l = 0; l < kc; ++l)
      for (int64_t i = std::min<int64_t>(mr, M - i0); i < mr; ++i) panel[l * mr + i] = Acc(0);
  }
  for (int64_t k = 0; k < M; ++k) {
    gemm::Cursor<Acc> cursor{a + (k / mr) * mr * kc + k % mr, 0, kc, mr, 0};
    Acc sum = 0;
    for (int64_t f = f0, n = f0 / PQ, pq = f0 % PQ; f < f0 + kc;) {
      const int64_t run = std::min(PQ - pq, f0 + kc - f);
      const int64_t p = pq / g.Q, q = pq % g.Q;
      // One run of pixels of image n: consecutive pq, row by row.
      for (int64_t e = 0, pp = p, qq = q; e < run;) {
        const int64_t m = std::min(g.Q - qq, run - e);
        const int64_t at = dy.stride.offset(n, k_base + k, pp, qq);
        const int64_t mask_at = dy.mask_stride.offset(n, k_base + k, pp, qq);
        cursor.put(m, [&](int64_t i) {
          const Acc v = dy.at(at + i * dy.stride.w, mask_at + i * dy.mask_stride.w);
          sum += v;
          return v;
        });
        e += m, ++pp, qq = 0;
      }
      f += run, ++n, pq = 0;
    }
    if (bias_sums) bias_sums[k] += sum;
  }
}

// Packs B = X[f, l] for reduction indices f in [f0, f0 + kc) (flattened
// (n, p, q)) and taps l in [l0, l0 + cols).
template <typename T>
void gather_input_taps(const Conv2dGeometry& g, const Source<T, false>& x, const Tap* table,
                       int64_t c_base, int64_t f0, int64_t kc, int64_t l0, int64_t cols, int nr,
                       acc_t<T>* b) {
  using Acc = acc_t<T>;
  const int64_t PQ = g.P * g.Q;
  for (int64_t l = 0; l < cols; ++l) {
    const Tap& t = table[l0 + l];
    const IndexRange rows = t.rows, valid = t.cols;
    gemm::Cursor<Acc> cursor{b + (l / nr) * kc * nr + l % nr, 0, kc, nr, 0};
    for (int64_t f = f0, n = f0 / PQ, p = (f0 % PQ) / g.Q, q = f0 % g.Q; f < f0 + kc;) {
      const int64_t end = std::min(g.Q, q + f0 + kc - f);
      if (p < rows.lo || p >= rows.hi) {
        cursor.zeros(end - q);
      } else {
        const int64_t lo = std::clamp(valid.lo, q, end), hi = std::clamp(valid.hi, lo, end);
        const int64_t ih = conv_input_index(p, t.r, g.stride_h, g.pad_top, g.dil_h);
        const int64_t iw = conv_input_index(lo, t.s, g.stride_w, g.pad_left, g.dil_w);
        const int64_t at = x.stride.offset(n, c_base + t.c, ih, iw);
        const int64_t step = g.stride_w * x.stride.w;
        cursor.zeros(lo - q);
        x.put_run(cursor, hi - lo, at, step, 0, 0);
        cursor.zeros(end - hi);
      }
      f += end - q;
      q = 0;
      if (++p == g.P) p = 0, ++n;
    }
  }
}

template <typename T, bool Masked>
Status grad_weight_gemm(const Conv2dGeometry& g, const Source<T, Masked>& dy, Tensor4 x,
                        Tensor4 grad_w, Tensor1 grad_bias) {
  using Acc = acc_t<T>;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const int64_t M = g.K_g(), L = g.reduction_size(), G = g.groups;
  const int64_t m_pad = round_up(M, mk.mr), F = g.N * g.P * g.Q;
  const Source<T, false> xs{static_cast<const T*>(x.data), x.stride, nullptr, {}, g.activation};
  const Taps taps{g.C_g(), g.R, g.S, x.stride.c == 1 && g.C_g() > 1};
  T* gbp = static_cast<T*>(grad_bias.data);

  // Fixed chunks of the reduction; fewer when the partial sums grow large.
  int64_t splits = std::clamp<int64_t>(F / SPLIT_MIN, 1, MAX_SPLITS);
  while (splits > 1 && splits * G * M * L > (int64_t{1} << 26)) splits /= 2;
  const int64_t chunk = (F + splits - 1) / splits;
  const int64_t block = std::min(TAP_BLOCK, L), blocks = (L + block - 1) / block;
  const int64_t cols_pad = round_up(block, mk.nr);
  auto partial = allocate_aligned<Acc>(splits * G * (M * L + M));
  const auto table = tap_table(taps, L, g);
  if (partial == nullptr || table == nullptr) return Status::out_of_memory;
  Acc* bias_partial = partial.get() + splits * G * M * L;

  Status status = parallel_tasks<Acc>(
      G * splits * blocks, m_pad * KC + KC * cols_pad + m_pad * cols_pad + M,
      [&](int64_t task, Acc* scratch) {
        const int64_t lb = task % blocks, split = (task / blocks) % splits;
        const int64_t gi = task / (blocks * splits);
        const int64_t f_begin = split * chunk, f_end = std::min(F, f_begin + chunk);
        const int64_t l0 = lb * block, cols = std::min(block, L - l0);
        Acc* a = scratch;
        Acc* b = a + m_pad * KC;
        Acc* tile = b + KC * cols_pad;
        Acc* sums = tile + m_pad * cols_pad;
        std::fill(sums, sums + M, Acc(0));
        std::fill(tile, tile + m_pad * cols_pad, Acc(0));
        for (int64_t f0 = f_begin; f0 < f_end; f0 += KC) {
          const int64_t kc = std::min(KC, f_end - f0);
          gather_grad_rows(g, dy, gi * M, f0, kc, mk.mr, a, lb == 0 ? sums : nullptr);
          gather_input_taps(g, xs, table.get(), gi * g.C_g(), f0, kc, l0, cols, mk.nr, b);
          gemm::zero_b_padding(kc, cols, mk.nr, b);
          gemm::multiply_packed(mk, kc, m_pad / mk.mr, (cols + mk.nr - 1) / mk.nr, a, b, tile,
                                cols_pad, true);
        }
        Acc* out = partial.get() + (split * G + gi) * M * L;
        for (int64_t k = 0; k < M; ++k)
          std::copy(tile + k * cols_pad, tile + k * cols_pad + cols, out + k * L + l0);
        if (lb == 0) std::copy(sums, sums + M, bias_partial + (split * G + gi) * M);
      },
      gemm::tile_work(m_pad, cols_pad, chunk));
  if (status != Status::ok) return status;

  T* gwp = static_cast<T*>(grad_w.data);
#pragma omp parallel for schedule(dynamic) num_threads(parallel_threads(splits * G * M * L, G * M))
  for (int64_t row = 0; row < G * M; ++row) {  // sum the partials in chunk order
    const int64_t gi = row / M, k = row % M;
    for (int64_t l = 0; l < L; ++l) {
      Acc v = 0;
      for (int64_t split = 0; split < splits; ++split)
        v += partial[(split * G + gi) * M * L + k * L + l];
      const Tap& t = table[l];
      gwp[grad_w.stride.offset(row, t.c, t.r, t.s)] = from_acc<T>(v);
    }
    if (gbp) {
      Acc v = 0;
      for (int64_t split = 0; split < splits; ++split) v += bias_partial[(split * G + gi) * M + k];
      gbp[row * grad_bias.stride] = from_acc<T>(v);
    }
  }
  return Status::ok;
}

template <typename T>
Status grad_weight(const Conv2dGeometry& g, Tensor4 grad_y, Tensor4 y, Tensor4 x, Tensor4 grad_w,
                   Tensor1 grad_bias) {
  const T* gy = static_cast<const T*>(grad_y.data);
  if (g.activation == Activation::none)
    return grad_weight_gemm(g, Source<T, false>{gy, grad_y.stride, nullptr, {}, g.activation},
                            x, grad_w, grad_bias);
  return grad_weight_gemm(g, Source<T, true>{gy, grad_y.stride, static_cast<const T*>(y.data),
                                             y.stride, g.activation},
                          x, grad_w, grad_bias);
}

// Whether a stride-1 grad_input costs less as the scatter (col2im) GEMM:
// the gather packs K/groups * R * S values per input pixel, each used by
// C/groups rows; the scatter writes and re-reads C/groups * R * S values
// per output pixel, each the sum of K/groups products. With few input
// channels (LeNet-5's C3: 6 -> 16 at 14 x 14, 2.5x less traffic; its
// backward 1.8x faster) the scatter wins, once its GEMM's reduction K/groups
// is long enough (16) to amortise a micro-tile's loads and stores (LeNet's
// C1, 3 -> 6: 1.4x slower as the scatter). A 1 x 1 filter's two GEMMs are
// alike: it keeps the gather.
bool scatter_is_cheaper(const Conv2dGeometry& g) {
  return g.R * g.S > 1 && g.K_g() >= 16 && 2 * g.C_g() * g.P * g.Q < g.K_g() * g.H * g.W;
}

}  // namespace

Status conv2d_implicit_gemm_forward(DType dtype, const Conv2dGeometry& g, Tensor4 x, Tensor4 w,
                                    Tensor1 bias, Tensor4 residual, Tensor4 y, Tensor4 preact) {
  if (Status s = check_forward_launch(g, x, w, y); s != Status::ok || g.N == 0) return s;
  return dispatch_dtype(dtype, [&](auto type) {
    return forward<typename decltype(type)::type>(g, x, w, bias, residual, y, preact);
  });
}

Status conv2d_implicit_gemm_grad_input(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                       Tensor4 y, Tensor4 w, Tensor4 grad_x) {
  if (Status s = check_grad_input_launch(g, grad_y, y, w, grad_x); s != Status::ok || g.N == 0)
    return s;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    const T* gy = static_cast<const T*>(grad_y.data);
    if (g.stride_h == 1 && g.stride_w == 1 && !scatter_is_cheaper(g))
      return grad_input_stride1<T>(g, grad_y, y, w, grad_x);
    if (g.activation == Activation::none)
      return grad_input_scatter(g, Source<T, false>{gy, grad_y.stride, nullptr, {}, g.activation},
                                w, grad_x);
    return grad_input_scatter(g, Source<T, true>{gy, grad_y.stride, static_cast<const T*>(y.data),
                                                 y.stride, g.activation},
                              w, grad_x);
  });
}

Status conv2d_implicit_gemm_grad_weight(DType dtype, const Conv2dGeometry& g, Tensor4 grad_y,
                                        Tensor4 y, Tensor4 x, Tensor4 grad_w,
                                        Tensor1 grad_bias) {
  if (Status s = check_grad_weight_launch(g, grad_y, y, x, grad_w); s != Status::ok) return s;
  if (g.N == 0) return conv2d_direct_grad_weight(dtype, g, grad_y, y, x, grad_w, grad_bias);
  return dispatch_dtype(dtype, [&](auto type) {
    return grad_weight<typename decltype(type)::type>(g, grad_y, y, x, grad_w, grad_bias);
  });
}

}  // namespace cnnk::cpu
