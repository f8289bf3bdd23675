// The tensor-core GEMM core of the CUDA kernels (mma.sync on sm_80 and
// sm_90a): PTX wrappers (cp.async, ldmatrix, mma), a block's tile shape,
// the fragments of a shared-memory stage, the 3-stage cp.async main loop and
// the accumulator layout, and the host-side dtype and alignment checks.
// Shared by the implicit-GEMM convolutions (csrc/cuda/conv2d/implicit_gemm.cu,
// whose header comment describes the core) and the Gram kernels
// (csrc/cuda/gram.cu); each brings its own operand loaders, which fill a
// stage's A and B tiles (layouts: cnnk/implicit_gemm.h) for k-tile kt.
// Include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cnnk/cuda_elements.cuh"
#include "cnnk/cuda_launch.cuh"
#include "cnnk/implicit_gemm.h"

namespace cnnk::cuda {

constexpr int kStages = 3;      // cp.async pipeline depth
constexpr int kTileBytes = 64;  // reduction bytes of one k-tile: 32 f16/bf16 or 16 f32
constexpr int kChunkBytes = 16;

// A block's tile: BM x BN outputs, WM x WN warps, each warp WTM x WTN, that
// is MI x NI mma tiles of 16 x 8.
template <int BM_, int BN_, int WM_, int WN_, int kMinBlocks_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, kMinBlocks = kMinBlocks_;
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int WTM = BM / WM, WTN = BN / WN;
  static constexpr int MI = WTM / 16, NI = WTN / 8;
  static constexpr int kStageBytes = (BM + BN) * kTileBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tiles are whole ldmatrix.x4 loads");
};

// ---------------------------------------------------------------------------
// PTX: cp.async, ldmatrix, mma.

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, or 16 zero bytes when !valid (src-size 0 reads
// nothing; src is then any mapped address).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
               "l"(__cvta_generic_to_global(src)), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8 x 8 b16 matrices: lanes 8i..8i+7 address the rows of matrix i;
// register i of lane l receives matrix i's row l/4, columns 2(l%4), +1
// (with .trans: rows 2(l%4), +1 of column l/4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p))
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p))
               : "memory");
}

// D += A * B on one 16 x 8 tile, A 16 x kK row-major, B kK x 8 column-major,
// fp32 accumulators. Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"
// and "for mma.m16n8k8", g = lane / 4, t = lane % 4):
//   16-bit, k16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
//                b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   tf32, k8:    a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
//                b0 (k t, n g), b1 (k t+4, n g)
//   both:        d0, d1 (g, 2t..2t+1), d2, d3 (g+8, 2t..2t+1)
// In 16-byte chunks both are the same: a k-step spans 32 bytes (2 chunks) of
// the reduction, a0/a1 from the first chunk and a2/a3 from the second.
template <typename T>
struct Mma;
template <>
struct Mma<__half> {
  __device__ static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <>
struct Mma<__nv_bfloat16> {
  __device__ static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
// fp32 inputs as TF32, rounded to nearest (cvt.rna) as cuBLAS and cuDNN do
// rather than truncated by the tensor core.
__device__ __forceinline__ uint32_t to_tf32(uint32_t bits) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
  return r;
}
// Its operands are TF32 bit patterns already (compute_stage converts each
// fragment once, not once per MMA it feeds).
template <>
struct Mma<float> {
  __device__ static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// ---------------------------------------------------------------------------
// The GEMM core: fragments of a stage, the pipelined main loop, the
// accumulator layout.

// A and B fragments of k-step ks (32 reduction bytes) of one stage.
// Normal tiles (rows = GEMM rows, reduction contiguous): ldmatrix, matrices
// ordered as the fragment registers (A: rows +0/+8 x chunks +0/+1; B: two n8
// tiles x chunks +0/+1).
template <typename Tile>
__device__ __forceinline__ void normal_fragments(uint32_t (&af)[Tile::MI][4],
                                                 uint32_t (&bf)[Tile::NI][2], const char* as,
                                                 const char* bs, int wm, int wn, int ks,
                                                 int lane) {
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
    const int row = wm * Tile::WTM + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(af[mi], as + normal_tile_offset(row, ks * 2 + (lane >> 4)));
  }
#pragma unroll
  for (int nj = 0; nj < Tile::NI / 2; ++nj) {
    const int row = wn * Tile::WTN + nj * 16 + (lane & 7) + (lane >> 4) * 8;
    uint32_t r[4];
    ldmatrix_x4(r, bs + normal_tile_offset(row, ks * 2 + ((lane >> 3) & 1)));
    bf[2 * nj][0] = r[0], bf[2 * nj][1] = r[1], bf[2 * nj + 1][0] = r[2],
                bf[2 * nj + 1][1] = r[3];
  }
}

// Transposed tiles (rows = reduction indices, GEMM rows contiguous), 16-bit:
// ldmatrix.trans turns 8 reduction rows x 8 GEMM indices into the fragment.
template <typename Tile>
__device__ __forceinline__ void transposed_fragments_16(uint32_t (&af)[Tile::MI][4],
                                                        uint32_t (&bf)[Tile::NI][2],
                                                        const char* as, const char* bs, int wm,
                                                        int wn, int ks, int lane) {
  constexpr int kRowChunksA = Tile::BM * 2 / kChunkBytes, kRowChunksB = Tile::BN * 2 / kChunkBytes;
  const int mat = lane >> 3;
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
    const int row = ks * 16 + (lane & 7) + (mat >> 1) * 8;
    const int chunk = (wm * Tile::WTM + mi * 16) / 8 + (mat & 1);
    ldmatrix_x4_trans(af[mi], as + transposed_tile_offset(row, chunk, kRowChunksA));
  }
#pragma unroll
  for (int nj = 0; nj < Tile::NI / 2; ++nj) {
    const int row = ks * 16 + (lane & 7) + (mat & 1) * 8;
    const int chunk = (wn * Tile::WTN + nj * 16) / 8 + (mat >> 1);
    uint32_t r[4];
    ldmatrix_x4_trans(r, bs + transposed_tile_offset(row, chunk, kRowChunksB));
    bf[2 * nj][0] = r[0], bf[2 * nj][1] = r[1], bf[2 * nj + 1][0] = r[2],
                bf[2 * nj + 1][1] = r[3];
  }
}

// Transposed tiles, fp32: ldmatrix cannot transpose 32-bit elements, so each
// fragment element is one 4-byte shared load.
template <typename Tile>
__device__ __forceinline__ void transposed_fragments_32(uint32_t (&af)[Tile::MI][4],
                                                        uint32_t (&bf)[Tile::NI][2],
                                                        const char* as, const char* bs, int wm,
                                                        int wn, int ks, int lane) {
  constexpr int kRowChunksA = Tile::BM * 4 / kChunkBytes, kRowChunksB = Tile::BN * 4 / kChunkBytes;
  const int g = lane >> 2, t = lane & 3, k0 = ks * 8;
  auto at = [](const char* base, int row, int col, int row_chunks) {
    return *reinterpret_cast<const uint32_t*>(
        base + transposed_tile_offset(row, col >> 2, row_chunks) + (col & 3) * 4);
  };
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi) {
    const int m = wm * Tile::WTM + mi * 16 + g;
    af[mi][0] = at(as, k0 + t, m, kRowChunksA);
    af[mi][1] = at(as, k0 + t, m + 8, kRowChunksA);
    af[mi][2] = at(as, k0 + t + 4, m, kRowChunksA);
    af[mi][3] = at(as, k0 + t + 4, m + 8, kRowChunksA);
  }
#pragma unroll
  for (int ni = 0; ni < Tile::NI; ++ni) {
    const int n = wn * Tile::WTN + ni * 8 + g;
    bf[ni][0] = at(bs, k0 + t, n, kRowChunksB);
    bf[ni][1] = at(bs, k0 + t + 4, n, kRowChunksB);
  }
}

// The accumulators of a warp: acc[mi][ni][e] is the block tile's element
// (acc_row(...), acc_col(...)).
template <typename Tile>
using Accumulators = float[Tile::MI][Tile::NI][4];
template <typename Tile>
__device__ __forceinline__ int acc_row(int wm, int mi, int e, int lane) {
  return wm * Tile::WTM + mi * 16 + (lane >> 2) + (e >> 1) * 8;
}
template <typename Tile>
__device__ __forceinline__ int acc_col(int wn, int ni, int e, int lane) {
  return wn * Tile::WTN + ni * 8 + (lane & 3) * 2 + (e & 1);
}

template <typename T, typename Tile, bool kTransposed>
__device__ __forceinline__ void compute_stage(Accumulators<Tile>& acc, const char* stage, int wm,
                                              int wn, int lane) {
  const char* as = stage;
  const char* bs = stage + Tile::BM * kTileBytes;
#pragma unroll
  for (int ks = 0; ks < kTileBytes / 32; ++ks) {
    uint32_t af[Tile::MI][4], bf[Tile::NI][2];
    if constexpr (!kTransposed)
      normal_fragments<Tile>(af, bf, as, bs, wm, wn, ks, lane);
    else if constexpr (sizeof(T) == 2)
      transposed_fragments_16<Tile>(af, bf, as, bs, wm, wn, ks, lane);
    else
      transposed_fragments_32<Tile>(af, bf, as, bs, wm, wn, ks, lane);
    if constexpr (std::is_same_v<T, float>) {
#pragma unroll
      for (int mi = 0; mi < Tile::MI; ++mi)
#pragma unroll
        for (int e = 0; e < 4; ++e) af[mi][e] = to_tf32(af[mi][e]);
#pragma unroll
      for (int ni = 0; ni < Tile::NI; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) bf[ni][e] = to_tf32(bf[ni][e]);
    }
#pragma unroll
    for (int mi = 0; mi < Tile::MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < Tile::NI; ++ni) Mma<T>::run(acc[mi][ni], af[mi], bf[ni]);
  }
}

// k-tiles [kt_begin, kt_end) through a kStages-deep ring of stages: the
// tile kStages - 1 ahead is in flight while one is computed. Loader::load
// fills a stage with cp.async (waited for by cp.async.wait_group) or with
// plain stores (ordered by the barrier); the barrier at the top of
// iteration i also guarantees every warp is done with the stage the loads of
// iteration i overwrite (computed in iteration i - 1).
template <typename T, typename Tile, bool kTransposed, typename LoaderA, typename LoaderB>
__device__ __forceinline__ void gemm_main_loop(Accumulators<Tile>& acc, char* smem, int kt_begin,
                                               int kt_end, LoaderA& la, LoaderB& lb) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp % Tile::WM, wn = warp / Tile::WM;
#pragma unroll
  for (int mi = 0; mi < Tile::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Tile::NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
  const int count = kt_end - kt_begin;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) {
      la.load(smem + s * Tile::kStageBytes, kt_begin + s);
      lb.load(smem + s * Tile::kStageBytes + Tile::BM * kTileBytes, kt_begin + s);
    }
    cp_async_commit();
  }
  for (int i = 0; i < count; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = i + kStages - 1;
    if (next < count) {
      char* stage = smem + (next % kStages) * Tile::kStageBytes;
      la.load(stage, kt_begin + next);
      lb.load(stage + Tile::BM * kTileBytes, kt_begin + next);
    }
    cp_async_commit();
    // The loaders branch per thread; the .sync.aligned ldmatrix/mma below
    // need the whole warp together.
    __syncwarp();
    compute_stage<T, Tile, kTransposed>(acc, smem + (i % kStages) * Tile::kStageBytes, wm, wn,
                                        lane);
  }
}

template <typename T>
__device__ __forceinline__ T zero() {
  return from_acc<T>(acc_t<T>(0));
}

// 16 bytes of elements in registers.
template <typename T>
union Chunk {
  uint4 bits;
  T v[kChunkBytes / sizeof(T)];
};

// ---------------------------------------------------------------------------
// Host side.

// Whether 16-byte chunks of `t` along `inner` (stride 1, `inner_count`
// elements, a multiple of 8 or 4) start 16-byte aligned wherever a kernel
// reads one: the pointer and every other stride are multiples of 16 bytes.
inline bool vector_ready(const void* data, int64_t inner_stride, int64_t inner_count,
                         std::initializer_list<int64_t> other_strides, int elems) {
  if (inner_stride != 1 || inner_count % elems != 0 ||
      reinterpret_cast<std::uintptr_t>(data) % kChunkBytes != 0)
    return false;
  for (int64_t s : other_strides)
    if (s % elems != 0) return false;
  return true;
}

inline bool tensor_core_dtype(DType dtype, bool allow_tf32) {
  return dtype == DType::float16 || dtype == DType::bfloat16 ||
         (dtype == DType::float32 && allow_tf32);
}

// Calls body(TypeTag<T>{}) for the tensor-core element types.
template <typename Body>
Status dispatch_mma_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::float16: return body(TypeTag<__half>{});
    case DType::bfloat16: return body(TypeTag<__nv_bfloat16>{});
    case DType::float32: return body(TypeTag<float>{});
    default: return Status::unsupported_dtype;
  }
}

}  // namespace cnnk::cuda
