// gram on the cpu: the Gram matrix, its backward and the fused style loss on
// the GEMM core (cnnk/cpu_gemm.h), contracts in cnnk/gram.h.
//
// The upper triangle (gram_matrix and style_loss): G = x x^T is a SYRK, C
// small and L = H * W long. A task owns one image, one slice of L and one
// band of rows; per KC-step chunk of its slice it packs the chunk of x
// once, reduction-major (step l's channels [c0, C) in one row; c0 the
// band's first row, rounded down to nr), and runs the micro-kernel on the
// micro-tiles (mr x nr) that hold an element i <= j only, both operands
// read from that one copy (MicroKernel::run_strided: a tile's A rows and B
// columns are runs of each step's row, so nothing is packed twice): a
// tile's B columns stay in L1 while an A block of MC rows (L2) streams past.
// Each task accumulates into its own accumulator (one C x C tile per image
// and slice; bands own disjoint rows). With `other` (x o^T + o x^T, also
// symmetric) it packs both and runs two products. Slices (when L is long)
// and bands (balanced by area, when C is large) make enough tasks for the
// threads; the epilogue adds a tile's slices in slice order, so the result
// is deterministic for a given thread count. The epilogues:
//   gram_matrix  scales and stores each upper element and its mirror;
//   style_loss   per tile x tile tile (cnnk/gram.h), the squared differences
//                against the target (the lower triangle through the upper:
//                (e - t[i, j])^2 + (e - t[j, i])^2, the mirror transposed
//                so both run along rows), the residual if wanted, and a
//                partial sum per tile in kLanes lanes (vectorisable, a fixed
//                order); the partials are then added in order in double.
//                G is never written.
// Bound: compute, 2 * B * C * (C + nr) / 2 * L flops (a bmm's 2 * B * C^2 * L
// for C >> nr halves); packing writes x once per band and chunk; the
// accumulators (B * slices * C^2 values) are scratch.
//
// gram_matrix_backward: grad_x[b] = S x[b] with S = scale (dG + dG^T),
// a GEMM of M = C, N = L, K = C. S is packed once per image (the A operand);
// a task owns a block of (at most) kColumns columns of one image, packs its B panel
// from x chunk by chunk and runs every row of S past it. 2 * B * C^2 * L
// flops; x read once, grad_x written once.
//
// Limits: any strides; float16/bfloat16 are converted to float when packed.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cnnk/cpu_gemm.h"
#include "cnnk/cpu_types.h"
#include "cnnk/gram.h"

namespace cnnk::cpu {
namespace {

constexpr int64_t kColumns = 256;  // columns of L per backward task
constexpr int64_t kMinSlice = 4 * gemm::KC;  // shortest L slice worth a task of its own
constexpr int64_t kMinBand = 48;   // fewest rows in a band of the triangle

// Element (c, l) of image b of a (B, C, L) tensor, in the accumulator type.
template <typename T>
struct Rows {
  const T* data;
  int64_t sb, sc, sl;
  acc_t<T> operator()(int64_t b, int64_t c, int64_t l) const {
    return to_acc(data[b * sb + c * sc + l * sl]);
  }
};

template <typename T>
Rows<T> rows_of(Tensor3 t) {
  return {static_cast<const T*>(t.data), t.stride[0], t.stride[1], t.stride[2]};
}

typedef float F32x4 __attribute__((vector_size(16)));  // SSE2 / NEON, GCC and Clang

// Writes the 4 x 4 block of four rows (`stride` apart) from `src` on,
// transposed: four steps of four packed lanes, `width` apart. In
// registers (eight shuffles), twice the rate of element-by-element stores.
inline void transpose4(const float* src, int64_t stride, float* dst, int64_t width) {
  F32x4 r[4];
  for (int k = 0; k < 4; ++k) std::memcpy(&r[k], src + k * stride, sizeof(F32x4));
  const F32x4 ab_lo = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
  const F32x4 ab_hi = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  const F32x4 cd_lo = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
  const F32x4 cd_hi = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  const F32x4 t[4] = {__builtin_shufflevector(ab_lo, cd_lo, 0, 1, 4, 5),
                      __builtin_shufflevector(ab_lo, cd_lo, 2, 3, 6, 7),
                      __builtin_shufflevector(ab_hi, cd_hi, 0, 1, 4, 5),
                      __builtin_shufflevector(ab_hi, cd_hi, 2, 3, 6, 7)};
  for (int k = 0; k < 4; ++k) std::memcpy(dst + k * width, &t[k], sizeof(F32x4));
}

// Writes steps [l0, l0 + kc) of channels [c0, C) of image b of u
// reduction-major, out[l * ld + c - c0], zeros in columns [C - c0, ld): the
// one packed copy of a chunk, whose rows both operands of the Gram's
// micro-kernel read (MicroKernel::run_strided). When l is u's contiguous
// dimension (NCHW) four rows are read in order at a time, float by 4 x 4
// register transposes; channels_last rows are copied.
template <typename Acc, typename T>
void pack_steps(const Rows<T>& u, int64_t b, int64_t c0, int64_t C, int64_t l0, int64_t kc,
                int64_t ld, Acc* out) {
  const int64_t valid = C - c0;
  const T* base = u.data + b * u.sb + c0 * u.sc + l0 * u.sl;
  for (int64_t l = 0; l < kc; ++l) std::fill(out + l * ld + valid, out + (l + 1) * ld, Acc(0));
  if constexpr (std::is_same_v<T, Acc>) {
    if (u.sc == 1) {
      for (int64_t l = 0; l < kc; ++l)
        std::memcpy(out + l * ld, base + l * u.sl, sizeof(Acc) * static_cast<size_t>(valid));
      return;
    }
  }
  int64_t c = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (u.sl == 1) {
      for (; c + 4 <= valid; c += 4) {
        const float* rows = base + c * u.sc;
        int64_t l = 0;
        for (; l + 4 <= kc; l += 4) transpose4(rows + l, u.sc, out + l * ld + c, ld);
        for (; l < kc; ++l)
          for (int i = 0; i < 4; ++i) out[l * ld + c + i] = rows[i * u.sc + l];
      }
    }
  }
  for (; c < valid; ++c)
    for (int64_t l = 0; l < kc; ++l) out[l * ld + c] = to_acc(base[c * u.sc + l * u.sl]);
}

// How the upper triangle's work is cut into tasks (image, slice, band) and
// where each task accumulates: accumulator (b, slice) is rows x cols values
// (row stride cols) at (b * slices + slice) * rows * cols.
struct UpperPlan {
  int64_t slices = 1, slice = 0, rows = 0, cols = 0;
  std::vector<int64_t> bands;  // band boundaries: multiples of mr, from 0 to rows

  int64_t band_count() const { return static_cast<int64_t>(bands.size()) - 1; }
  int64_t tasks(int64_t batch) const { return batch * slices * band_count(); }
};

// Enough tasks for the threads (four each: the dynamic schedule evens out
// a thread that is descheduled; one on one thread): slices of L first (no work repeated),
// then bands of rows of equal area of the triangle (each band packs the
// channels from its first row on).
UpperPlan plan_upper(const GramGeometry& g, int mr, int nr) {
  UpperPlan p;
  p.rows = gemm::round_up(g.C, mr);
  p.cols = gemm::round_up(g.C, nr);
  const int64_t threads = omp_get_max_threads(), wanted = threads > 1 ? 4 * threads : 1;
  p.slices = std::clamp<int64_t>(ceil_div(wanted, g.B), 1, std::max<int64_t>(1, g.L / kMinSlice));
  p.slice = gemm::round_up(ceil_div(std::max<int64_t>(g.L, 1), p.slices), gemm::KC);
  const int64_t bands = std::clamp<int64_t>(ceil_div(wanted, g.B * p.slices), 1,
                                            std::max<int64_t>(1, p.rows / kMinBand));
  // Rows [0, r) of the triangle hold about r (C - r / 2) elements: band k
  // ends where that reaches k / bands of the whole.
  p.bands.push_back(0);
  for (int64_t k = 1; k < bands; ++k) {
    const double r = g.C * (1.0 - std::sqrt(1.0 - static_cast<double>(k) / bands));
    const int64_t edge = gemm::round_up(static_cast<int64_t>(r), mr);
    if (edge > p.bands.back() && edge < p.rows) p.bands.push_back(edge);
  }
  p.bands.push_back(p.rows);
  return p;
}

// The upper triangle's micro-tiles of x[b] x[b]^T (or x o^T + o x^T) for
// every image, accumulated by plan_upper's tasks into `acc`.
template <typename T>
Status upper_products(const GramGeometry& g, Tensor3 x, Tensor3 other, const UpperPlan& p,
                      const gemm::MicroKernel<acc_t<T>>& mk, acc_t<T>* acc) {
  using Acc = acc_t<T>;
  using gemm::KC;
  const bool cross = other.data != nullptr;
  const Rows<T> a = rows_of<T>(x), o = rows_of<T>(cross ? other : x);
  // A packed chunk's row: every row (p.rows) and column (p.cols) a micro-tile
  // reads, from channel c0 on, rounded up to whole cache lines.
  const int64_t widest = std::max(p.rows, p.cols);
  const int64_t operand = gemm::round_up(widest, 16) * KC;
  const int64_t bands = p.band_count(), block = gemm::MC / mk.mr;
  return parallel_tasks<Acc>(p.tasks(g.B), (cross ? 2 : 1) * operand, [&](int64_t task,
                                                                            Acc* scratch) {
    const int64_t b = task / (p.slices * bands), s = task / bands % p.slices;
    const int64_t r0 = p.bands[task % bands], r1 = p.bands[task % bands + 1];
    const int64_t c0 = r0 / mk.nr * mk.nr, ld = gemm::round_up(widest - c0, 16);
    Acc* tile = acc + (b * p.slices + s) * p.rows * p.cols;
    const int64_t l_begin = s * p.slice, l_end = std::min(g.L, l_begin + p.slice);
    if (l_begin >= l_end)
      for (int64_t i = r0; i < r1; ++i)
        std::fill(tile + i * p.cols, tile + (i + 1) * p.cols, Acc(0));
    for (int64_t l0 = l_begin; l0 < l_end; l0 += KC) {
      const int64_t kc = std::min(KC, l_end - l0);
      Acc* packed[2];  // x's chunk, o's
      for (int k = 0; k < (cross ? 2 : 1); ++k) {
        packed[k] = scratch + k * operand;
        pack_steps(k == 0 ? a : o, b, c0, g.C, l0, kc, ld, packed[k]);
      }
      if (!cross) packed[1] = packed[0];
      // A blocks of MC rows (L2) past one B micro-panel (L1) at a time; a
      // micro-tile is needed when its first row is at most its last column.
      for (int64_t ib = r0 / mk.mr; ib < r1 / mk.mr; ib += block) {
        const int64_t ie = std::min(ib + block, r1 / mk.mr);
        for (int64_t jp = ib * mk.mr / mk.nr; jp < p.cols / mk.nr; ++jp) {
          const int64_t last = std::min(ie, (jp * mk.nr + mk.nr - 1) / mk.mr + 1);
          for (int64_t ip = ib; ip < last; ++ip) {
            const int64_t a_at = ip * mk.mr - c0, b_at = jp * mk.nr - c0;
            Acc* c = tile + ip * mk.mr * p.cols + jp * mk.nr;
            mk.run_strided(kc, packed[0] + a_at, ld, packed[1] + b_at, ld, c, p.cols,
                           l0 > l_begin);
            if (cross)
              mk.run_strided(kc, packed[1] + a_at, ld, packed[0] + b_at, ld, c, p.cols, true);
          }
        }
      }
    }
  },
      gemm::tile_work(p.rows, p.cols, p.slice) / std::max<int64_t>(1, 2 * bands));
}

constexpr int64_t kStoreTile = 32;  // side of the tiles gram_matrix's store works in

// Runs fn(b, ti, tj, e) on every tile (ti <= tj) of side `tile` of every
// image's upper triangle, e the tile's values (row stride `tile`), scaled by
// `factor`, the slices added in order; valid where i <= j, that is, on and
// above the diagonal. A task per tile row (b, ti), in tile order; row
// (b, ti)'s tiles run in tj order. The tiles keep the mirrored (column)
// accesses of a store within a few cache lines.
template <typename Acc, typename Fn>
Status for_upper_tiles(const GramGeometry& g, const UpperPlan& p, const Acc* acc, Acc factor,
                       int64_t tile, Fn fn) {
  const int64_t tiles = ceil_div(g.C, tile), plane = p.rows * p.cols;
  return parallel_tasks<Acc>(g.B * tiles, tile * tile, [&](int64_t task, Acc* e) {
    const int64_t b = task / tiles, ti = task % tiles;
    const int64_t i0 = ti * tile, i1 = std::min(g.C, i0 + tile);
    for (int64_t tj = ti; tj < tiles; ++tj) {
      const int64_t j0 = tj * tile, j1 = std::min(g.C, j0 + tile);
      for (int64_t i = i0; i < i1; ++i) {  // row by row: vectorisable loops
        const Acc* at = acc + b * p.slices * plane + i * p.cols;
        Acc* row = e + (i - i0) * tile - j0;
        const int64_t jb = std::max(i, j0);
        std::copy(at + jb, at + j1, row + jb);
        for (int64_t s = 1; s < p.slices; ++s)
          for (int64_t j = jb; j < j1; ++j) row[j] += at[s * plane + j];
        for (int64_t j = jb; j < j1; ++j) row[j] *= factor;
      }
      fn(b, ti, tj, e);
    }
  },
      tile * g.C * p.slices);
}

template <typename T>
Status gram_forward(const GramGeometry& g, Tensor3 x, Tensor3 other, double scale, Tensor3 gram) {
  using Acc = acc_t<T>;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const UpperPlan p = plan_upper(g, mk.mr, mk.nr);
  auto acc = allocate_aligned<Acc>(g.B * p.slices * p.rows * p.cols);
  if (acc == nullptr) return Status::out_of_memory;
  const Status s = upper_products<T>(g, x, other, p, mk, acc.get());
  if (s != Status::ok) return s;
  // Each upper element and its mirror, both written along rows.
  T* out = static_cast<T*>(gram.data);
  const int64_t tile = kStoreTile;
  return for_upper_tiles(g, p, acc.get(), static_cast<Acc>(scale), tile,
                         [&](int64_t b, int64_t ti, int64_t tj, const Acc* e) {
    const int64_t i0 = ti * tile, j0 = tj * tile;
    const int64_t i1 = std::min(g.C, i0 + tile), j1 = std::min(g.C, j0 + tile);
    T* image = out + b * gram.stride[0];
    const int64_t s1 = gram.stride[1], s2 = gram.stride[2];
    for (int64_t i = i0; i < i1; ++i) {
      const Acc* row = e + (i - i0) * tile - j0;
      T* dst = image + i * s1;
      if (s2 == 1)  // the usual contiguous result: a vectorisable row
        for (int64_t j = std::max(i, j0); j < j1; ++j) dst[j] = from_acc<T>(row[j]);
      else
        for (int64_t j = std::max(i, j0); j < j1; ++j) dst[j * s2] = from_acc<T>(row[j]);
    }
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t i = i0; i < std::min(i1, j); ++i)
        image[j * s1 + i * s2] = from_acc<T>(e[(i - i0) * tile + j - j0]);
  });
}

// Side of the largest style tile (the tile's mirror is transposed on the stack).
constexpr int64_t kMaxStyleTile = 64;

// lanes += (e[k] - target[b, row, col0 + k])^2 for k in [0, n), lane k mod
// kLanes; the differences written to residual[b, row, col0 + k] if `image`
// (residual's image b) is given. Contiguous rows take vector loads.
template <typename T, typename Acc>
void add_squared_differences(const Acc* e, const Rows<T>& t, int64_t b, int64_t row,
                             int64_t col0, int64_t n, T* image, Tensor3 residual,
                             Lanes<Acc>& lanes) {
  const T* target = t.data + b * t.sb + row * t.sc + col0 * t.sl;
  T* out = image == nullptr ? nullptr : image + row * residual.stride[1] + col0 * residual.stride[2];
  int64_t k = 0;
  if (t.sl == 1 && (out == nullptr || residual.stride[2] == 1)) {
    for (; k + kLanes <= n; k += kLanes) {
      const Lanes<Acc> v = Lanes<Acc>::load(e + k), w = Lanes<Acc>::load(target + k);
      for (int j = 0; j < Lanes<Acc>::kParts; ++j) {
        const typename Lanes<Acc>::Part d = v.part[j] - w.part[j];
        lanes.part[j] += d * d;
        if (out)
          for (int l = 0; l < Lanes<Acc>::kWidth; ++l)
            out[k + j * Lanes<Acc>::kWidth + l] = from_acc<T>(d[l]);
      }
    }
  }
  for (; k < n; ++k) {
    const Acc d = e[k] - to_acc(target[k * t.sl]);
    lanes[static_cast<int>(k % kLanes)] += d * d;
    if (out) out[k * residual.stride[2]] = from_acc<T>(d);
  }
}

template <typename T>
Status style_forward(const StyleLossGeometry& sg, Tensor3 x, Tensor3 target, double gram_scale,
                     double loss_scale, Tensor1 partials, Tensor3 residual, Tensor1 out) {
  using Acc = acc_t<T>;
  const GramGeometry g{sg.B, sg.C, sg.L, sg.splits, sg.slice_len};
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const UpperPlan p = plan_upper(g, mk.mr, mk.nr);
  auto acc = allocate_aligned<Acc>(g.B * p.slices * p.rows * p.cols);
  if (acc == nullptr) return Status::out_of_memory;
  Status s = upper_products<T>(g, x, Tensor3{}, p, mk, acc.get());
  if (s != Status::ok) return s;
  const Rows<T> t = rows_of<T>(target);
  T* r = static_cast<T*>(residual.data);
  Acc* sums = static_cast<Acc*>(partials.data);
  const int64_t tile = sg.tile, tiles = ceil_div(g.C, tile);
  for (int64_t b = 0; b < g.B; ++b)  // the tiles below the diagonal
    for (int64_t ti = 1; ti < tiles; ++ti)
      for (int64_t tj = 0; tj < ti; ++tj) sums[((b * tiles + ti) * tiles + tj) * partials.stride] = 0;
  // A tile's partial: its upper elements against target[i, j] (along rows),
  // then off the diagonal the same values, transposed into a scratch tile,
  // against target[j, i] (along the mirrored rows), so target and residual
  // are read and written along rows; each row's squares summed in lanes.
  s = for_upper_tiles(g, p, acc.get(), static_cast<Acc>(gram_scale), tile,
                      [&](int64_t b, int64_t ti, int64_t tj, const Acc* e) {
    const int64_t i0 = ti * tile, j0 = tj * tile;
    const int64_t i1 = std::min(g.C, i0 + tile), j1 = std::min(g.C, j0 + tile);
    T* image = r == nullptr ? nullptr : r + b * residual.stride[0];
    Lanes<Acc> lanes;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t jb = std::max(i, j0);
      add_squared_differences(e + (i - i0) * tile + jb - j0, t, b, i, jb, j1 - jb, image,
                              residual, lanes);
    }
    if (ti != tj) {
      Acc mirrored[kMaxStyleTile * kMaxStyleTile];
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
          mirrored[(j - j0) * tile + i - i0] = e[(i - i0) * tile + j - j0];
      for (int64_t j = j0; j < j1; ++j)
        add_squared_differences(mirrored + (j - j0) * tile, t, b, j, i0, i1 - i0, image,
                                residual, lanes);
    } else {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < j; ++i) {
          const Acc d = e[(i - i0) * tile + j - j0] - t(b, j, i);
          lanes[static_cast<int>((i - i0) % kLanes)] += d * d;
          if (image) image[j * residual.stride[1] + i * residual.stride[2]] = from_acc<T>(d);
        }
    }
    sums[((b * tiles + ti) * tiles + tj) * partials.stride] = lanes.sum();
  });
  if (s != Status::ok) return s;
  double total = 0;
  for (int64_t k = 0; k < g.B * tiles * tiles; ++k) total += sums[k * partials.stride];
  static_cast<T*>(out.data)[0] = from_acc<T>(static_cast<Acc>(loss_scale * total));
  return Status::ok;
}

template <typename T>
Status gram_backward(const GramGeometry& g, Tensor3 grad_gram, Tensor3 x, double scale,
                     Tensor3 grad_x) {
  using Acc = acc_t<T>;
  using gemm::KC;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const Rows<T> dg = rows_of<T>(grad_gram), xs = rows_of<T>(x);
  const int64_t m_pad = gemm::round_up(g.C, mk.mr), chunks = ceil_div(g.C, KC);
  // S of every image packed as A operands, chunk by chunk of its K = C.
  auto packed_s = allocate_aligned<Acc>(g.B * m_pad * g.C);
  if (packed_s == nullptr) return Status::out_of_memory;
  const Acc factor = static_cast<Acc>(scale);
  Status s = parallel_tasks<Acc>(g.B * chunks, 0, [&](int64_t task, Acc*) {
    const int64_t b = task / chunks, k0 = (task % chunks) * KC;
    gemm::pack_a<Acc>(g.C, std::min(KC, g.C - k0), mk.mr,
                      [&](int64_t i, int64_t k) {
                        return factor * (dg(b, i, k0 + k) + dg(b, k0 + k, i));
                      },
                      packed_s.get() + b * m_pad * g.C + k0 * m_pad);
  },
      m_pad * KC);
  if (s != Status::ok) return s;
  // Narrower blocks when the images have too few for the threads (short
  // planes: VGG's conv5_1 at 256^2 is one block of 256).
  const int64_t threads = omp_get_max_threads(), wanted = threads > 1 ? 4 * threads : 1;
  const int64_t columns = std::clamp<int64_t>(
      gemm::round_up(ceil_div(g.B * g.L, wanted), mk.nr), mk.nr, kColumns);
  const int64_t blocks = ceil_div(g.L, columns);
  T* out = static_cast<T*>(grad_x.data);
  return parallel_tasks<Acc>(g.B * blocks, KC * kColumns + m_pad * kColumns,
                             [&](int64_t task, Acc* scratch) {
    const int64_t b = task / blocks, j0 = (task % blocks) * columns;
    const int64_t cols = std::min(columns, g.L - j0);
    Acc* packed_b = scratch;
    Acc* tile = scratch + KC * kColumns;
    for (int64_t k0 = 0; k0 < g.C; k0 += KC) {
      const int64_t kc = std::min(KC, g.C - k0);
      for (int64_t k = 0; k < kc; ++k) {
        gemm::Cursor<Acc> cursor{packed_b + k * mk.nr, 0, mk.nr, 1, kc * mk.nr};
        cursor.put(cols, [&](int64_t j) { return xs(b, k0 + k, j0 + j); });
      }
      gemm::zero_b_padding(kc, cols, mk.nr, packed_b);
      gemm::multiply_packed(mk, kc, m_pad / mk.mr, ceil_div(cols, mk.nr),
                            packed_s.get() + b * m_pad * g.C + k0 * m_pad, packed_b, tile,
                            kColumns, k0 > 0);
    }
    T* image = out + b * grad_x.stride[0] + j0 * grad_x.stride[2];
    for (int64_t i = 0; i < g.C; ++i)
      for (int64_t j = 0; j < cols; ++j)
        image[i * grad_x.stride[1] + j * grad_x.stride[2]] = from_acc<T>(tile[i * kColumns + j]);
  },
      gemm::tile_work(m_pad, columns, g.C));
}

}  // namespace

Status gram_matrix(DType dtype, const GramGeometry& g, Tensor3 x, Tensor3 other, double scale,
                   Tensor3 gram) {
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0) return Status::ok;
  if (!gram.data || (g.L > 0 && !x.data)) return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    return gram_forward<typename decltype(type)::type>(g, x, other, scale, gram);
  });
}

Status gram_matrix_backward(DType dtype, const GramGeometry& g, Tensor3 grad_gram, Tensor3 x,
                            double scale, Tensor3 grad_x) {
  if (check_gram_geometry(g) != Status::ok) return Status::bad_argument;
  if (g.B == 0 || g.C == 0 || g.L == 0) return Status::ok;
  if (!grad_gram.data || !x.data || !grad_x.data) return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    return gram_backward<typename decltype(type)::type>(g, grad_gram, x, scale, grad_x);
  });
}

Status style_loss(DType dtype, const StyleLossGeometry& g, Tensor3 x, Tensor3 target,
                  double gram_scale, double loss_scale, Tensor1 partials, Tensor3 residual,
                  Tensor1 out) {
  if (check_style_geometry(g) != Status::ok || g.tile > kMaxStyleTile || !out.data)
    return Status::bad_argument;
  const bool work = g.B > 0 && g.C > 0;
  if (work && (!target.data || !partials.data || (g.L > 0 && !x.data)))
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if (!work) {
      static_cast<T*>(out.data)[0] = from_acc<T>(acc_t<T>(0));
      return Status::ok;
    }
    return style_forward<T>(g, x, target, gram_scale, loss_scale, partials, residual, out);
  });
}

}  // namespace cnnk::cpu

// The content loss's sums (cnnk/gram.h): flat, dense tensors (stride 1 after
// the Python side's permutation). difference_dot sums each chunk with eight
// independent lanes (vectorisable, a fixed order), then the partials in
// chunk order, in double. scaled_difference is elementwise. Memory-bound:
// each element of the inputs read once, the output written once.
namespace cnnk::cpu {
namespace {

template <typename T>
acc_t<T> element(Tensor1 t, int64_t i) {
  return t.data == nullptr ? acc_t<T>(0) : to_acc(static_cast<const T*>(t.data)[i * t.stride]);
}

template <typename T>
Status dot(const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a, Tensor1 b, double scale,
           Tensor1 partials, Tensor1 out) {
  using Acc = acc_t<T>;
  constexpr int kLanes = 8;
  Acc* sums = static_cast<Acc*>(partials.data);
  const int64_t chunks = ceil_div(g.N, g.chunk);
  const Status s = parallel_tasks<Acc>(chunks, 0, [&](int64_t chunk, Acc*) {
    Acc lanes[kLanes] = {};
    const int64_t begin = chunk * g.chunk, end = std::min(g.N, begin + g.chunk);
    for (int64_t i = begin; i < end; ++i)
      lanes[(i - begin) % kLanes] +=
          (element<T>(u, i) - element<T>(v, i)) * (element<T>(a, i) - element<T>(b, i));
    Acc total = 0;
    for (Acc lane : lanes) total += lane;
    sums[chunk * partials.stride] = total;
  },
      g.chunk);
  if (s != Status::ok) return s;
  double total = 0;
  for (int64_t k = 0; k < chunks; ++k) total += sums[k * partials.stride];
  static_cast<T*>(out.data)[0] = from_acc<T>(static_cast<Acc>(scale * total));
  return Status::ok;
}

template <typename T>
Status difference(const DifferenceGeometry& g, Tensor1 a, Tensor1 b, Tensor1 weight,
                  double scale, Tensor1 out) {
  using Acc = acc_t<T>;
  const Acc factor = static_cast<Acc>(scale) * element<T>(weight, 0);
  T* o = static_cast<T*>(out.data);
  return parallel_tasks<Acc>(ceil_div(g.N, g.chunk), 0, [&](int64_t chunk, Acc*) {
    const int64_t begin = chunk * g.chunk, end = std::min(g.N, begin + g.chunk);
    for (int64_t i = begin; i < end; ++i)
      o[i * out.stride] = from_acc<T>(factor * (element<T>(a, i) - element<T>(b, i)));
  },
      g.chunk);
}

bool valid(const DifferenceGeometry& g) { return g.N >= 0 && g.chunk > 0; }

}  // namespace

Status difference_dot(DType dtype, const DifferenceGeometry& g, Tensor1 u, Tensor1 v, Tensor1 a,
                      Tensor1 b, double scale, Tensor1 partials, Tensor1 out) {
  if (!valid(g) || !out.data || (g.N > 0 && (!u.data || !a.data || !partials.data)))
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    return dot<typename decltype(type)::type>(g, u, v, a, b, scale, partials, out);
  });
}

Status scaled_difference(DType dtype, const DifferenceGeometry& g, Tensor1 a, Tensor1 b,
                         Tensor1 weight, double scale, Tensor1 out) {
  if (!valid(g) || !weight.data || (g.N > 0 && (!a.data || !out.data)))
    return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    return difference<typename decltype(type)::type>(g, a, b, weight, scale, out);
  });
}

}  // namespace cnnk::cpu
