// Portable kernel variant: plain C++ over 8-lane arrays (auto-vectorised to the x86-64
// baseline). It is the fallback for CPUs without AVX2 and the reference the SIMD variants
// are tested against.
#include <cstdint>

#include "common/fp16.h"
#include "cpu/kernels.h"

namespace csi {
namespace cpu {
namespace generic_isa {

constexpr int W = 8;
struct vf {
  float x[W];
};

inline vf vzero() {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = 0.0f;
  return r;
}
inline vf vload(const float* p) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = p[i];
  return r;
}
inline void vstore(float* p, const vf& v) {
  for (int i = 0; i < W; ++i) p[i] = v.x[i];
}
inline vf vbcast(float a) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = a;
  return r;
}
inline vf vfma(const vf& a, const vf& b, const vf& c) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = a.x[i] * b.x[i] + c.x[i];
  return r;
}
inline vf vadd(const vf& a, const vf& b) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = a.x[i] + b.x[i];
  return r;
}
inline vf vsub(const vf& a, const vf& b) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = a.x[i] - b.x[i];
  return r;
}
inline vf vmul(const vf& a, const vf& b) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = a.x[i] * b.x[i];
  return r;
}
inline float vhsum(const vf& v) {
  float s0 = v.x[0] + v.x[4], s1 = v.x[1] + v.x[5], s2 = v.x[2] + v.x[6], s3 = v.x[3] + v.x[7];
  return (s0 + s2) + (s1 + s3);
}
inline unsigned vgt_mask(const vf& a, const vf& b) {
  unsigned m = 0;
  for (int i = 0; i < W; ++i) m |= unsigned(a.x[i] > b.x[i]) << i;
  return m;
}
inline vf vload_f32(const float* p) { return vload(p); }
inline vf vload_f16(const uint16_t* p) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = half_to_float(p[i]);
  return r;
}
inline vf vload_i8(const int8_t* p) {
  vf r;
  for (int i = 0; i < W; ++i) r.x[i] = float(p[i]);
  return r;
}
inline void transpose(vf r[W]) {
  for (int i = 0; i < W; ++i)
    for (int j = i + 1; j < W; ++j) {
      const float t = r[i].x[j];
      r[i].x[j] = r[j].x[i];
      r[j].x[i] = t;
    }
}

constexpr int QR = 4;
constexpr int QR_STEP = 4;
constexpr int NRV = 2;
constexpr int stream_rows(int nq, int elem_bytes) { return nq <= 1 && elem_bytes < 4 ? 4 : (nq <= 4 ? 2 : 1); }

#include "cpu/kernels_impl.h"

}  // namespace generic_isa

const KernelTable* kernels_generic() { return generic_isa::make_table("generic"); }

}  // namespace cpu
}  // namespace csi
