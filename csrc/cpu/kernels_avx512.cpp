// AVX-512 (F, BW, DQ, VL) kernel variant (compiled with -mavx512f ...; see setup.py).
#include <immintrin.h>

#include <cstdint>

#include "cpu/kernels.h"

namespace csi {
namespace cpu {
namespace avx512_isa {

constexpr int W = 16;
using vf = __m512;

inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vbcast(float a) { return _mm512_set1_ps(a); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline float vhsum(vf v) {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}
inline unsigned vgt_mask(vf a, vf b) { return unsigned(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)); }
inline vf vload_f32(const float* p) { return vload(p); }
inline vf vload_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vf vload_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline void transpose(vf r[W]) {
  vf t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + c] holds, in 128-bit lane l, column 4l + c of rows 4g .. 4g + 3.
  vf u[16];
  for (int g = 0; g < 4; ++g) {
    const int o = 4 * g;
    const __m512d a = _mm512_castps_pd(t[o + 0]), b = _mm512_castps_pd(t[o + 1]);
    const __m512d c = _mm512_castps_pd(t[o + 2]), e = _mm512_castps_pd(t[o + 3]);
    u[o + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[o + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[o + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    u[o + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  // Transpose the 4 x 4 grid of 128-bit lanes for each column phase c.
  for (int c = 0; c < 4; ++c) {
    const vf x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
    const vf x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const vf y0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const vf y1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

constexpr int QR = 12;
constexpr int QR_STEP = 4;
constexpr int NRV = 2;
// Rows scanned together: more rows amortise the query loads, but each row is a separate memory
// stream, and past ~2 KiB of interleaved rows the prefetchers fall behind (measured on Zen 4).
constexpr int stream_rows(int nq, int elem_bytes) { return nq <= 4 && elem_bytes < 4 ? 4 : 2; }

#include "cpu/kernels_impl.h"

}  // namespace avx512_isa

const KernelTable* kernels_avx512() { return avx512_isa::make_table("avx512"); }

}  // namespace cpu
}  // namespace csi
