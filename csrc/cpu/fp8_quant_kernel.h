// The CPU FP8 block quantizer on raw pointers (no torch): see fp8_quant_kernel.cpp.
#pragma once

#include <cstdint>

#include "nanokern/fp8_quant.h"

namespace nanokern {

// out[i, :] = e4m3(src[rows[i], :] * scale of its 128 x 128 block), scale_inv[i / 128, j / 128]
// = 1 / scale (ue8m0: both powers of two; rows == nullptr: the identity map); nrows and ncols multiples of 128, row strides
// in elements. The work is `blocks` independent blocks: run_gather_quant_fp8(args, b, e) runs
// blocks [b, e), so a caller splits [0, blocks) across threads.
struct Fp8QuantArgs {
  const char* src = nullptr;
  int64_t src_row_stride = 0;
  Kind skind = Kind::F32;
  const int64_t* rows = nullptr;
  int64_t nrows = 0, ncols = 0;
  uint8_t* out = nullptr;
  int64_t out_row_stride = 0;
  float* scale_inv = nullptr;
  int64_t scale_row_stride = 0;
  bool ue8m0 = false;  // power-of-two scales (fp8_quant.h)

  int64_t blocks() const { return (nrows / kFp8Block) * (ncols / kFp8Block); }
};

void run_gather_quant_fp8(const Fp8QuantArgs& a, int64_t begin, int64_t end);

}  // namespace nanokern
