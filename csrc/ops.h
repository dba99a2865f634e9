// Declarations of the op implementations registered in csrc/torch_bindings.cpp (CPU) and
// csrc/cuda/torch_bindings_cuda.cpp (CUDA). Schemas live in csrc/torch_bindings.cpp only.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace nanokern {

// out[i, :] = cast(src[rows[i], :]); rows == nullopt is the identity map.
void gather_cast_cpu(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out);
void gather_cast_cuda(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out);

// out = e4m3 of src[rows] per 128 x 128 block, scale_inv[i / 128, j / 128] = 1 / its scale (fp8_quant.h).
// ue8m0: power-of-two scales (transformers' scale_fmt="ue8m0"), scale_inv still float32.
void gather_quant_fp8_cpu(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out,
                          at::Tensor& scale_inv, bool ue8m0);
void gather_quant_fp8_cuda(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out,
                           at::Tensor& scale_inv, bool ue8m0);

}  // namespace nanokern
