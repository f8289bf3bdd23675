// Element types of the C++ CPU kernels, their dtype dispatch, and the
// OpenMP task loop the kernels share.
//
// float16 and bfloat16 are storage types here: kernels load an element into
// the accumulator type (float; double for float64), compute there and round
// once when they store (from_acc), as torch's CPU kernels do. The
// conversions are exact from storage to float and round to nearest, ties to
// even, back; a NaN becomes a quiet NaN of the type (its payload may differ
// from torch's), an overflow becomes infinity. They are written
// in portable C++ (no F16C or AVX-512-BF16 instructions): the CPU kernels are
// built without -march, and the conversion is not what bounds them.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "cnnk/common.h"

namespace cnnk::cpu {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// bfloat16 is the upper half of a float.
inline float to_float(BFloat16 v) { return bits_float(uint32_t{v.bits} << 16); }

inline BFloat16 to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  if (std::isnan(f)) return {0x7fc0};
  // Round the 16 dropped bits to nearest, ties to the even kept bit.
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float to_float(Half v) {
  const uint32_t sign = uint32_t{v.bits & 0x8000u} << 16;
  const uint32_t exponent = (v.bits >> 10) & 0x1fu, mantissa = v.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float.
  return bits_float(sign | float_bits(static_cast<float>(mantissa) * 0x1p-24f));
}

inline Half to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  // 65520 and up round to infinity (65504 is the largest half).
  if (magnitude >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};
  if (magnitude >= 0x38800000u) {  // a normal half (>= 2^-14)
    // Round the 13 dropped mantissa bits (ties to even), then rebias the
    // exponent from 127 to 15; a carry out of the mantissa bumps the exponent.
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return {static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
  }
  // Subnormal or zero: the value in units of 2^-24 (exact: a power-of-two
  // scale), rounded to nearest even by the default rounding mode.
  const float units = std::nearbyint(bits_float(magnitude) * 0x1p24f);
  return {static_cast<uint16_t>(sign | static_cast<uint16_t>(units))};
}

inline float to_acc(Half v) { return to_float(v); }
inline float to_acc(BFloat16 v) { return to_float(v); }
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

template <typename T>
T from_acc(acc_t<T> v);
template <>
inline Half from_acc<Half>(float v) { return to_half(v); }
template <>
inline BFloat16 from_acc<BFloat16>(float v) { return to_bfloat16(v); }
template <>
inline float from_acc<float>(float v) { return v; }
template <>
inline double from_acc<double>(double v) { return v; }

template <typename T>
struct TypeTag {
  using type = T;
};

// Returns body(TypeTag<T>{}) with T the element type of dtype.
template <typename Body>
Status dispatch_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::float16: return body(TypeTag<Half>{});
    case DType::bfloat16: return body(TypeTag<BFloat16>{});
    case DType::float32: return body(TypeTag<float>{});
    case DType::float64: return body(TypeTag<double>{});
  }
  return Status::unsupported_dtype;
}

// Host buffers aligned to a cache line, so the GEMM micro-kernels' 32- and
// 64-byte vector loads never straddle two lines; for trivial element types.
// Empty (nullptr) when the memory cannot be had.
struct AlignedDelete {
  template <typename T>
  void operator()(T* p) const {
    ::operator delete[](p, std::align_val_t{64});
  }
};
template <typename T>
using AlignedBuffer = std::unique_ptr<T[], AlignedDelete>;

template <typename T>
AlignedBuffer<T> allocate_aligned(int64_t count) {
  if (count > INT64_MAX / static_cast<int64_t>(sizeof(T))) return nullptr;
  const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(count > 0 ? count : 1);
  return AlignedBuffer<T>(
      static_cast<T*>(::operator new[](bytes, std::align_val_t{64}, std::nothrow)));
}

// count elements rounded up to whole cache lines: the offset of the next
// aligned sub-buffer.
template <typename T>
int64_t cache_lines(int64_t count) {
  constexpr int64_t per_line = 64 / sizeof(T);
  return (count + per_line - 1) / per_line * per_line;
}

// Runs task(i, scratch) for i in [0, count), statically scheduled over at
// most count OpenMP threads; scratch is the thread's own buffer of
// scratch_size uninitialised elements (cache-line aligned), reused from task
// to task, allocated before the threads start (out_of_memory, not an abort,
// when it cannot be).
// Each task writes only what it owns, so the kernels need no atomics and sum
// in a fixed order.
template <typename Acc, typename Task>
Status parallel_tasks(int64_t count, int64_t scratch_size, Task task) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(count, omp_get_max_threads()));
  if (scratch_size > INT64_MAX / static_cast<int64_t>(sizeof(Acc)) / threads - 64)
    return Status::out_of_memory;
  const int64_t stride = cache_lines<Acc>(scratch_size);
  const AlignedBuffer<Acc> scratch = allocate_aligned<Acc>(threads * stride);
  if (scratch == nullptr) return Status::out_of_memory;
#pragma omp parallel num_threads(static_cast<int>(threads))
  {
    Acc* own = scratch.get() + omp_get_thread_num() * stride;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) task(i, own);
  }
  return Status::ok;
}

}  // namespace cnnk::cpu
