// Numeric building blocks shared by the CUDA kernels, the host orchestration and the CPU
// emulation of the CUDA top-k (plain C++; __host__ __device__ under nvcc).
//
// Sort keys. A candidate (score s, reference index i) is one 64-bit key
//
//     key = ordered(s) << 32 | (0xFFFFFFFF - i)
//
// where ordered() maps float bits to an unsigned integer with the same order as the floats.
// Sorting keys in DESCENDING order therefore sorts by score descending and, for equal
// scores, by index ascending: exactly the (score desc, index asc) order of the CPU kernel,
// with no separate value array and a single sort.
//
// Query split. Tensor cores multiply fp16 values exactly and accumulate in fp32, so a fp32
// query q is written as q * 2^e = hi + lo with hi = fp16(q * 2^e), lo = fp16(q * 2^e - hi):
// hi + lo carries 22 significant bits, and two MMAs (hi * r + lo * r) give fp32-level dot
// products against references that are exact in fp16 (fp16 storage; int8 codes). The power
// of two 2^e moves the query's largest magnitude into [2^14, 2^15), away from fp16
// overflow (65504) and from the subnormal range; it is undone exactly on the fp32 result.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/storage.h"

#if defined(__CUDACC__)
#define CSI_HD __host__ __device__ __forceinline__
#else
#define CSI_HD inline
#endif

namespace csi {
namespace topk {

constexpr uint32_t kIndexMask = 0xFFFFFFFFu;
// Largest reference count: indices must fit the low key word and int32 kernel arithmetic.
constexpr int64_t kMaxRefs = (int64_t(1) << 31) - 1;
// k limit of the CUDA path (memory, not the algorithm, is what grows with k).
constexpr int64_t kMaxK = int64_t(1) << 16;
// Candidate slots per query and chunk: max(4k, kMinCap), never more than N.
constexpr int64_t kMinCap = 8192;
// Dimensions per shared-memory stage of the score kernels. Tensor-core partial sums are
// accumulated per stage in a fresh fragment and added to the running sum in fp32 with
// round-to-nearest: tensor cores truncate when they accumulate, and a long chain of
// truncations biases the result (up to ~4e-6 relative at D = 2048 in a model of that
// rounding, against ~4e-7 with per-stage sums; see tests/test_cuda_logic.py).
constexpr int kStageDims = 64;

// Reference storage types: the CPU kernel's csi::Storage.
using ::csi::Storage;

CSI_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

CSI_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Order-preserving map float -> uint32 (for non-NaN input): negative floats have their bits
// inverted, non-negative ones get the sign bit set. -0.0 is folded onto +0.0 first, so that
// two scores that compare equal as floats also have equal keys.
CSI_HD uint32_t ordered_from_float(float s) {
  if (s == 0.0f) s = 0.0f;
  const uint32_t u = float_bits(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

CSI_HD float float_from_ordered(uint32_t o) {
  return bits_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

CSI_HD uint64_t encode_key(float score, uint32_t index) {
  return (uint64_t(ordered_from_float(score)) << 32) | uint64_t(kIndexMask - index);
}

CSI_HD float key_score(uint64_t key) { return float_from_ordered(uint32_t(key >> 32)); }

CSI_HD uint32_t key_index(uint64_t key) { return kIndexMask - uint32_t(key & 0xFFFFFFFFu); }

// Exponent e of the power of two applied to a query before the fp16 split: for a finite
// max_abs > 0, max_abs * 2^e lies in [2^14, 2^15). Clamped to [-126, 126] so 2^-e is a
// normal float (a query whose largest value is below 2^-112 loses some low bits; its scores
// are then below float32's normal range anyway). Non-finite or zero input gives 0.
CSI_HD int query_exponent(float max_abs) {
  if (!(max_abs > 0.0f) || !(max_abs <= 3.4028234663852886e38f)) return 0;
  // Binary exponent E with max_abs in [2^(E-1), 2^E), read from the bits (no frexp on device).
  const uint32_t u = float_bits(max_abs);
  int biased = int((u >> 23) & 0xFFu);
  int E;
  if (biased == 0) {  // subnormal: max_abs = m * 2^-149, m < 2^23
    uint32_t m = u & 0x7FFFFFu;
    int msb = 0;
    while (m >> (msb + 1)) ++msb;
    E = msb - 149 + 1;
  } else {
    E = biased - 127 + 1;
  }
  int e = 15 - E;
  if (e > 126) e = 126;
  if (e < -126) e = -126;
  return e;
}

// 2^p as a float for p in [-126, 127] (exact, no libm).
CSI_HD float pow2f(int p) { return bits_float(uint32_t(p + 127) << 23); }

}  // namespace topk
}  // namespace csi
