// The CPU gather_cast kernel on raw pointers, shared by the torch op (csrc/cpu/gather_cast.cpp,
// parallelised with at::parallel_for) and the torch-free binding (csrc/cpu/host_bindings.cpp,
// std::thread parts), so both run the same loops. Each row span is either a memcpy (same dtype) or a
// conversion loop that the compiler vectorises; the loops are cloned for AVX2 and picked at load
// time (ifunc). Large outputs (written once, not read back soon: a converter's output file) are
// written with non-temporal stores: same dtype and widening through a small L1-resident staging
// buffer, fp32 -> bf16 by an explicit AVX2 loop that converts in registers and streams 32 bytes
// at a time. fp32 -> fp16 keeps plain stores.
#include "gather_cast_kernel.h"

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NK_X86_AVX2 1
#endif

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

GatherCastPlan plan_gather_cast(const char* src, int64_t src_row_stride, Kind skind, const int64_t* rows,
                                int64_t nrows, int64_t ncols, char* out, int64_t out_row_stride, Kind dkind) {
  GatherCastPlan p;
  p.fn = reinterpret_cast<void*>(span_fn(skind, dkind));
  p.ssz = kind_size(skind);
  p.dsz = kind_size(dkind);
  p.sbase = src;
  p.dbase = out;
  p.sstride = src_row_stride;
  p.dstride = out_row_stride;
  p.rows = rows;
  p.rows_n = nrows;
  p.cols_n = ncols;
  if (nrows == 0 || ncols == 0) {
    p.items = 0;
    return p;
  }
  if (rows == nullptr && (nrows == 1 || (src_row_stride == ncols && out_row_stride == ncols))) {
    p.cols_n = nrows * ncols;  // packed rows, identity map: one long span
    p.rows_n = 1;
  }
  p.same = skind == dkind;
  // Short spans gathered from a wider source (a column slice of each row) measured slower with
  // non-temporal stores (0.8x of copy_ for 2 KB of every 16 KB row): those keep plain stores.
  const bool big = nrows * ncols * p.dsz >= kStreamBytes &&
                   (p.rows_n == 1 || src_row_stride == ncols || p.cols_n * p.ssz >= kMinStridedSpanBytes);
  p.stream = p.dsz >= p.ssz && big;
#if defined(NK_X86_AVX2)
  p.narrow_stream = skind == Kind::F32 && dkind == Kind::BF16 && big && have_avx2();
#endif
  p.chunk = std::min(p.cols_n, kChunkElems);
  p.nchunks = (p.cols_n + p.chunk - 1) / p.chunk;
  p.items = p.rows_n * p.nchunks;
  p.grain = std::max<int64_t>(1, kGrainBytes / (p.chunk * (p.ssz + p.dsz)));
  return p;
}

void run_gather_cast(const GatherCastPlan& p, int64_t begin, int64_t end) {
  const SpanFn fn = reinterpret_cast<SpanFn>(p.fn);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t i = item / p.nchunks;
    const int64_t c0 = (item % p.nchunks) * p.chunk;
    const int64_t r = source_row(p.rows, i);
    const char* s = p.sbase + element_offset(r, p.sstride, c0) * p.ssz;
    char* d = p.dbase + element_offset(i, p.dstride, c0) * p.dsz;
    const int64_t n = std::min(p.chunk, p.cols_n - c0);
    if (p.narrow_stream) {
#if defined(NK_X86_AVX2)
      stream_f32_bf16_avx2(s, d, n);
#endif
    } else if (p.stream) {
      stream_span(fn, p.same, s, d, n, p.ssz, p.dsz);
    } else {
      fn(s, d, n);
    }
  }
  if (p.stream || p.narrow_stream) stream_fence();
}

namespace {
#if defined(NK_X86_AVX2)
// d[c * dstride + r] = s[r * sstride + c] for an 8 x 8 block of 32-bit values, in registers (the
// shuffles move bits only: NaN payloads and signed zeros pass unchanged).
__attribute__((target("avx2"))) void transpose8x8(const uint32_t* s, int64_t sstride, uint32_t* d, int64_t dstride) {
  __m256 r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(reinterpret_cast<const float*>(s + k * sstride));
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);      // r[k][0] r[k+1][0] r[k][1] r[k+1][1] | same for 4, 5
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);  // columns 2, 3 | 6, 7
  }
  for (int k = 0; k < 8; k += 4) {
    r[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));      // column 0 of 4 rows | column 4
    r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));  // 1 | 5
    r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));  // 2 | 6
    r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));  // 3 | 7
  }
  for (int c = 0; c < 4; ++c) {  // rows 0-3 with rows 4-7: column c, and column c + 4
    _mm256_storeu_ps(reinterpret_cast<float*>(d + c * dstride), _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
    _mm256_storeu_ps(reinterpret_cast<float*>(d + (c + 4) * dstride), _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
  }
}

// The same for 16-bit values (bf16, fp16 kept as they are), with SSE2 unpacks.
void transpose8x8(const uint16_t* s, int64_t sstride, uint16_t* d, int64_t dstride) {
  __m128i a[8], b[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k * sstride));
  for (int k = 0; k < 8; k += 2) {
    b[k] = _mm_unpacklo_epi16(a[k], a[k + 1]);      // columns 0-3 of rows k, k + 1, interleaved
    b[k + 1] = _mm_unpackhi_epi16(a[k], a[k + 1]);  // columns 4-7
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7: pairs of columns
    a[4 * h] = _mm_unpacklo_epi32(b[4 * h], b[4 * h + 2]);          // columns 0, 1
    a[4 * h + 1] = _mm_unpackhi_epi32(b[4 * h], b[4 * h + 2]);      // 2, 3
    a[4 * h + 2] = _mm_unpacklo_epi32(b[4 * h + 1], b[4 * h + 3]);  // 4, 5
    a[4 * h + 3] = _mm_unpackhi_epi32(b[4 * h + 1], b[4 * h + 3]);  // 6, 7
  }
  for (int p = 0; p < 4; ++p) {  // columns 2p and 2p + 1: rows 0-3 from a[p], rows 4-7 from a[p + 4]
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * p * dstride), _mm_unpacklo_epi64(a[p], a[p + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * p + 1) * dstride), _mm_unpackhi_epi64(a[p], a[p + 4]));
  }
}

bool register_transpose(size_t itemsize) { return itemsize == 2 || have_avx2(); }
#endif

constexpr int64_t kMicro = 8;  // transposed in blocks of 8 x 8 held in registers or L1

// Output rows [0, n) x columns [j0, j1): out[i, j] = cast(src[j, rows[i] or row0 + i]). Source
// rows are taken a band at a time, as many as fill one 64-byte line of an output row, and the
// band is swept down all output rows in 8 x 8 micro blocks: each output line is written whole
// at once, and the band's source rows are read front to back. On a 4096 x 14336 fp32 expert this
// measured 1.3-1.8x the speed of square 64 x 64 tiles (whose rows, 4 KiB multiples apart, share
// cache sets).
// Same-dtype blocks over a contiguous column range use a register transpose (AVX2 for 32-bit
// values, SSE2 for 16-bit ones).
template <Kind S, Kind D>
void transpose_bands(const char* src, int64_t sstride, int64_t row0, const int64_t* rows, int64_t n,
                     int64_t ncols, char* out, int64_t ostride, int64_t j0, int64_t j1) {
  using ST = typename Storage<S>::type;
  using DT = typename Storage<D>::type;
  constexpr int64_t kBand = 64 / int64_t(sizeof(DT));
  const ST* sp = reinterpret_cast<const ST*>(src);
  DT* dp = reinterpret_cast<DT*>(out);
  bool fast = false;
#if defined(NK_X86_AVX2)
  if constexpr (S == D) fast = rows == nullptr && register_transpose(sizeof(ST));
#endif
  for (int64_t jb = j0; jb < j1; jb += kBand) {
    const int64_t je = std::min(j1, jb + kBand);
    for (int64_t i = 0; i < n; i += kMicro) {
      const int64_t in = std::min(kMicro, n - i);
      for (int64_t j = jb; j < je; j += kMicro) {
        const int64_t jn = std::min(kMicro, je - j);
#if defined(NK_X86_AVX2)
        if constexpr (S == D) {
          if (fast && jn == kMicro && in == kMicro) {
            transpose8x8(sp + j * sstride + row0 + i, sstride, dp + i * ostride + j, ostride);
            continue;
          }
        }
#endif
        ST blk[kMicro][kMicro];  // blk[c][r] = source row j + r at the column of output row i + c
        for (int64_t r = 0; r < jn; ++r) {
          const ST* srow = sp + (j + r) * sstride;
          for (int64_t c = 0; c < in; ++c) blk[c][r] = srow[rows == nullptr ? row0 + i + c : rows[i + c]];
        }
        for (int64_t c = 0; c < in; ++c) {
          DT* drow = dp + (i + c) * ostride + j;
          for (int64_t r = 0; r < jn; ++r) drow[r] = convert<S, D>(blk[c][r]);
        }
      }
    }
  }
  (void)fast;
}

using TransposeFn = void (*)(const char*, int64_t, int64_t, const int64_t*, int64_t, int64_t, char*, int64_t,
                             int64_t, int64_t);

template <Kind S>
TransposeFn transpose_for(Kind d) {
  if (d == Kind::F32) return transpose_bands<S, Kind::F32>;
  if (d == Kind::BF16) return transpose_bands<S, Kind::BF16>;
  return transpose_bands<S, Kind::F16>;
}
}  // namespace

void transpose_cast(const char* src, int64_t src_row_stride, Kind skind, int64_t row0, const int64_t* rows,
                    int64_t n, int64_t ncols, char* out, int64_t out_row_stride, Kind dkind, int64_t j0, int64_t j1) {
  const TransposeFn fn = skind == Kind::F32    ? transpose_for<Kind::F32>(dkind)
                         : skind == Kind::BF16 ? transpose_for<Kind::BF16>(dkind)
                                               : transpose_for<Kind::F16>(dkind);
  fn(src, src_row_stride, row0, rows, n, ncols, out, out_row_stride, j0, j1);
}

bool all_finite(const char* data, int64_t n, Kind kind) {
  // A value is NaN or +-inf exactly when its exponent bits are all ones.
  if (kind == Kind::F32) {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(data);
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= uint32_t((p[i] & 0x7F800000u) == 0x7F800000u);
    return bad == 0;
  }
  const uint16_t mask = kind == Kind::BF16 ? 0x7F80u : 0x7C00u;
  const uint16_t* p = reinterpret_cast<const uint16_t*>(data);
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= uint32_t((p[i] & mask) == mask);
  return bad == 0;
}

}  // namespace nanokern
