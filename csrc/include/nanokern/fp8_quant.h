// Shared host/device math of the FP8 block quantizer (gather_quant_fp8): 128 x 128 blocks of
// float8_e4m3fn with one float32 `scale_inv` per block, the DeepSeek-V3 / transformers
// FineGrainedFP8 format. Per block, from the source values widened exactly to float32:
//   amax = max |x|;  scale = amax > 0 (and not NaN) ? 448 * (1 / amax) : 1;  scale_inv = 1 / scale
//   q = float8_e4m3fn(clamp(x * scale, -448, 448))   (round to nearest even)
// every operation one IEEE float32 operation, as transformers' Fp8Quantize._quantize_one does it
// in torch (whose `448 / tensor` is `reciprocal(tensor) * 448`: two roundings, not one) (NaN and inf give what that formula gives: a NaN in a block makes its scale 1, an inf
// makes it 0 and scale_inv inf). Included by the CPU kernel (g++) and the CUDA kernel (nvcc); the
// Triton kernel (nanokern/ops/triton/fp8_quant.py) does the same arithmetic.
//
// ue8m0 scales (transformers' FineGrainedFP8Config(scale_fmt="ue8m0"), DeepSeek's `scale_fmt`):
// scale_inv is then rounded UP to a power of two, s' = 2^ceil(log2(max(scale_inv, 2^-126))), and
// the block is quantized with scale = 1 / s' (exact), so dequantizing multiplies by exactly what
// the weight was divided by. The ceiling is taken exactly, on the bits (the exponent, plus one
// when any mantissa bit is set), as DeepGEMM does; transformers spells it pow(2, ceil(log2(x)))
// in float32, whose rounded log2 lands on the integer k when x is a few ulps above a power of two
// 2^k (k != 0; x < 2^k (1 + 2^-18) at most), keeping 2^k there: the only place they differ.
// scale_inv = inf (a block holding an infinity) has no e8m0 value: NaN, as float8_e8m0fnu stores it.
#pragma once

#include <cstdint>

#include "nanokern/gather_cast.h"

namespace nanokern {

constexpr int64_t kFp8Block = 128;  // rows and columns of a quantization block

NK_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

NK_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// fp32 bits -> float8_e4m3fn bits, round to nearest even, as c10's fp8e4m3fn_from_fp32_value:
// |x| >= 480 (and inf, NaN) gives the NaN 0x7F with x's sign; e4m3fn has no infinity.
NK_HD uint8_t f32_to_e4m3_bits(uint32_t u) {
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // normal e4m3 (|x| >= 2^-6): rebias the exponent 127 -> 7, round away 20 bits
  const uint32_t normal = (a - (120u << 23) + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
  // subnormal e4m3: round(m * 2^(e - 141)), m with its implicit bit; shift clamped to [21, 25]
  // (25 and more round to zero; clamping keeps shifts defined)
  int32_t s = 141 - int32_t(a >> 23);
  s = s < 21 ? 21 : (s > 25 ? 25 : s);
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t sub = (m + ((1u << (s - 1)) - 1u) + ((m >> s) & 1u)) >> s;
  uint32_t r = a >= (121u << 23) ? normal : sub;
  r = a >= 0x43F00000u ? 0x7Fu : r;  // 480.0 and above (inf and NaN included)
  return uint8_t(sign | r);
}

// The block's scale from the largest |x| bit pattern of its values (a NaN is the largest).
NK_HD float fp8_scale(uint32_t amax_bits) {
  if (amax_bits == 0u || amax_bits > 0x7F800000u) return 1.0f;  // all zero, or a NaN: 1
  return 448.0f * (1.0f / bits_f32(amax_bits));  // torch's 448 / t: reciprocal, then multiply
}

NK_HD float fp8_scale_inv(float scale) { return 1.0f / scale; }

// The ue8m0 scale_inv: the least power of two >= s (s >= 0; 0 and subnormals give 2^-126), or
// the quiet NaN 0x7FC00000 where that is not finite (s = inf). Its e8m0 byte is its exponent field.
NK_HD float fp8_ue8m0(float s) {
  const uint32_t u = f32_bits(s) & 0x7FFFFFFFu;
  const uint32_t e = u >> 23;
  if (e == 0u) return bits_f32(1u << 23);
  const uint32_t r = e + ((u & 0x7FFFFFu) != 0u ? 1u : 0u);
  return bits_f32(r >= 255u ? 0x7FC00000u : r << 23);
}

// A block's (scale, scale_inv) from its largest |x| bit pattern: float scales, or ue8m0 ones.
struct Fp8Scales {
  float scale, inv;
};

NK_HD Fp8Scales fp8_block_scales(uint32_t amax_bits, bool ue8m0) {
  const float scale = fp8_scale(amax_bits);
  const float inv = fp8_scale_inv(scale);
  if (!ue8m0) return {scale, inv};
  const float p = fp8_ue8m0(inv);
  return {1.0f / p, p};  // (exact: a power of two, or NaN)
}

// One value: x (fp32 bits) times the block's scale, clamped to +-448, rounded to e4m3.
NK_HD uint8_t fp8_quantize(uint32_t x, float scale) {
  float y = bits_f32(x) * scale;
  y = y > 448.0f ? 448.0f : (y < -448.0f ? -448.0f : y);  // a NaN stays a NaN
  return f32_to_e4m3_bits(f32_bits(y));
}

}  // namespace nanokern
