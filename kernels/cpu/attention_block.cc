#include "kernels/cpu/attention_block.h"

#include <algorithm>

#include "base/check.h"
#include "kernels/cpu/simd.h"

namespace kvlab {
namespace {

// Per element, key after key: acc += p * v (multiply, then add: the portable fallback; the
// vector paths fuse the two, so results differ between ISAs, as for matmul).
void accumulate_scalar(const float* p, int rows, int n, const float* v, int64_t ldv, int d, float* acc) {
  for (int r = 0; r < rows; ++r) {
    float* a = acc + int64_t(r) * d;
    for (int j = 0; j < n; ++j) {
      const float pj = p[int64_t(r) * n + j];
      const float* vj = v + j * ldv;
      for (int e = 0; e < d; ++e) a[e] += pj * vj[e];
    }
  }
}

#ifdef KVLAB_X86
// A tile of R rows x C vectors of 16 lanes stays in registers while the keys stream past; each
// value vector is loaded once for the R rows. The last vector of a row may be partial (mask).
template <int R, int C>
KVLAB_TARGET_AVX512 void tile_avx512(const float* p, int n, const float* v, int64_t ldv, int d, int e0,
                                     float* acc) {
  const int last = std::min(16, d - e0 - 16 * (C - 1));
  const __mmask16 tail = __mmask16((1u << last) - 1);
  __m512 a[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const __mmask16 m = c == C - 1 ? tail : __mmask16(0xffff);
      a[r][c] = _mm512_maskz_loadu_ps(m, acc + int64_t(r) * d + e0 + 16 * c);
    }
  }
  for (int j = 0; j < n; ++j) {
    __m512 vv[C];
    for (int c = 0; c < C; ++c) {
      const __mmask16 m = c == C - 1 ? tail : __mmask16(0xffff);
      vv[c] = _mm512_maskz_loadu_ps(m, v + j * ldv + e0 + 16 * c);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 pr = _mm512_set1_ps(p[int64_t(r) * n + j]);
      for (int c = 0; c < C; ++c) a[r][c] = _mm512_fmadd_ps(pr, vv[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const __mmask16 m = c == C - 1 ? tail : __mmask16(0xffff);
      _mm512_mask_storeu_ps(acc + int64_t(r) * d + e0 + 16 * c, m, a[r][c]);
    }
  }
}

template <int R>
KVLAB_TARGET_AVX512 void rows_avx512(const float* p, int n, const float* v, int64_t ldv, int d, float* acc) {
  for (int e0 = 0; e0 < d; e0 += 64) {
    switch ((std::min(64, d - e0) + 15) / 16) {
      case 1: tile_avx512<R, 1>(p, n, v, ldv, d, e0, acc); break;
      case 2: tile_avx512<R, 2>(p, n, v, ldv, d, e0, acc); break;
      case 3: tile_avx512<R, 3>(p, n, v, ldv, d, e0, acc); break;
      default: tile_avx512<R, 4>(p, n, v, ldv, d, e0, acc); break;
    }
  }
}

KVLAB_TARGET_AVX512 void accumulate_avx512(const float* p, int rows, int n, const float* v, int64_t ldv,
                                           int d, float* acc) {
  int r = 0;
  for (; r + 3 <= rows; r += 3) rows_avx512<3>(p + int64_t(r) * n, n, v, ldv, d, acc + int64_t(r) * d);
  for (; r < rows; ++r) rows_avx512<1>(p + int64_t(r) * n, n, v, ldv, d, acc + int64_t(r) * d);
}

// AVX2: 8 lanes, tiles of R rows x C vectors; a partial last vector goes through masked
// load/store (vmaskmov), which leaves the lanes beyond d untouched.
template <int R, int C>
KVLAB_TARGET_AVX2 void tile_avx2(const float* p, int n, const float* v, int64_t ldv, int d, int e0, float* acc) {
  const int last = std::min(8, d - e0 - 8 * (C - 1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(last), lane);
  const __m256i full = _mm256_set1_epi32(-1);
  __m256 a[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) a[r][c] = _mm256_maskload_ps(acc + int64_t(r) * d + e0 + 8 * c, c == C - 1 ? tail : full);
  }
  for (int j = 0; j < n; ++j) {
    __m256 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = _mm256_maskload_ps(v + j * ldv + e0 + 8 * c, c == C - 1 ? tail : full);
    for (int r = 0; r < R; ++r) {
      const __m256 pr = _mm256_set1_ps(p[int64_t(r) * n + j]);
      for (int c = 0; c < C; ++c) a[r][c] = _mm256_fmadd_ps(pr, vv[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) _mm256_maskstore_ps(acc + int64_t(r) * d + e0 + 8 * c, c == C - 1 ? tail : full, a[r][c]);
  }
}

template <int R>
KVLAB_TARGET_AVX2 void rows_avx2(const float* p, int n, const float* v, int64_t ldv, int d, float* acc) {
  for (int e0 = 0; e0 < d; e0 += 32) {
    switch ((std::min(32, d - e0) + 7) / 8) {
      case 1: tile_avx2<R, 1>(p, n, v, ldv, d, e0, acc); break;
      case 2: tile_avx2<R, 2>(p, n, v, ldv, d, e0, acc); break;
      case 3: tile_avx2<R, 3>(p, n, v, ldv, d, e0, acc); break;
      default: tile_avx2<R, 4>(p, n, v, ldv, d, e0, acc); break;
    }
  }
}

KVLAB_TARGET_AVX2 void accumulate_avx2(const float* p, int rows, int n, const float* v, int64_t ldv, int d,
                                       float* acc) {
  int r = 0;
  for (; r + 2 <= rows; r += 2) rows_avx2<2>(p + int64_t(r) * n, n, v, ldv, d, acc + int64_t(r) * d);
  for (; r < rows; ++r) rows_avx2<1>(p + int64_t(r) * n, n, v, ldv, d, acc + int64_t(r) * d);
}
#endif

}  // namespace

void attn_accumulate_isa(Isa isa, const float* p, int rows, int n, const float* v, int64_t ldv, int d,
                         float* acc) {
  KVLAB_CHECK(int(isa) <= int(detected_isa()));
#ifdef KVLAB_X86
  if (isa == Isa::kAvx512) return accumulate_avx512(p, rows, n, v, ldv, d, acc);
  if (isa == Isa::kAvx2) return accumulate_avx2(p, rows, n, v, ldv, d, acc);
#endif
  accumulate_scalar(p, rows, n, v, ldv, d, acc);
}

void attn_accumulate(const float* p, int rows, int n, const float* v, int64_t ldv, int d, float* acc) {
  attn_accumulate_isa(active_isa(), p, rows, n, v, ldv, d, acc);
}

}  // namespace kvlab
