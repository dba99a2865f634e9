// The torch op nanokern::gather_cast on CPU tensors: argument checks, then the raw-pointer
// kernel of gather_cast_kernel.cpp split across torch's intra-op threads (at::parallel_for).
#include <ATen/Parallel.h>

#include "gather_cast_check.h"
#include "gather_cast_kernel.h"
#include "ops.h"

namespace nanokern {

void gather_cast_cpu(const at::Tensor& src, const std::optional<at::Tensor>& rows_in,
                     at::Tensor& out) {
  const std::optional<at::Tensor> rows = check_gather_cast(src, rows_in, out);
  TORCH_CHECK(src.device().is_cpu(), "gather_cast (cpu): tensors must be on the CPU, got ",
              src.device());
  const int64_t nrows = out.size(0);
  const int64_t ncols = out.size(1);
  if (nrows == 0 || ncols == 0) return;
  const int64_t src_nrows = src.size(0);
  const int64_t* row_map = rows ? rows->const_data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; row_map != nullptr && i < nrows; ++i) {
    TORCH_CHECK(row_map[i] >= 0 && row_map[i] < src_nrows, "gather_cast: rows[", i, "] = ",
                row_map[i], " is out of range for src with ", src_nrows, " rows");
  }
  const GatherCastPlan plan = plan_gather_cast(
      static_cast<const char*>(src.const_data_ptr()), src.stride(0), kind_of(src, "src"), row_map, nrows, ncols,
      static_cast<char*>(out.mutable_data_ptr()), out.stride(0), kind_of(out, "out"));
  at::parallel_for(0, plan.items, plan.grain, [&](int64_t begin, int64_t end) { run_gather_cast(plan, begin, end); });
}

}  // namespace nanokern
