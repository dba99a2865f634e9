// CPU implementation of nanokern::gather_cast: rows split across OpenMP threads (at::parallel_for,
// compiled with -fopenmp), each row span either a memcpy (same dtype) or a conversion loop that
// the compiler vectorises; the loops are cloned for AVX2 and picked at load time (ifunc).
// Large outputs (written once, not read back soon: a converter's output file) are written with
// non-temporal stores: same dtype and widening through a small L1-resident staging buffer
// (~1.5x and ~1.2x on the dev machine), fp32 -> bf16 by an explicit AVX2 loop that converts in
// registers and streams 32 bytes at a time (the staged variant measured slower for narrowing;
// this one about 5-8% faster than plain stores into rotating cold 64 MB buffers, 1.1-1.4x
// torch's copy_ in bench_kernels). fp32 -> fp16 keeps plain stores.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NK_X86_AVX2 1
#endif

#include "gather_cast_check.h"
#include "nanokern/gather_cast.h"
#include "ops.h"

namespace nanokern {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define NK_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NK_CPU_CLONES
#endif

using SpanFn = void (*)(const void*, void*, int64_t);

// One function per dtype pair (not a template: target_clones wants plain functions).
#define NK_DEFINE_SPAN(NAME, S, D)                                                      \
  NK_CPU_CLONES void NAME(const void* s, void* d, int64_t n) {                          \
    using ST = Storage<S>::type;                                                        \
    using DT = Storage<D>::type;                                                        \
    const ST* __restrict__ sp = static_cast<const ST*>(s);                              \
    DT* __restrict__ dp = static_cast<DT*>(d);                                          \
    for (int64_t j = 0; j < n; ++j) dp[j] = convert<S, D>(sp[j]);                       \
  }

NK_DEFINE_SPAN(span_f32_bf16, Kind::F32, Kind::BF16)
NK_DEFINE_SPAN(span_f32_f16, Kind::F32, Kind::F16)
NK_DEFINE_SPAN(span_bf16_f32, Kind::BF16, Kind::F32)
NK_DEFINE_SPAN(span_f16_f32, Kind::F16, Kind::F32)
NK_DEFINE_SPAN(span_bf16_f16, Kind::BF16, Kind::F16)
NK_DEFINE_SPAN(span_f16_bf16, Kind::F16, Kind::BF16)
#undef NK_DEFINE_SPAN

void span_copy2(const void* s, void* d, int64_t n) { std::memcpy(d, s, size_t(n) * 2); }
void span_copy4(const void* s, void* d, int64_t n) { std::memcpy(d, s, size_t(n) * 4); }

SpanFn span_fn(Kind s, Kind d) {
  if (s == d) return s == Kind::F32 ? span_copy4 : span_copy2;
  if (s == Kind::F32) return d == Kind::BF16 ? span_f32_bf16 : span_f32_f16;
  if (s == Kind::BF16) return d == Kind::F32 ? span_bf16_f32 : span_bf16_f16;
  return d == Kind::F32 ? span_f16_f32 : span_f16_bf16;
}

constexpr int64_t kChunkElems = int64_t(1) << 16;    // long rows are split into chunks of this
constexpr int64_t kGrainBytes = int64_t(1) << 18;    // less than this per thread: stay serial
constexpr int64_t kStreamBytes = int64_t(8) << 20;   // outputs this large: non-temporal stores
constexpr int64_t kMinStridedSpanBytes = int64_t(16) << 10;  // see `big` below
constexpr int64_t kStageElems = 1024;                // staging buffer (<= 4 KB, stays in L1)

// memcpy with non-temporal stores for the 16-byte aligned body of dst.
void stream_bytes(char* dst, const char* src, int64_t n) {
#if defined(__SSE2__)
  const int64_t head = std::min<int64_t>(n, (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15);
  std::memcpy(dst, src, size_t(head));
  dst += head, src += head, n -= head;
  for (; n >= 64; n -= 64, dst += 64, src += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
  }
  for (; n >= 16; n -= 16, dst += 16, src += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  }
#endif
  std::memcpy(dst, src, size_t(n));
}

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // order this thread's non-temporal stores before anything after the op
#endif
}

// One span of n elements: converted (or copied) and written with non-temporal stores.
void stream_span(SpanFn fn, bool same, const char* s, char* d, int64_t n, int64_t ssz, int64_t dsz) {
  if (same) return stream_bytes(d, s, n * dsz);
  alignas(64) char stage[kStageElems * 4];
  for (int64_t off = 0; off < n; off += kStageElems) {
    const int64_t m = std::min(kStageElems, n - off);
    fn(s + off * ssz, stage, m);
    stream_bytes(d + off * dsz, stage, m * dsz);
  }
}

#if defined(NK_X86_AVX2)
// fp32 -> bf16 of 8 values, the arithmetic of f32_to_bf16_bits (gather_cast.h) in AVX2 lanes.
__attribute__((target("avx2"), always_inline)) inline __m256i bf16_bits8(__m256i u) {
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                         _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}

// Narrowing fp32 -> bf16 straight to non-temporal stores, 16 values per store: for large
// outputs (a converter's staging buffer) this skips the read-for-ownership of the destination.
__attribute__((target("avx2"))) void stream_f32_bf16_avx2(const char* s, char* d, int64_t n) {
  const uint32_t* sp = reinterpret_cast<const uint32_t*>(s);
  uint16_t* dp = reinterpret_cast<uint16_t*>(d);
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<uintptr_t>(dp + j) & 31) != 0; ++j) dp[j] = f32_to_bf16_bits(sp[j]);
  for (; j + 16 <= n; j += 16) {
    const __m256i a = bf16_bits8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + j)));
    const __m256i b = bf16_bits8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp + j + 8)));
    // packus interleaves 128-bit lanes (a0-3 b0-3 a4-7 b4-7); the permute puts them in order
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dp + j), packed);
  }
  for (; j < n; ++j) dp[j] = f32_to_bf16_bits(sp[j]);
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

}  // namespace

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

  const Kind skind = kind_of(src, "src");
  const Kind dkind = kind_of(out, "out");
  const SpanFn fn = span_fn(skind, dkind);
  const int64_t ssz = src.element_size();
  const int64_t dsz = out.element_size();
  const char* sbase = static_cast<const char*>(src.const_data_ptr());
  char* dbase = static_cast<char*>(out.mutable_data_ptr());
  const int64_t sstride = src.stride(0);
  const int64_t dstride = out.stride(0);
  int64_t rows_n = nrows;
  int64_t cols_n = ncols;
  if (row_map == nullptr && (nrows == 1 || (sstride == ncols && dstride == ncols))) {
    cols_n = nrows * ncols;  // packed rows, identity map: one long span
    rows_n = 1;
  }

  const bool same = skind == dkind;
  // Short spans gathered from a wider source (a column slice of each row) measured slower with
  // non-temporal stores (0.8x of copy_ for 2 KB of every 16 KB row): those keep plain stores.
  const bool big = nrows * ncols * dsz >= kStreamBytes &&
                   (rows_n == 1 || sstride == ncols || cols_n * ssz >= kMinStridedSpanBytes);
  const bool stream = dsz >= ssz && big;
#if defined(NK_X86_AVX2)
  const bool narrow_stream = skind == Kind::F32 && dkind == Kind::BF16 && big && have_avx2();
#else
  const bool narrow_stream = false;
#endif
  const int64_t chunk = std::min(cols_n, kChunkElems);
  const int64_t nchunks = (cols_n + chunk - 1) / chunk;
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / (chunk * (ssz + dsz)));
  at::parallel_for(0, rows_n * nchunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / nchunks;
      const int64_t c0 = (item % nchunks) * chunk;
      const int64_t r = source_row(row_map, i);
      const char* s = sbase + element_offset(r, sstride, c0) * ssz;
      char* d = dbase + element_offset(i, dstride, c0) * dsz;
      const int64_t n = std::min(chunk, cols_n - c0);
      if (narrow_stream) {
#if defined(NK_X86_AVX2)
        stream_f32_bf16_avx2(s, d, n);
#endif
      } else if (stream) {
        stream_span(fn, same, s, d, n, ssz, dsz);
      } else {
        fn(s, d, n);
      }
    }
    if (stream || narrow_stream) stream_fence();
  });
}

}  // namespace nanokern
