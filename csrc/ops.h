// Declarations of the op implementations registered in csrc/torch_bindings.cpp (CPU) and
// csrc/cuda/torch_bindings_cuda.cpp (CUDA). Schemas live in csrc/torch_bindings.cpp only.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace nanokern {

// out[i, :] = cast(src[rows[i], :]); rows == nullopt is the identity map.
void gather_cast_cpu(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out);
void gather_cast_cuda(const at::Tensor& src, const std::optional<at::Tensor>& rows, at::Tensor& out);

}  // namespace nanokern
