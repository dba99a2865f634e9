// The CPU gather_cast kernel on raw pointers (no torch): see gather_cast_kernel.cpp.
#pragma once

#include <cstdint>

#include "nanokern/gather_cast.h"

namespace nanokern {

inline int64_t kind_size(Kind k) { return k == Kind::F32 ? 4 : 2; }

// out[i, :] = convert(src[rows[i], :]) for i < nrows (rows == nullptr: the identity map), row
// strides in elements. The work is `items` independent items; run_gather_cast(plan, b, e) runs
// items [b, e), so a caller splits [0, items) across threads in pieces of at least `grain`.
struct GatherCastPlan {
  void* fn = nullptr;
  const char* sbase = nullptr;
  char* dbase = nullptr;
  const int64_t* rows = nullptr;
  int64_t ssz = 0, dsz = 0, sstride = 0, dstride = 0, rows_n = 0, cols_n = 0;
  int64_t chunk = 1, nchunks = 1, items = 0, grain = 1;
  bool same = false, stream = false, narrow_stream = false;
};

GatherCastPlan plan_gather_cast(const char* src, int64_t src_row_stride, Kind skind, const int64_t* rows,
                                int64_t nrows, int64_t ncols, char* out, int64_t out_row_stride, Kind dkind);
void run_gather_cast(const GatherCastPlan& plan, int64_t begin, int64_t end);

// out[i, j] = convert(src[j, r_i]) for i < n, j0 <= j < j1 (r_i = rows[i], or row0 + i when
// rows == nullptr): a transposed read (e.g. an input-major expert matrix), each output line
// written whole (see transpose_tiles). Callers split [0, ncols) into column ranges [j0, j1).
void transpose_cast(const char* src, int64_t src_row_stride, Kind skind, int64_t row0, const int64_t* rows,
                    int64_t n, int64_t ncols, char* out, int64_t out_row_stride, Kind dkind, int64_t j0, int64_t j1);

// Whether none of n values is a NaN or an infinity.
bool all_finite(const char* data, int64_t n, Kind kind);

}  // namespace nanokern
