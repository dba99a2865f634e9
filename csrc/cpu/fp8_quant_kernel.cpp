// The CPU FP8 block quantizer (gather_quant_fp8) on raw pointers, shared by the torch op
// (csrc/cpu/fp8_quant.cpp) and the torch-free binding (csrc/cpu/host_bindings.cpp). One block of
// 128 gathered rows x 128 columns at a time, read twice from the source (amax, then quantize:
// 64 KB of fp32 at most, in L2), so no widened or cast copy of the tensor is ever made. The math
// is nanokern/fp8_quant.h, the same code the CUDA kernel runs.
#include "fp8_quant_kernel.h"

namespace nanokern {
namespace {

template <Kind S>
void quant_block(const Fp8QuantArgs& a, int64_t br, int64_t bc) {
  using ST = typename Storage<S>::type;
  const int64_t c0 = bc * kFp8Block;
  const ST* rows_ptr[kFp8Block];
  uint32_t amax = 0;
  for (int64_t k = 0; k < kFp8Block; ++k) {
    const int64_t r = source_row(a.rows, br * kFp8Block + k);
    const ST* s = reinterpret_cast<const ST*>(a.src) + element_offset(r, a.src_row_stride, c0);
    rows_ptr[k] = s;
    for (int64_t j = 0; j < kFp8Block; ++j) {
      const uint32_t v = to_f32_bits<S>(s[j]) & 0x7FFFFFFFu;
      amax = v > amax ? v : amax;
    }
  }
  const float scale = fp8_scale(amax);
  for (int64_t k = 0; k < kFp8Block; ++k) {
    const ST* s = rows_ptr[k];
    uint8_t* d = a.out + element_offset(br * kFp8Block + k, a.out_row_stride, c0);
    for (int64_t j = 0; j < kFp8Block; ++j) d[j] = fp8_quantize(to_f32_bits<S>(s[j]), scale);
  }
  a.scale_inv[br * a.scale_row_stride + bc] = fp8_scale_inv(scale);
}

}  // namespace

void run_gather_quant_fp8(const Fp8QuantArgs& a, int64_t begin, int64_t end) {
  const int64_t nbc = a.ncols / kFp8Block;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t br = b / nbc, bc = b % nbc;
    if (a.skind == Kind::F32) {
      quant_block<Kind::F32>(a, br, bc);
    } else if (a.skind == Kind::BF16) {
      quant_block<Kind::BF16>(a, br, bc);
    } else {
      quant_block<Kind::F16>(a, br, bc);
    }
  }
}

}  // namespace nanokern
