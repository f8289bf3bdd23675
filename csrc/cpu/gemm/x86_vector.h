// The vector traits micro_kernel_impl.h reads, for an x86 instruction set's
// float or double vectors, from its intrinsics' prefix (_mm256_, _mm512_)
// and suffix (ps, pd). Included only by the instruction-set files.
#pragma once
#include <immintrin.h>

#define CNNK_X86_VECTOR(Name, Scalar, Type, Lanes, prefix, suffix)                \
  struct Name {                                                                   \
    using scalar = Scalar;                                                        \
    using type = Type;                                                            \
    static constexpr int lanes = Lanes;                                           \
    static type load(const scalar* p) { return prefix##loadu_##suffix(p); }       \
    static type zero() { return prefix##setzero_##suffix(); }                     \
    static type set1(scalar v) { return prefix##set1_##suffix(v); }               \
    static type fma(type a, type b, type c) { return prefix##fmadd_##suffix(a, b, c); } \
    static void store(scalar* p, type v) { prefix##storeu_##suffix(p, v); }       \
  }
