// gram on the cpu: the Gram matrix and its backward on the GEMM core
// (cnnk/cpu_gemm.h), contracts in cnnk/gram.h.
//
// gram_matrix: the C x C result is cut into square tiles of kTile channels;
// only the tiles on or above the diagonal are computed. A task owns one
// tile of one image over one slice of L: it packs the tile's row block of
// x as the A operand and its column block as the B operand (the same packing,
// by micro-panel width), KC values of l at a time, and runs the micro-kernel
// (with `other`, two products: x_i other_j^T + other_i x_j^T). Small Gram
// matrices (one or three tiles per image) cut L into slices so that two
// threads have work; the slices' partial tiles are summed in slice order
// afterwards, so the result does not depend on the thread count. The store
// scales and writes the tile and its mirror.
// Bound: compute, 2 * B * C * (C + kTile) / 2 * L flops (about half a bmm's
// 2 * B * C^2 * L for C >> kTile), x read once per tile row and column; the
// partial tiles (B * tiles * slices * kTile^2 accumulators) are scratch.
//
// gram_matrix_backward: grad_x[b] = S x[b] with S = scale (dG + dG^T),
// a GEMM of M = C, N = L, K = C. S is packed once per image (the A operand);
// a task owns a block of kColumns columns of one image, packs its B panel
// from x chunk by chunk and runs every row of S past it. 2 * B * C^2 * L
// flops; x read once, grad_x written once.
//
// Limits: any strides; float16/bfloat16 are converted to float when packed.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cnnk/cpu_gemm.h"
#include "cnnk/cpu_types.h"
#include "cnnk/gram.h"

namespace cnnk::cpu {
namespace {

constexpr int64_t kTile = 64;      // channels per Gram tile (padded to mr / nr when packed)
constexpr int64_t kColumns = 256;  // columns of L per backward task
constexpr int64_t kMinSlice = 4 * gemm::KC;  // shortest L slice worth a task of its own

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

// Packs rows [0, m) x steps [0, kc) of u as micro-panels of width `width`
// (cnnk/cpu_gemm.h's packed layout, zero-padded past m). When l is u's
// contiguous dimension (NCHW) each row is read in order, one pass per row:
// gemm::pack_a's column order would touch m rows, m pages apart, per step.
template <typename Acc, typename T>
void pack_rows(const Rows<T>& u, int64_t b, int64_t r0, int64_t l0, int64_t m, int64_t kc,
               int width, Acc* out) {
  if (std::abs(u.sl) > std::abs(u.sc)) {  // channels contiguous: pack_a's order reads in order
    gemm::pack_a<Acc>(m, kc, width, [&](int64_t i, int64_t l) { return u(b, r0 + i, l0 + l); },
                      out);
    return;
  }
  for (int64_t i = 0; i < gemm::round_up(m, width); ++i) {
    Acc* lane = out + (i / width) * width * kc + i % width;
    if (i >= m) {
      for (int64_t l = 0; l < kc; ++l) lane[l * width] = Acc(0);
      continue;
    }
    const T* row = u.data + b * u.sb + (r0 + i) * u.sc + l0 * u.sl;
    for (int64_t l = 0; l < kc; ++l) lane[l * width] = to_acc(row[l * u.sl]);
  }
}

// The upper-triangle tiles (ti <= tj) of a tiles x tiles grid, in row order.
std::vector<std::pair<int64_t, int64_t>> upper_tiles(int64_t tiles) {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t ti = 0; ti < tiles; ++ti)
    for (int64_t tj = ti; tj < tiles; ++tj) pairs.emplace_back(ti, tj);
  return pairs;
}

template <typename T>
Status gram_forward(const GramGeometry& g, Tensor3 x, Tensor3 other, double scale, Tensor3 gram) {
  using Acc = acc_t<T>;
  using gemm::KC;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const bool cross = other.data != nullptr;
  const Rows<T> a = rows_of<T>(x), o = rows_of<T>(cross ? other : x);
  const auto pairs = upper_tiles(ceil_div(g.C, kTile));
  const int64_t tiles_per_image = static_cast<int64_t>(pairs.size());
  // Enough tasks for the threads: slices of L when the images give too few tiles.
  const int64_t wanted = 4 * omp_get_max_threads();
  const int64_t slices = std::clamp<int64_t>(ceil_div(wanted, g.B * tiles_per_image), 1,
                                             std::max<int64_t>(1, g.L / kMinSlice));
  const int64_t slice = gemm::round_up(ceil_div(std::max<int64_t>(g.L, 1), slices), KC);
  const int64_t rows_pad = gemm::round_up(kTile, mk.mr), cols_pad = gemm::round_up(kTile, mk.nr);
  const int64_t tile_size = rows_pad * cols_pad;
  auto partial = allocate_aligned<Acc>(g.B * tiles_per_image * slices * tile_size);
  if (partial == nullptr) return Status::out_of_memory;
  const int64_t packed = rows_pad * KC + cols_pad * KC;  // A and B operands of one chunk
  const int64_t tasks = g.B * tiles_per_image * slices;
  Status s = parallel_tasks<Acc>(tasks, (cross ? 2 : 1) * packed, [&](int64_t task, Acc* scratch) {
    const int64_t b = task / (tiles_per_image * slices);
    const auto [ti, tj] = pairs[(task / slices) % tiles_per_image];
    const int64_t i0 = ti * kTile, j0 = tj * kTile;
    const int64_t m = std::min(kTile, g.C - i0), n = std::min(kTile, g.C - j0);
    const int64_t l_begin = (task % slices) * slice, l_end = std::min(g.L, l_begin + slice);
    Acc* tile = partial.get() + task * tile_size;
    if (l_begin >= l_end) std::fill(tile, tile + tile_size, Acc(0));
    for (int64_t l0 = l_begin; l0 < l_end; l0 += KC) {
      const int64_t kc = std::min(KC, l_end - l0);
      // One product u_i v_j^T of this chunk, accumulated into the tile.
      auto multiply = [&](const Rows<T>& u, const Rows<T>& v, Acc* pack, bool accumulate) {
        pack_rows(u, b, i0, l0, m, kc, mk.mr, pack);
        pack_rows(v, b, j0, l0, n, kc, mk.nr, pack + rows_pad * KC);
        gemm::multiply_packed(mk, kc, ceil_div(m, mk.mr), ceil_div(n, mk.nr), pack,
                              pack + rows_pad * KC, tile, cols_pad, accumulate);
      };
      multiply(a, o, scratch, l0 > l_begin);
      if (cross) multiply(o, a, scratch + packed, true);
    }
  },
      gemm::tile_work(rows_pad, cols_pad, slice));
  if (s != Status::ok) return s;
  // Sum the slices in order, scale, store the tile and its mirror.
  T* out = static_cast<T*>(gram.data);
  const Acc factor = static_cast<Acc>(scale);
  return parallel_tasks<Acc>(g.B * tiles_per_image, 0, [&](int64_t task, Acc*) {
    const int64_t b = task / tiles_per_image;
    const auto [ti, tj] = pairs[task % tiles_per_image];
    const int64_t i0 = ti * kTile, j0 = tj * kTile;
    const int64_t m = std::min(kTile, g.C - i0), n = std::min(kTile, g.C - j0);
    Acc* first = partial.get() + task * slices * tile_size;
    for (int64_t k = 1; k < slices; ++k)
      for (int64_t e = 0; e < tile_size; ++e) first[e] += first[k * tile_size + e];
    T* image = out + b * gram.stride[0];
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const T v = from_acc<T>(factor * first[i * cols_pad + j]);
        image[(i0 + i) * gram.stride[1] + (j0 + j) * gram.stride[2]] = v;
        image[(j0 + j) * gram.stride[1] + (i0 + i) * gram.stride[2]] = v;
      }
  },
      slices * tile_size);
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
  const int64_t blocks = ceil_div(g.L, kColumns);
  T* out = static_cast<T*>(grad_x.data);
  return parallel_tasks<Acc>(g.B * blocks, KC * kColumns + m_pad * kColumns,
                             [&](int64_t task, Acc* scratch) {
    const int64_t b = task / blocks, j0 = (task % blocks) * kColumns;
    const int64_t cols = std::min(kColumns, g.L - j0);
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
      gemm::tile_work(m_pad, kColumns, g.C));
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
