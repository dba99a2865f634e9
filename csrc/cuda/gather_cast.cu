// CUDA implementation of nanokern::gather_cast.
// Vector path: each thread moves a pack of VEC elements with 16-byte aligned loads and stores
// (VEC = 16 bytes of the narrower dtype), used when pointers, row strides and the row length
// allow it (nanokern::can_vectorize); otherwise one element per thread. Rounding and index math
// come from the shared header nanokern/gather_cast.h, the same code the CPU kernels run.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "gather_cast_check.h"
#include "nanokern/gather_cast.h"
#include "ops.h"

namespace nanokern {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 1 << 16;

template <typename T, int N>
struct alignas(16) Pack {
  T v[N];
};

// grid.y walks output rows, grid.x x threads walk the row's elements (or packs).
template <Kind S, Kind D>
__global__ void gather_cast_scalar_kernel(const typename Storage<S>::type* __restrict__ src,
                                          const int64_t* __restrict__ rows,
                                          typename Storage<D>::type* __restrict__ out,
                                          int64_t nrows, int64_t ncols, int64_t src_stride,
                                          int64_t out_stride, int64_t src_nrows) {
  for (int64_t i = blockIdx.y; i < nrows; i += gridDim.y) {
    const int64_t r = source_row(rows, i);
    CUDA_KERNEL_ASSERT(r >= 0 && r < src_nrows);
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < ncols;
         c += int64_t(gridDim.x) * blockDim.x) {
      out[element_offset(i, out_stride, c)] = convert<S, D>(src[element_offset(r, src_stride, c)]);
    }
  }
}

template <Kind S, Kind D, int VEC>
__global__ void gather_cast_vector_kernel(const typename Storage<S>::type* __restrict__ src,
                                          const int64_t* __restrict__ rows,
                                          typename Storage<D>::type* __restrict__ out,
                                          int64_t nrows, int64_t npacks, int64_t src_stride,
                                          int64_t out_stride, int64_t src_nrows) {
  using SP = Pack<typename Storage<S>::type, VEC>;
  using DP = Pack<typename Storage<D>::type, VEC>;
  for (int64_t i = blockIdx.y; i < nrows; i += gridDim.y) {
    const int64_t r = source_row(rows, i);
    CUDA_KERNEL_ASSERT(r >= 0 && r < src_nrows);
    const SP* s = reinterpret_cast<const SP*>(src + element_offset(r, src_stride, 0));
    DP* d = reinterpret_cast<DP*>(out + element_offset(i, out_stride, 0));
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < npacks;
         p += int64_t(gridDim.x) * blockDim.x) {
      const SP x = s[p];
      DP y;
#pragma unroll
      for (int k = 0; k < VEC; ++k) y.v[k] = convert<S, D>(x.v[k]);
      d[p] = y;
    }
  }
}

template <Kind S, Kind D>
void launch(const at::Tensor& src, const int64_t* rows, at::Tensor& out, cudaStream_t stream) {
  using ST = typename Storage<S>::type;
  using DT = typename Storage<D>::type;
  constexpr int VEC = 16 / int(sizeof(ST) < sizeof(DT) ? sizeof(ST) : sizeof(DT));
  const int64_t nrows = out.size(0);
  const int64_t ncols = out.size(1);
  const ST* sp = static_cast<const ST*>(src.const_data_ptr());
  DT* dp = static_cast<DT*>(out.mutable_data_ptr());
  // A single row's stride never matters: treat it as packed so such views still vectorise.
  const int64_t sstride = src.size(0) > 1 ? src.stride(0) : ncols;
  const int64_t dstride = nrows > 1 ? out.stride(0) : ncols;
  const bool vec = can_vectorize(reinterpret_cast<uintptr_t>(sp), sstride * int64_t(sizeof(ST)),
                                 reinterpret_cast<uintptr_t>(dp), dstride * int64_t(sizeof(DT)),
                                 ncols, VEC);
  const int64_t work = vec ? ncols / VEC : ncols;
  const dim3 grid(unsigned(std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxGridX)),
                  unsigned(std::min<int64_t>(nrows, kMaxGridY)));
  if (vec) {
    gather_cast_vector_kernel<S, D, VEC><<<grid, kThreads, 0, stream>>>(
        sp, rows, dp, nrows, work, sstride, dstride, src.size(0));
  } else {
    gather_cast_scalar_kernel<S, D><<<grid, kThreads, 0, stream>>>(sp, rows, dp, nrows, ncols,
                                                                   sstride, dstride, src.size(0));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <Kind S>
void launch_for_source(Kind d, const at::Tensor& src, const int64_t* rows, at::Tensor& out,
                       cudaStream_t stream) {
  switch (d) {
    case Kind::F32:
      return launch<S, Kind::F32>(src, rows, out, stream);
    case Kind::BF16:
      return launch<S, Kind::BF16>(src, rows, out, stream);
    case Kind::F16:
      return launch<S, Kind::F16>(src, rows, out, stream);
  }
}

}  // namespace

void gather_cast_cuda(const at::Tensor& src, const std::optional<at::Tensor>& rows_in,
                      at::Tensor& out) {
  const std::optional<at::Tensor> rows = check_gather_cast(src, rows_in, out);
  TORCH_CHECK(src.device().is_cuda(), "gather_cast (cuda): tensors must be on a CUDA device, got ",
              src.device());
  if (out.size(0) == 0 || out.size(1) == 0) return;
  const c10::cuda::CUDAGuard device_guard(src.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(src.get_device()).stream();
  const int64_t* row_map = rows ? rows->const_data_ptr<int64_t>() : nullptr;
  const Kind d = kind_of(out, "out");
  switch (kind_of(src, "src")) {
    case Kind::F32:
      return launch_for_source<Kind::F32>(d, src, row_map, out, stream);
    case Kind::BF16:
      return launch_for_source<Kind::BF16>(d, src, row_map, out, stream);
    case Kind::F16:
      return launch_for_source<Kind::F16>(d, src, row_map, out, stream);
  }
}

}  // namespace nanokern
