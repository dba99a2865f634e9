// The torch op nanokern::gather_quant_fp8 on CPU tensors: argument checks, then the raw-pointer
// kernel of fp8_quant_kernel.cpp split by blocks across torch's intra-op threads.
#include <ATen/Parallel.h>

#include "fp8_quant_check.h"
#include "fp8_quant_kernel.h"
#include "ops.h"

namespace nanokern {

void gather_quant_fp8_cpu(const at::Tensor& src, const std::optional<at::Tensor>& rows_in, at::Tensor& out,
                          at::Tensor& scale_inv, bool ue8m0) {
  const std::optional<at::Tensor> rows = check_gather_quant_fp8(src, rows_in, out, scale_inv);
  TORCH_CHECK(src.device().is_cpu(), "gather_quant_fp8 (cpu): tensors must be on the CPU, got ", src.device());
  Fp8QuantArgs a;
  a.rows = rows ? rows->const_data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; a.rows != nullptr && i < out.size(0); ++i) {
    TORCH_CHECK(a.rows[i] >= 0 && a.rows[i] < src.size(0), "gather_quant_fp8: rows[", i, "] = ", a.rows[i],
                " is out of range for src with ", src.size(0), " rows");
  }
  a.src = static_cast<const char*>(src.const_data_ptr());
  a.src_row_stride = src.stride(0);
  a.skind = kind_of(src, "src");
  a.nrows = out.size(0);
  a.ncols = out.size(1);
  a.out = static_cast<uint8_t*>(out.mutable_data_ptr());
  a.out_row_stride = out.stride(0);
  a.scale_inv = scale_inv.mutable_data_ptr<float>();
  a.scale_row_stride = scale_inv.stride(0);
  a.ue8m0 = ue8m0;
  at::parallel_for(0, a.blocks(), 4, [&](int64_t b, int64_t e) { run_gather_quant_fp8(a, b, e); });
}

}  // namespace nanokern
