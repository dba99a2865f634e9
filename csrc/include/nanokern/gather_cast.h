// Shared host/device math for gather_cast: dtype bit conversions and index math.
//
// Included by the CPU kernels (plain g++) and by the CUDA kernels (nvcc), so that what the CPU
// tests prove about rounding and indexing holds on the GPU too. Everything works on raw bit
// patterns with integer operations (the Triton kernel in nanokern/triton/gather_cast.py does the
// same arithmetic), and is bit-identical to torch's `tensor.to(dtype)` for every non-NaN value:
// round-to-nearest-even, overflow to +-inf, subnormals, +-0.
//
// NaN policy (torch itself is not consistent here: its CPU fp32->bf16 gives 0xFFFF, its scalar
// fp16->fp32 gives 0x7FFFFFFF): a NaN stays a NaN of the same sign, made quiet, keeping the top
// payload bits. Widening bf16->fp32 is a plain shift (exact bits).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NK_HD __host__ __device__ __forceinline__
#else
#define NK_HD inline
#endif

namespace nanokern {

enum class Kind : int { F32 = 0, BF16 = 1, F16 = 2 };

template <Kind K> struct Storage;
template <> struct Storage<Kind::F32> { using type = uint32_t; };
template <> struct Storage<Kind::BF16> { using type = uint16_t; };
template <> struct Storage<Kind::F16> { using type = uint16_t; };

// ---- exact widening ------------------------------------------------------------------------

NK_HD uint32_t bf16_to_f32_bits(uint16_t h) { return uint32_t(h) << 16; }

NK_HD uint32_t f16_to_f32_bits(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t a = h & 0x7FFFu;
  const uint32_t e = a >> 10;
  // normal: rebias the exponent 15 -> 127 (add 112 << 23)
  const uint32_t normal = (a << 13) + 0x38000000u;
  // subnormal a * 2^-24: the int -> float conversion of a (< 2^10) is exact, then
  // subtracting 24 from the exponent field multiplies by 2^-24 exactly (a == 0 stays 0).
  const float af = static_cast<float>(static_cast<int32_t>(a));  // signed: vectorises
#if defined(__CUDA_ARCH__)
  const uint32_t af_bits = __float_as_uint(af);
#else
  uint32_t af_bits;
  __builtin_memcpy(&af_bits, &af, sizeof(af_bits));
#endif
  const uint32_t sub = af_bits - (a != 0u ? 0x0C000000u : 0u);
  const uint32_t m = a & 0x3FFu;
  const uint32_t special = 0x7F800000u | (m << 13) | (m != 0u ? 0x00400000u : 0u);
  uint32_t r = e == 0u ? sub : normal;
  r = e == 31u ? special : r;
  return sign | r;
}

// ---- rounding narrowing (round to nearest, ties to even) ------------------------------------

NK_HD uint16_t f32_to_bf16_bits(uint32_t u) {
  // Adding 0x7FFF plus the lsb of the kept half rounds to nearest even; no finite or infinite
  // value carries out of 32 bits (max finite rounds up to the inf pattern 0x7F80 / 0xFF80).
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x0040u;
  // signed compare of a non-negative value: one instruction when vectorised
  return uint16_t(int32_t(u & 0x7FFFFFFFu) > 0x7F800000 ? nan : rounded);
}

NK_HD uint16_t f32_to_f16_bits(uint32_t u) {
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // normal fp16 range (|x| >= 2^-14): rebias the exponent 127 -> 15, round away 13 bits
  const uint32_t n = a - 0x38000000u;
  const uint32_t normal = (n + 0x0FFFu + ((n >> 13) & 1u)) >> 13;
  // subnormal fp16 range: result = round(m * 2^(e - 126)), m with its implicit bit;
  // shift clamped to [14, 25] (25 and more round to zero; clamping keeps shifts defined)
  const int32_t e = int32_t(a >> 23);
  int32_t s = 126 - e;
  s = s < 14 ? 14 : (s > 25 ? 25 : s);
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t sub = (m + ((1u << (s - 1)) - 1u) + ((m >> s) & 1u)) >> s;
  uint32_t r = a >= 0x38800000u ? normal : sub;
  r = a >= 0x477FF000u ? 0x7C00u : r;  // |x| >= 65520 rounds to inf (includes inf)
  r = a > 0x7F800000u ? (0x7E00u | ((a >> 13) & 0x3FFu)) : r;
  return uint16_t(sign | r);
}

// ---- kind to kind -----------------------------------------------------------------------------

template <Kind K>
NK_HD uint32_t to_f32_bits(typename Storage<K>::type x) {
  if constexpr (K == Kind::F32) {
    return x;
  } else if constexpr (K == Kind::BF16) {
    return bf16_to_f32_bits(x);
  } else {
    return f16_to_f32_bits(x);
  }
}

template <Kind K>
NK_HD typename Storage<K>::type from_f32_bits(uint32_t u) {
  if constexpr (K == Kind::F32) {
    return u;
  } else if constexpr (K == Kind::BF16) {
    return f32_to_bf16_bits(u);
  } else {
    return f32_to_f16_bits(u);
  }
}

// Every pair goes through fp32, which is exact for the widening half: one rounding only.
template <Kind S, Kind D>
NK_HD typename Storage<D>::type convert(typename Storage<S>::type x) {
  if constexpr (S == D) {
    return x;
  } else {
    return from_f32_bits<D>(to_f32_bits<S>(x));
  }
}

// ---- index math -------------------------------------------------------------------------------

// Source row read for output row i: rows == nullptr is the identity map.
NK_HD int64_t source_row(const int64_t* rows, int64_t i) { return rows == nullptr ? i : rows[i]; }

// Element offset of (row, col) in a 2-D tensor whose inner stride is 1.
NK_HD int64_t element_offset(int64_t row, int64_t row_stride, int64_t col) {
  return row * row_stride + col;
}

// Whether every row of src and out can be moved in packs of `vec` elements with 16-byte
// aligned loads and stores: base pointers, row strides (in bytes) and the row length must fit.
NK_HD bool can_vectorize(uintptr_t src_addr, int64_t src_row_stride_bytes, uintptr_t out_addr,
                         int64_t out_row_stride_bytes, int64_t ncols, int64_t vec) {
  return (src_addr % 16u) == 0u && (out_addr % 16u) == 0u && (src_row_stride_bytes % 16) == 0 &&
         (out_row_stride_bytes % 16) == 0 && (ncols % vec) == 0;
}

}  // namespace nanokern
