// CUDA implementation of nanokern::gather_quant_fp8: one thread block per 128 x 128 quantization
// block. Each of its 256 threads reduces |x| over 64 values (a warp shuffle, then shared memory:
// an unsigned max of bit patterns, so it does not depend on the order), then rescales the same
// values. The math (scale, rounding to e4m3) is nanokern/fp8_quant.h, the code the CPU kernel runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fp8_quant_check.h"
#include "nanokern/fp8_quant.h"
#include "ops.h"

namespace nanokern {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <Kind S>
__global__ void gather_quant_fp8_kernel(const typename Storage<S>::type* __restrict__ src,
                                        const int64_t* __restrict__ rows, uint8_t* __restrict__ out,
                                        float* __restrict__ scale_inv, int64_t nbc, int64_t src_stride,
                                        int64_t out_stride, int64_t scale_stride, int64_t src_nrows, bool ue8m0) {
  __shared__ uint32_t warp_max[kWarps];
  __shared__ float block_scale;
  const int64_t br = blockIdx.x / nbc, bc = blockIdx.x % nbc;
  const int64_t c = bc * kFp8Block + (threadIdx.x % kFp8Block);
  const int64_t k0 = threadIdx.x / kFp8Block;  // this thread's rows: k0, k0 + 2, ...
  constexpr int64_t kStep = kThreads / kFp8Block;
  uint32_t amax = 0;
  for (int64_t k = k0; k < kFp8Block; k += kStep) {
    const int64_t r = source_row(rows, br * kFp8Block + k);
    CUDA_KERNEL_ASSERT(r >= 0 && r < src_nrows);
    const uint32_t v = to_f32_bits<S>(src[element_offset(r, src_stride, c)]) & 0x7FFFFFFFu;
    amax = v > amax ? v : amax;
  }
  for (int off = 16; off > 0; off /= 2) amax = max(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t m = 0;
    for (int w = 0; w < kWarps; ++w) m = warp_max[w] > m ? warp_max[w] : m;
    const Fp8Scales s = fp8_block_scales(m, ue8m0);
    block_scale = s.scale;
    scale_inv[br * scale_stride + bc] = s.inv;
  }
  __syncthreads();
  const float scale = block_scale;
  for (int64_t k = k0; k < kFp8Block; k += kStep) {
    const int64_t i = br * kFp8Block + k;
    const int64_t r = source_row(rows, i);
    out[element_offset(i, out_stride, c)] = fp8_quantize(to_f32_bits<S>(src[element_offset(r, src_stride, c)]), scale);
  }
}

template <Kind S>
void launch(const at::Tensor& src, const int64_t* rows, at::Tensor& out, at::Tensor& scale_inv, bool ue8m0,
            cudaStream_t stream) {
  using ST = typename Storage<S>::type;
  const int64_t nbr = out.size(0) / kFp8Block, nbc = out.size(1) / kFp8Block;
  gather_quant_fp8_kernel<S><<<unsigned(nbr * nbc), kThreads, 0, stream>>>(
      static_cast<const ST*>(src.const_data_ptr()), rows, static_cast<uint8_t*>(out.mutable_data_ptr()),
      scale_inv.mutable_data_ptr<float>(), nbc, src.stride(0), out.stride(0), scale_inv.stride(0), src.size(0), ue8m0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void gather_quant_fp8_cuda(const at::Tensor& src, const std::optional<at::Tensor>& rows_in, at::Tensor& out,
                           at::Tensor& scale_inv, bool ue8m0) {
  const std::optional<at::Tensor> rows = check_gather_quant_fp8(src, rows_in, out, scale_inv);
  TORCH_CHECK(src.device().is_cuda(), "gather_quant_fp8 (cuda): tensors must be on a CUDA device, got ", src.device());
  if (out.size(0) == 0 || out.size(1) == 0) return;
  const c10::cuda::CUDAGuard device_guard(src.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(src.get_device()).stream();
  const int64_t* row_map = rows ? rows->const_data_ptr<int64_t>() : nullptr;
  switch (kind_of(src, "src")) {
    case Kind::F32:
      return launch<Kind::F32>(src, row_map, out, scale_inv, ue8m0, stream);
    case Kind::BF16:
      return launch<Kind::BF16>(src, row_map, out, scale_inv, ue8m0, stream);
    case Kind::F16:
      return launch<Kind::F16>(src, row_map, out, scale_inv, ue8m0, stream);
  }
}

}  // namespace nanokern
