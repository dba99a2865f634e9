// Argument checks for the gather_quant_fp8 op, shared by the CPU and CUDA implementations (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "gather_cast_check.h"
#include "nanokern/fp8_quant.h"

namespace nanokern {

// Checks shapes, strides, dtypes and devices; returns the row map (contiguous) or nullopt.
inline std::optional<at::Tensor> check_gather_quant_fp8(const at::Tensor& src, const std::optional<at::Tensor>& rows,
                                                        const at::Tensor& out, const at::Tensor& scale_inv) {
  TORCH_CHECK(src.dim() == 2 && out.dim() == 2 && scale_inv.dim() == 2,
              "gather_quant_fp8: src, out and scale_inv must be 2-D");
  TORCH_CHECK(out.scalar_type() == at::ScalarType::Float8_e4m3fn, "gather_quant_fp8: out must be float8_e4m3fn, got ",
              out.scalar_type());
  TORCH_CHECK(scale_inv.scalar_type() == at::ScalarType::Float, "gather_quant_fp8: scale_inv must be float32, got ",
              scale_inv.scalar_type());
  kind_of(src, "src");
  TORCH_CHECK(src.size(1) == out.size(1), "gather_quant_fp8: src has ", src.size(1), " columns but out has ",
              out.size(1));
  TORCH_CHECK(out.size(0) % kFp8Block == 0 && out.size(1) % kFp8Block == 0, "gather_quant_fp8: out's shape ",
              out.sizes(), " is not a multiple of ", kFp8Block);
  TORCH_CHECK(scale_inv.size(0) == out.size(0) / kFp8Block && scale_inv.size(1) == out.size(1) / kFp8Block,
              "gather_quant_fp8: scale_inv has shape ", scale_inv.sizes(), " for out ", out.sizes());
  TORCH_CHECK(src.size(1) <= 1 || src.stride(1) == 1, "gather_quant_fp8: src needs stride(1) == 1");
  TORCH_CHECK(out.size(1) <= 1 || out.stride(1) == 1, "gather_quant_fp8: out needs stride(1) == 1");
  TORCH_CHECK(scale_inv.size(1) <= 1 || scale_inv.stride(1) == 1, "gather_quant_fp8: scale_inv needs stride(1) == 1");
  TORCH_CHECK(src.device() == out.device() && src.device() == scale_inv.device(),
              "gather_quant_fp8: src, out and scale_inv must be on one device");
  if (!rows.has_value() || !rows->defined()) {
    TORCH_CHECK(src.size(0) == out.size(0), "gather_quant_fp8: without a row map src and out need the same rows");
    return std::nullopt;
  }
  const at::Tensor& r = *rows;
  TORCH_CHECK(r.dim() == 1 && r.scalar_type() == at::ScalarType::Long && r.size(0) == out.size(0),
              "gather_quant_fp8: rows must be 1-D int64 with one entry per row of out");
  TORCH_CHECK(r.device() == src.device(), "gather_quant_fp8: rows on ", r.device(), " but src on ", src.device());
  return r.contiguous();
}

}  // namespace nanokern
