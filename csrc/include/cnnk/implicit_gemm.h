// Index math of the implicit-GEMM convolutions on tensor cores
// (csrc/cuda/conv2d/implicit_gemm.cu): how a GEMM row or column names a
// pixel, how a reduction index names a filter tap and channel, which output
// pixel the transposed problem reads, and where an operand tile keeps each
// 16-byte chunk in shared memory.
#pragma once

#include <cstdint>

#include "cnnk/conv2d.h"

namespace cnnk {

// Pixel m of an image stack of height H and width W: m = (n * H + h) * W + w.
struct Pixel {
  int n, h, w;
};
CNNK_HOST_DEVICE Pixel pixel_of(int m, int H, int W) {
  const int hw = H * W;
  const int n = m / hw, rest = m - n * hw;
  const int h = rest / W;
  return {n, h, rest - h * W};
}

// Reduction index j = (r * S + s) * inner + c: filter tap (r, s), channel c,
// channel innermost so channels_last tensors give contiguous runs. inner is
// C/groups (forward, grad_weight columns) or K/groups (grad_input).
struct Tap {
  int r, s, c;
};
CNNK_HOST_DEVICE Tap tap_of(int j, int inner, int S) {
  const int rs = j / inner;
  const int r = rs / S;
  return {r, rs - r * S, j - rs * inner};
}
// The tap of j + 1, from the tap of j.
CNNK_HOST_DEVICE void next_tap(Tap& t, int inner, int S) {
  if (++t.c == inner) {
    t.c = 0;
    if (++t.s == S) {
      t.s = 0;
      ++t.r;
    }
  }
}

// The transposed problem (grad_input): the output row (or column) o with
// o * stride - pad + k * dil == i, read by input index i at tap k, or -1 when
// no such o lies in [0, out). `i_pad` is i + pad.
CNNK_HOST_DEVICE int transposed_source(int i_pad, int k, int stride, int dil, int out) {
  const int t = i_pad - k * dil;
  if (t < 0) return -1;
  const int o = t / stride;
  return o * stride == t && o < out ? o : -1;
}

// Shared-memory operand tiles are rows of 16-byte chunks, the chunk index
// XOR-swizzled so that the 8 rows an ldmatrix phase (or a quarter-warp's
// 16-byte stores) touches fall in 8 distinct bank groups.
//
// Normal tile: one row per GEMM row (an M or N index), 64 bytes of the
// reduction (4 chunks); two rows share a 128-byte bank line, so rows r and
// r ^ 1 differ in the line half and rows 2i, 2i + 2, ... in the XOR.
CNNK_HOST_DEVICE int normal_tile_offset(int row, int chunk) {
  return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4);
}
// Transposed tile (grad_weight: reduction-major): one row per reduction
// index, `row_chunks` (a multiple of 8) chunks of consecutive GEMM rows.
CNNK_HOST_DEVICE int transposed_tile_offset(int row, int chunk, int row_chunks) {
  return (row * row_chunks + (chunk ^ (row & 7))) << 4;
}

}  // namespace cnnk
