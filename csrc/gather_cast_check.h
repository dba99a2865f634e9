// Argument checks for the gather_cast op, shared by the CPU and CUDA implementations (host only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "nanokern/gather_cast.h"

namespace nanokern {

inline Kind kind_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::ScalarType::Float:
      return Kind::F32;
    case at::ScalarType::BFloat16:
      return Kind::BF16;
    case at::ScalarType::Half:
      return Kind::F16;
    default:
      TORCH_CHECK(false, "gather_cast: ", name, " must be float32, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

// Checks shapes, strides, dtypes and devices; returns the row map (contiguous) or nullopt.
inline std::optional<at::Tensor> check_gather_cast(const at::Tensor& src,
                                                   const std::optional<at::Tensor>& rows,
                                                   const at::Tensor& out) {
  TORCH_CHECK(src.dim() == 2, "gather_cast: src must be 2-D, got ", src.dim(), "-D");
  TORCH_CHECK(out.dim() == 2, "gather_cast: out must be 2-D, got ", out.dim(), "-D");
  TORCH_CHECK(src.size(1) == out.size(1), "gather_cast: src has ", src.size(1),
              " columns but out has ", out.size(1));
  TORCH_CHECK(src.size(1) <= 1 || src.stride(1) == 1, "gather_cast: src needs stride(1) == 1");
  TORCH_CHECK(out.size(1) <= 1 || out.stride(1) == 1, "gather_cast: out needs stride(1) == 1");
  TORCH_CHECK(src.device() == out.device(), "gather_cast: src on ", src.device(), " but out on ",
              out.device());
  kind_of(src, "src");
  kind_of(out, "out");
  if (!rows.has_value() || !rows->defined()) {
    TORCH_CHECK(src.size(0) == out.size(0), "gather_cast: without a row map src and out need the "
                "same number of rows, got ", src.size(0), " and ", out.size(0));
    return std::nullopt;
  }
  const at::Tensor& r = *rows;
  TORCH_CHECK(r.dim() == 1, "gather_cast: rows must be 1-D, got ", r.dim(), "-D");
  TORCH_CHECK(r.scalar_type() == at::ScalarType::Long, "gather_cast: rows must be int64, got ",
              r.scalar_type());
  TORCH_CHECK(r.device() == src.device(), "gather_cast: rows on ", r.device(), " but src on ",
              src.device());
  TORCH_CHECK(r.size(0) == out.size(0), "gather_cast: rows has ", r.size(0),
              " entries but out has ", out.size(0), " rows");
  return r.contiguous();
}

}  // namespace nanokern
