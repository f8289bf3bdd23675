// Element types of the C++ CPU kernels, their dtype dispatch, and the
// OpenMP scheduling the kernels share (serial below a work threshold,
// dynamically scheduled chunks above it).
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
#include <type_traits>

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

// An element-wise loop compiled for AVX-512 and AVX2 too, the version
// picked when the library loads (an ifunc: run-time selection, never
// -march=native); the baseline build elsewhere (aarch64, other compilers).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CNNK_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CNNK_VECTOR_CLONES
#endif

// Sums in kLanes independent lanes (a fixed order, vectorisable without
// reassociation): kLanes accumulators as kLanes * sizeof(A) / 16 vectors of
// 16 bytes (GCC's vector extension: SSE2 or NEON registers, whatever the
// build's target). Written as arrays, GCC vectorised the loop over blocks
// instead, transposing 8 x 4 blocks with shuffles; as one 32-byte vector on
// a 16-byte target it kept the accumulators in memory. Lane l takes the
// values k = l mod kLanes of a sum.
inline constexpr int kLanes = 8;

template <typename A>
struct Lanes {
  typedef A Part __attribute__((vector_size(16)));
  static constexpr int kParts = kLanes * static_cast<int>(sizeof(A)) / 16;
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(A));
  Part part[kParts] = {};

  // kLanes values of x from k0, converted to A.
  template <typename T>
  [[gnu::always_inline]] static Lanes load(const T* x) {
    Lanes v;
    for (int j = 0; j < kParts; ++j) {
      if constexpr (std::is_same_v<T, A>) {
        std::memcpy(&v.part[j], x + j * kWidth, sizeof(Part));
      } else {
        for (int l = 0; l < kWidth; ++l) v.part[j][l] = to_acc(x[j * kWidth + l]);
      }
    }
    return v;
  }
  A& operator[](int l) { return part[l / kWidth][l % kWidth]; }
  // The lanes added in order.
  A sum() const {
    A total = 0;
    for (int j = 0; j < kParts; ++j)
      for (int l = 0; l < kWidth; ++l) total += part[j][l];
    return total;
  }
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

// Scheduling. A parallel region costs microseconds to open and join, and
// under load (another process on the cores) a thread can be descheduled for
// a whole time slice: a statically split loop then waits for it while the
// other threads idle. So small work runs on the calling thread, and larger
// work is split into chunks of a few tens of microseconds that the threads
// take dynamically, several per thread, so that the threads still running
// take over the work of one that is not.

// Work, in elementary steps (an element loaded and compared or added),
// below which a loop runs serially: about 20 us on one core.
inline constexpr int64_t kSerialWork = int64_t{1} << 16;
// Work of one dynamically scheduled chunk (one atomic increment to take).
inline constexpr int64_t kChunkWork = int64_t{1} << 15;
// The work assumed of a task whose caller gives no estimate: big enough for
// two tasks to be worth two threads, and each a chunk of its own.
inline constexpr int64_t kUnknownWork = 2 * kSerialWork;

// Threads worth starting for total_work steps split into at most items
// independent pieces: 1 below kSerialWork or inside a parallel region,
// else at most one per kSerialWork steps.
inline int parallel_threads(double total_work, int64_t items) {
  if (omp_in_parallel() || total_work < static_cast<double>(2 * kSerialWork) || items < 2)
    return 1;
  const double by_work = total_work / static_cast<double>(kSerialWork);
  const int64_t most = std::min<int64_t>(items, omp_get_max_threads());
  return static_cast<int>(by_work < static_cast<double>(most) ? static_cast<int64_t>(by_work)
                                                                : most);
}

// Runs body(begin, end, thread) over [0, count) on `threads` threads (thread
// is the caller's index in [0, threads), for its scratch), in chunks of
// about kChunkWork steps (work_per_item each), at least four per thread,
// taken dynamically. Serial (one call, thread 0) when threads is 1.
template <typename Body>
void parallel_chunks(int threads, int64_t count, int64_t work_per_item, Body body) {
  if (count <= 0) return;
  if (threads <= 1 || count == 1) {
    body(int64_t{0}, count, 0);
    return;
  }
  const int64_t balanced = std::max<int64_t>(1, ceil_div(count, int64_t{4} * threads));
  const int64_t chunk =
      std::min(balanced, std::max<int64_t>(1, kChunkWork / std::max<int64_t>(1, work_per_item)));
  const int64_t chunks = ceil_div(count, chunk);
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t k = 0; k < chunks; ++k) body(k * chunk, std::min(count, (k + 1) * chunk), thread);
  }
}

// One buffer of `size` uninitialised elements per thread, allocated before
// the threads start (ok() is false when it cannot be: the caller returns
// Status::out_of_memory rather than abort inside a thread). Each buffer
// starts on its own cache line: threads writing neighbouring small buffers
// would otherwise pass the lines back and forth (false sharing).
template <typename E>
class ThreadScratch {
 public:
  ThreadScratch(int threads, int64_t size) : stride_(cache_lines<E>(std::max<int64_t>(size, 1))) {
    if (stride_ <= INT64_MAX / static_cast<int64_t>(sizeof(E)) / threads)
      data_ = allocate_aligned<E>(threads * stride_);
  }
  bool ok() const { return data_ != nullptr; }
  E* of(int thread) const { return data_.get() + thread * stride_; }

 private:
  int64_t stride_;
  AlignedBuffer<E> data_;
};

// Runs task(i, scratch) for i in [0, count) through parallel_chunks, given
// an estimate of each task's work in steps (serial when the whole is small;
// without one, every task is worth a thread); scratch is the thread's own
// buffer of scratch_size uninitialised elements (cache-line aligned), reused
// from task to task, allocated before the threads start (out_of_memory, not
// an abort, when it cannot be). Each task writes only what it owns, so the kernels need no
// atomics and sum in a fixed order, whatever the number of threads.
template <typename Acc, typename Task>
Status parallel_tasks(int64_t count, int64_t scratch_size, Task task,
                      int64_t work_per_task = kUnknownWork) {
  const int threads =
      parallel_threads(static_cast<double>(count) * static_cast<double>(work_per_task), count);
  const ThreadScratch<Acc> scratch(threads, scratch_size);
  if (!scratch.ok()) return Status::out_of_memory;
  parallel_chunks(threads, count, work_per_task, [&](int64_t begin, int64_t end, int thread) {
    Acc* own = scratch.of(thread);
    for (int64_t i = begin; i < end; ++i) task(i, own);
  });
  return Status::ok;
}

}  // namespace cnnk::cpu
