// The CPU FP8 block quantizer (gather_quant_fp8) on raw pointers, shared by the torch op
// (csrc/cpu/fp8_quant.cpp) and the torch-free binding (csrc/cpu/host_bindings.cpp). One block of
// 128 gathered rows x 128 columns at a time, read twice from the source (amax, then quantize:
// 64 KB of fp32 at most, in L2), so no widened or cast copy of the tensor is ever made. The math
// is nanokern/fp8_quant.h, the same code the CUDA kernel runs.
#include "fp8_quant_kernel.h"

namespace nanokern {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define NK_QUANT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NK_QUANT_CLONES
#endif

// One function per source kind and loop (not templates: target_clones wants plain functions),
// cloned for AVX2 (its variable shifts and unsigned max let the compiler vectorise both loops).
#define NK_DEFINE_QUANT_SPANS(SUFFIX, S)                                                          \
  NK_QUANT_CLONES uint32_t amax_##SUFFIX(const void* s, int64_t n, uint32_t amax) {               \
    const Storage<S>::type* __restrict__ sp = static_cast<const Storage<S>::type*>(s);            \
    for (int64_t j = 0; j < n; ++j) {                                                             \
      const uint32_t v = to_f32_bits<S>(sp[j]) & 0x7FFFFFFFu;                                     \
      amax = v > amax ? v : amax;                                                                 \
    }                                                                                             \
    return amax;                                                                                  \
  }                                                                                               \
  NK_QUANT_CLONES void quant_##SUFFIX(const void* s, uint8_t* __restrict__ d, int64_t n, float scale) { \
    const Storage<S>::type* __restrict__ sp = static_cast<const Storage<S>::type*>(s);            \
    for (int64_t j = 0; j < n; ++j) d[j] = fp8_quantize(to_f32_bits<S>(sp[j]), scale);            \
  }

NK_DEFINE_QUANT_SPANS(f32, Kind::F32)
NK_DEFINE_QUANT_SPANS(bf16, Kind::BF16)
NK_DEFINE_QUANT_SPANS(f16, Kind::F16)
#undef NK_DEFINE_QUANT_SPANS

using AmaxFn = uint32_t (*)(const void*, int64_t, uint32_t);
using QuantFn = void (*)(const void*, uint8_t*, int64_t, float);

void quant_block(const Fp8QuantArgs& a, int64_t br, int64_t bc, AmaxFn amax_fn, QuantFn quant_fn, int64_t esz) {
  const int64_t c0 = bc * kFp8Block;
  const char* rows_ptr[kFp8Block];
  uint32_t amax = 0;
  for (int64_t k = 0; k < kFp8Block; ++k) {
    const int64_t r = source_row(a.rows, br * kFp8Block + k);
    rows_ptr[k] = a.src + element_offset(r, a.src_row_stride, c0) * esz;
    amax = amax_fn(rows_ptr[k], kFp8Block, amax);
  }
  const Fp8Scales s = fp8_block_scales(amax, a.ue8m0);
  for (int64_t k = 0; k < kFp8Block; ++k) {
    quant_fn(rows_ptr[k], a.out + element_offset(br * kFp8Block + k, a.out_row_stride, c0), kFp8Block, s.scale);
  }
  a.scale_inv[br * a.scale_row_stride + bc] = s.inv;
}

}  // namespace

void run_gather_quant_fp8(const Fp8QuantArgs& a, int64_t begin, int64_t end) {
  const int64_t nbc = a.ncols / kFp8Block;
  const AmaxFn amax_fn = a.skind == Kind::F32 ? amax_f32 : a.skind == Kind::BF16 ? amax_bf16 : amax_f16;
  const QuantFn quant_fn = a.skind == Kind::F32 ? quant_f32 : a.skind == Kind::BF16 ? quant_bf16 : quant_f16;
  const int64_t esz = a.skind == Kind::F32 ? 4 : 2;
  for (int64_t b = begin; b < end; ++b) quant_block(a, b / nbc, b % nbc, amax_fn, quant_fn, esz);
}

}  // namespace nanokern
