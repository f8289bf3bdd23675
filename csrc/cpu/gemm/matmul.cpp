// C = A * B on the GEMM core (cnnk/cpu_gemm.h) for strided 2-D tensors: the
// core on its own, for its tests and the benchmark's GEMM row (the roofline
// check of the micro-kernels). A is packed once (all reduction chunks, in
// parallel); a task owns a block of C's columns, packs its B panel chunk by
// chunk and runs every row of A past it. Each element is the sum in order of
// the reduction index (deterministic, whatever the blocking). 2 * M * N * K
// flops; A is read once, B once, C written once.
#include <omp.h>

#include <algorithm>

#include "cnnk/cpu_gemm.h"
#include "cnnk/cpu_types.h"
#include "cnnk/gemm.h"

namespace cnnk::cpu {
namespace {

template <typename T>
Status matmul(int64_t M, int64_t N, int64_t K, Tensor2 a, Tensor2 b, Tensor2 c) {
  using Acc = acc_t<T>;
  using gemm::KC;
  const gemm::MicroKernel<Acc> mk = gemm::micro_kernel<Acc>();
  const T* ap = static_cast<const T*>(a.data);
  const T* bp = static_cast<const T*>(b.data);
  T* cp = static_cast<T*>(c.data);
  const int64_t m_pad = gemm::round_up(M, mk.mr), chunks = (K + KC - 1) / KC;
  auto packed_a = allocate_aligned<Acc>(m_pad * K);
  if (packed_a == nullptr) return Status::out_of_memory;
#pragma omp parallel for schedule(dynamic) num_threads(parallel_threads(m_pad * K, chunks))
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t l0 = chunk * KC;
    gemm::pack_a<Acc>(M, std::min(KC, K - l0), mk.mr,
                      [base = ap + l0 * a.stride[1], rs = a.stride[0], cs = a.stride[1]](
                          int64_t i, int64_t l) { return to_acc(base[i * rs + l * cs]); },
                      packed_a.get() + l0 * m_pad);
  }
  // Column blocks: a multiple of the thread count, of nearly equal width, at
  // most 1024 columns (a KC x 1024 B panel fills L2). Every block streams all
  // of packed A, so wider blocks mean less A traffic (blocks of 128 made a
  // 1024^3 product bound by memory bandwidth).
  const int64_t threads = omp_get_max_threads();
  const int64_t rounds = (N + threads * 1024 - 1) / (threads * 1024);
  const int64_t block = std::clamp(
      gemm::round_up((N + threads * rounds - 1) / (threads * rounds), mk.nr), int64_t{mk.nr},
      int64_t{1024});
  const int64_t blocks = (N + block - 1) / block;
  return parallel_tasks<Acc>(blocks, KC * block + m_pad * block, [&](int64_t task, Acc* scratch) {
    const int64_t j0 = task * block, cols = std::min(block, N - j0);
    Acc* packed_b = scratch;
    Acc* tile = scratch + KC * block;
    if (K == 0) std::fill(tile, tile + m_pad * block, Acc(0));
    for (int64_t l0 = 0; l0 < K; l0 += KC) {
      const int64_t kc = std::min(KC, K - l0);
      for (int64_t l = 0; l < kc; ++l) {
        const T* row = bp + (l0 + l) * b.stride[0] + j0 * b.stride[1];
        gemm::Cursor<Acc> cursor{packed_b + l * mk.nr, 0, mk.nr, 1, kc * mk.nr};
        if (b.stride[1] == 1)
          cursor.put(cols, [&](int64_t j) { return to_acc(row[j]); });
        else
          cursor.put(cols, [&](int64_t j) { return to_acc(row[j * b.stride[1]]); });
      }
      gemm::zero_b_padding(kc, cols, mk.nr, packed_b);
      gemm::multiply_packed(mk, kc, m_pad / mk.mr, (cols + mk.nr - 1) / mk.nr,
                            packed_a.get() + l0 * m_pad, packed_b, tile, block, l0 > 0);
    }
    for (int64_t i = 0; i < M; ++i) {
      T* row = cp + i * c.stride[0] + j0 * c.stride[1];
      if (c.stride[1] == 1)
        for (int64_t j = 0; j < cols; ++j) row[j] = from_acc<T>(tile[i * block + j]);
      else
        for (int64_t j = 0; j < cols; ++j) row[j * c.stride[1]] = from_acc<T>(tile[i * block + j]);
    }
  },
      gemm::tile_work(m_pad, block, K));
}

}  // namespace

Status gemm_matmul(DType dtype, int64_t M, int64_t N, int64_t K, Tensor2 a, Tensor2 b,
                   Tensor2 c) {
  if (M < 0 || N < 0 || K < 0) return Status::bad_argument;
  if (M == 0 || N == 0) return Status::ok;
  if (!c.data || (K > 0 && (!a.data || !b.data))) return Status::bad_argument;
  return dispatch_dtype(dtype, [&](auto type) {
    return matmul<typename decltype(type)::type>(M, N, K, a, b, c);
  });
}

}  // namespace cnnk::cpu
