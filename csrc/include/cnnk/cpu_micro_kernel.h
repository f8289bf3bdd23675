// The GEMM micro-kernels of the cpu backend, one set per instruction set
// (csrc/cpu/gemm/<isa>.cpp, each compiled with its own -m flags). This
// header only declares: the instruction-set files include nothing with an
// inline body, so no function compiled for AVX2/AVX-512 can be picked by the
// linker for code that runs on a machine without it.
#pragma once
#include <cstdint>

namespace cnnk::cpu::gemm {

// An mr x nr register tile:
//   c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + sum_l a[l * mr + i] * b[l * nr + j]
// for l < kc, i < mr, j < nr, the sum in order of l (so the result does not
// depend on how a caller splits the reduction into kc chunks). a and b are
// packed panels (cpu_gemm.h), c a row-major scratch tile.
// run_rows: the same tile with B's rows read where they lie, row l being
// the nr values at b + rows[l] (any alignment): nr consecutive pixels of a
// zero-padded input plane, so a stride-1 convolution needs no packed B.
// run_strided: A's step l the mr values at a + l * lda and B's the nr values
// at b + l * ldb: both operands read from one reduction-major matrix (a
// Gram matrix's chunk, transposed once, whose rows are both operands).
template <typename Acc>
struct MicroKernel {
  int mr = 0;
  int nr = 0;
  void (*run)(int64_t kc, const Acc* a, const Acc* b, Acc* c, int64_t ldc,
              bool accumulate) = nullptr;
  void (*run_rows)(int64_t kc, const Acc* a, const Acc* b, const int64_t* rows, Acc* c,
                   int64_t ldc, bool accumulate) = nullptr;
  void (*run_strided)(int64_t kc, const Acc* a, int64_t lda, const Acc* b, int64_t ldb, Acc* c,
                      int64_t ldc, bool accumulate) = nullptr;
};

// <isa>_fma_loop(f64, iterations) issues independent vector FMAs (the
// machine's achievable peak, timed by cnnk/cpu_gemm.h) and returns the
// floating-point operations done.
MicroKernel<float> portable_f32();
MicroKernel<double> portable_f64();
int64_t portable_fma_loop(bool f64, int64_t iterations);

#if defined(__x86_64__)
MicroKernel<float> avx2_f32();
MicroKernel<double> avx2_f64();
int64_t avx2_fma_loop(bool f64, int64_t iterations);
MicroKernel<float> avx512_f32();
MicroKernel<double> avx512_f64();
int64_t avx512_fma_loop(bool f64, int64_t iterations);
#endif

}  // namespace cnnk::cpu::gemm
