// nanokern._cpu: the CPU gather_cast kernel (gather_cast_kernel.cpp) bound with pybind11 on raw
// buffer addresses, without torch, so a CPU conversion never loads libtorch. The Python side
// (nanokern/ops/host.py) checks shapes, strides and row ranges before calling in; the GIL is
// released while the kernel runs (the converter's worker threads run in parallel).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

#include "fp8_quant_kernel.h"
#include "gather_cast_kernel.h"

namespace py = pybind11;
using nanokern::Kind;

namespace {

Kind kind(int k) {
  if (k < 0 || k > 2) throw py::value_error("gather_cast: kind must be 0 (fp32), 1 (bf16) or 2 (fp16)");
  return static_cast<Kind>(k);
}

template <typename T>
const T* ptr(uintptr_t addr) { return reinterpret_cast<const T*>(addr); }

// fn(t) for t in [0, parts): the caller runs part 0, parts - 1 fresh threads the rest. Threads
// rather than OpenMP: an OpenMP team spins for a while after each region, and on a 2-core
// machine that spinning took the CPU the writer and checker threads needed (a thread start
// costs tens of microseconds; callers split only work of several hundred KB or more).
template <typename F>
void parallel_parts(int64_t parts, const F& fn) {
  std::vector<std::thread> pool;
  pool.reserve(parts - 1);
  for (int64_t t = 1; t < parts; ++t) {
    try {
      pool.emplace_back(fn, t);
    } catch (const std::system_error&) {  // no thread to be had: this part runs here
      fn(t);
    }
  }
  fn(0);
  for (auto& th : pool) th.join();
}

void gather_cast(uintptr_t src, int64_t src_row_stride, int skind, uintptr_t rows, int64_t nrows, int64_t ncols,
                 uintptr_t out, int64_t out_row_stride, int dkind, int threads) {
  const nanokern::GatherCastPlan plan = nanokern::plan_gather_cast(
      ptr<char>(src), src_row_stride, kind(skind), rows ? ptr<int64_t>(rows) : nullptr, nrows, ncols,
      reinterpret_cast<char*>(out), out_row_stride, kind(dkind));
  py::gil_scoped_release nogil;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, plan.items / plan.grain));
  parallel_parts(parts, [&](int64_t t) {
    nanokern::run_gather_cast(plan, plan.items * t / parts, plan.items * (t + 1) / parts);
  });
}

void transpose_cast(uintptr_t src, int64_t src_row_stride, int skind, int64_t row0, uintptr_t rows, int64_t n,
                    int64_t ncols, uintptr_t out, int64_t out_row_stride, int dkind, int64_t tile, int threads) {
  const Kind sk = kind(skind), dk = kind(dkind);
  const int64_t* r = rows ? ptr<int64_t>(rows) : nullptr;
  py::gil_scoped_release nogil;
  if (tile < 1) throw py::value_error("transpose_cast: tile must be positive");
  const int64_t tiles = (ncols + tile - 1) / tile;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({int64_t(threads), tiles, n * ncols / (1 << 16)}));
  parallel_parts(parts, [&](int64_t t) {
    const int64_t j0 = tiles * t / parts * tile;
    const int64_t j1 = std::min(ncols, tiles * (t + 1) / parts * tile);
    nanokern::transpose_cast(ptr<char>(src), src_row_stride, sk, row0, r, n, ncols, reinterpret_cast<char*>(out),
                             out_row_stride, dk, j0, j1);
  });
}

void gather_quant_fp8(uintptr_t src, int64_t src_row_stride, int skind, uintptr_t rows, int64_t nrows, int64_t ncols,
                      uintptr_t out, int64_t out_row_stride, uintptr_t scale_inv, int64_t scale_row_stride, bool ue8m0,
                      int threads) {
  if (nrows % nanokern::kFp8Block || ncols % nanokern::kFp8Block)
    throw py::value_error("gather_quant_fp8: rows and columns must be multiples of 128");
  nanokern::Fp8QuantArgs a;
  a.src = ptr<char>(src);
  a.src_row_stride = src_row_stride;
  a.skind = kind(skind);
  a.rows = rows ? ptr<int64_t>(rows) : nullptr;
  a.nrows = nrows;
  a.ncols = ncols;
  a.out = reinterpret_cast<uint8_t*>(out);
  a.out_row_stride = out_row_stride;
  a.scale_inv = reinterpret_cast<float*>(scale_inv);
  a.scale_row_stride = scale_row_stride;
  a.ue8m0 = ue8m0;
  py::gil_scoped_release nogil;
  const int64_t blocks = a.blocks();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, blocks / 4));  // 4 blocks: 256 KB of fp32
  parallel_parts(parts, [&](int64_t t) { nanokern::run_gather_quant_fp8(a, blocks * t / parts, blocks * (t + 1) / parts); });
}

bool all_finite(uintptr_t data, int64_t n, int k) {
  const Kind kd = kind(k);
  py::gil_scoped_release nogil;
  return nanokern::all_finite(ptr<char>(data), n, kd);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "nanokern's CPU gather_cast kernel on raw buffers (no torch); see nanokern/ops/host.py";
  m.def("gather_cast", &gather_cast, "out[i, :] = cast(src[rows[i], :]) on raw addresses (strides in elements)");
  m.def("transpose_cast", &transpose_cast, "out[i, j] = cast(src[j, rows[i]]) on raw addresses");
  m.def("gather_quant_fp8", &gather_quant_fp8,
        "out = e4m3(src[rows] * scale) per 128 x 128 block, scale_inv = 1 / scale (ue8m0: powers of two), on raw "
        "addresses");
  m.def("all_finite", &all_finite, "no NaN or inf among n values");
}
