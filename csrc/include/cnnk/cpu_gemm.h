// The cpu backend's GEMM core (after Goto & van de Geijn, "Anatomy of
// high-performance matrix multiplication", and BLIS): the algorithms built
// on it (csrc/cpu/conv2d/implicit_gemm.cpp, ...) gather their operands
// straight into packed panels and call multiply_packed on them.
//
//   packed A  an (mr-padded M) x kc block as M/mr micro-panels, each kc rows
//             of mr values (a[l * mr + i]), zero-padded past M;
//   packed B  a kc x (nr-padded cols) block as cols/nr micro-panels, each kc
//             rows of nr values, zero-padded past cols;
//   C         a row-major scratch tile (ldc >= padded cols) that the caller's
//             epilogue reads (bias, activation, conversion, store).
// multiply_packed runs the micro-kernel (an mr x nr register tile,
// cnnk/cpu_micro_kernel.h) over the tile: A blocks of MC rows sized for L2,
// one B micro-panel (kc x nr) kept in L1 while the A micro-panels of the
// block stream past it. The micro-kernel of the instruction set chosen at
// run time (AVX-512, AVX2+FMA or portable; CNNK_CPU_ISA=portable|avx2|avx512
// asks for one the CPU has) and the fixed reduction order (each C element is
// the sum in order of the reduction index, whatever the blocking) make the
// results deterministic on a machine.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>

#include "cnnk/cpu_micro_kernel.h"
#include "cnnk/cpu_types.h"

namespace cnnk::cpu::gemm {

enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// The instruction set in use: the best the CPU (and the OS) supports, or the
// one CNNK_CPU_ISA names if the CPU has it (read once).
Isa isa();
const char* isa_name(Isa isa);
MicroKernel<float> micro_kernel_f32();
MicroKernel<double> micro_kernel_f64();
// Achievable FMA throughput of `threads` threads (the roofline of the cpu
// backend), measured for about `seconds`, in floating-point operations/s.
double fma_peak(bool f64, int threads, double seconds);

template <typename Acc>
MicroKernel<Acc> micro_kernel() {
  if constexpr (sizeof(Acc) == 8)
    return micro_kernel_f64();
  else
    return micro_kernel_f32();
}

// Reduction chunk (rows of a B micro-panel: kc x nr in L1) and the A block
// (MC x kc in L2).
inline constexpr int64_t KC = 256;
inline constexpr int64_t MC = 72;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The work of an m x n tile over a reduction of k, in the steps of
// parallel_tasks (cnnk/cpu_types.h: about a nanosecond each): vector FMAs
// plus the tile's stores.
inline int64_t tile_work(int64_t m, int64_t n, int64_t k) { return m * n * (k / 16 + 1); }

// Packs rows [0, m) x reduction [0, kc) of A, a(i, l) giving the element.
template <typename Acc, typename Element>
void pack_a(int64_t m, int64_t kc, int mr, Element a, Acc* out) {
  for (int64_t i0 = 0; i0 < m; i0 += mr) {
    Acc* panel = out + i0 * kc;
    for (int64_t l = 0; l < kc; ++l)
      for (int64_t i = 0; i < mr; ++i)
        panel[l * mr + i] = i0 + i < m ? a(i0 + i, l) : Acc(0);
  }
}

// Writes consecutive columns of one packed-B row (or consecutive rows of one
// packed-A column) across micro-panels: `step` apart within a panel, the
// next panel `panel_step` further on.
template <typename Acc>
struct Cursor {
  Acc* panel;
  int64_t lane, width, step, panel_step;

  template <typename Value>
  void put(int64_t count, Value value) {
    for (int64_t e = 0; e < count;) {
      const int64_t m = std::min(count - e, width - lane);
      Acc* out = panel + lane * step;
      if (step == 1)  // a B row: contiguous, vectorisable
        for (int64_t i = 0; i < m; ++i) out[i] = value(e + i);
      else
        for (int64_t i = 0; i < m; ++i) out[i * step] = value(e + i);
      e += m;
      lane += m;
      if (lane == width) {
        lane = 0;
        panel += panel_step;
      }
    }
  }
  void zeros(int64_t count) {
    put(count, [](int64_t) { return Acc(0); });
  }
};

// Zeroes the padding columns [cols, round_up(cols, nr)) of a packed B block.
template <typename Acc>
void zero_b_padding(int64_t kc, int64_t cols, int nr, Acc* b) {
  if (cols % nr == 0) return;
  Acc* panel = b + (cols / nr) * kc * nr;
  for (int64_t l = 0; l < kc; ++l)
    for (int64_t j = cols % nr; j < nr; ++j) panel[l * nr + j] = Acc(0);
}

// Runs tile(ip, jp) for every micro-tile of an m_panels x n_panels block of
// C in the cache-blocked order: A blocks of MC rows (L2), one B micro-panel
// (L1) at a time while the A micro-panels of the block stream past it. The
// C tile the next call reads is prefetched (its mr rows of nr values), so a
// tile scratch larger than the caches costs no stall at the micro-kernel's
// first loads.
template <typename Acc, typename Tile>
void for_each_tile(const MicroKernel<Acc>& mk, int64_t m_panels, int64_t n_panels, Acc* c,
                   int64_t ldc, Tile tile) {
  const int64_t block = MC / mk.mr;
  constexpr int64_t line = 64 / sizeof(Acc);
  for (int64_t ib = 0; ib < m_panels; ib += block) {
    const int64_t ie = ib + block < m_panels ? ib + block : m_panels;
    for (int64_t jp = 0; jp < n_panels; ++jp)
      for (int64_t ip = ib; ip < ie; ++ip) {
        const int64_t next_ip = ip + 1 < ie ? ip + 1 : ib;
        const int64_t next_jp = ip + 1 < ie ? jp : jp + 1;
        if (next_jp < n_panels) {
          const Acc* next = c + next_ip * mk.mr * ldc + next_jp * mk.nr;
          for (int i = 0; i < mk.mr; ++i)
            for (int j = 0; j < mk.nr; j += line) __builtin_prefetch(next + i * ldc + j, 1, 3);
        }
        tile(ip, jp);
      }
  }
}

// c (m_panels * mr x n_panels * nr, row stride ldc) = [c +] a * b over kc.
template <typename Acc>
void multiply_packed(const MicroKernel<Acc>& mk, int64_t kc, int64_t m_panels, int64_t n_panels,
                     const Acc* a, const Acc* b, Acc* c, int64_t ldc, bool accumulate) {
  for_each_tile(mk, m_panels, n_panels, c, ldc, [&](int64_t ip, int64_t jp) {
    mk.run(kc, a + ip * mk.mr * kc, b + jp * kc * mk.nr, c + ip * mk.mr * ldc + jp * mk.nr, ldc,
           accumulate);
  });
}

// The same with B read in place: micro-panel jp's row l is the nr values at
// b + jp * nr + rows[l] (MicroKernel::run_rows).
template <typename Acc>
void multiply_rows(const MicroKernel<Acc>& mk, int64_t kc, int64_t m_panels, int64_t n_panels,
                   const Acc* a, const Acc* b, const int64_t* rows, Acc* c, int64_t ldc,
                   bool accumulate) {
  for_each_tile(mk, m_panels, n_panels, c, ldc, [&](int64_t ip, int64_t jp) {
    mk.run_rows(kc, a + ip * mk.mr * kc, b + jp * mk.nr, rows,
                c + ip * mk.mr * ldc + jp * mk.nr, ldc, accumulate);
  });
}

}  // namespace cnnk::cpu::gemm
