// CPU emulation of the CUDA top-k: runs the orchestration of topk_plan.h (the same template
// the GPU path instantiates) with a scalar CPU backend that mirrors the device kernels'
// contract: same key encoding, same strict '>' filter, counters that keep counting past the
// capacity while the stores stop, same per-query segment layout and merge, and the same
// arithmetic model for scores (fp16 hi/lo query split, per-stage partial sums, unscaling,
// int8 row scales, l2 as 2<q,r> - |r|^2). Used by tests on machines without a GPU; slow.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "common/fp16.h"
#include "cuda/topk_common.h"
#include "cuda/topk_plan.h"

namespace csi {
namespace topk {

// Rounds a float to the nearest fp16 value (ties to even), returned as float; +-Inf past
// the fp16 range. Host-only reference of __float2half_rn.
inline float round_to_half(float f) {
  if (std::isnan(f)) return f;
  const double a = std::fabs(double(f));
  if (a >= 65520.0) return std::copysign(std::numeric_limits<float>::infinity(), f);
  double quantum;
  if (a < 6.103515625e-05) {  // 2^-14: fp16 subnormal range, spacing 2^-24
    quantum = 5.9604644775390625e-08;
  } else {
    int e = 0;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    quantum = std::ldexp(1.0, e - 11);
  }
  return float(std::nearbyint(double(f) / quantum) * quantum);
}

// The query split of topk_common.h: q * 2^e = hi + lo (both fp16 values), returns e.
inline int split_query(const float* q, int64_t d, float* hi, float* lo) {
  float m = 0.0f;
  bool finite = true;
  for (int64_t j = 0; j < d; ++j) {
    finite = finite && std::isfinite(q[j]);
    m = std::max(m, std::fabs(q[j]));
  }
  const int e = finite ? query_exponent(m) : 0;
  for (int64_t j = 0; j < d; ++j) {
    const float s = std::ldexp(q[j], e);
    hi[j] = round_to_half(s);
    lo[j] = round_to_half(s - hi[j]);
  }
  return e;
}

struct HostProblem {
  const float* queries = nullptr;  // [nq, d]
  int64_t nq = 0, d = 0;
  const void* refs = nullptr;  // [n, d]
  Storage type = Storage::kF32;
  const float* scales = nullptr;  // [n], int8 only
  int64_t n = 0, k = 0;
  bool l2 = false;
};

inline float emulated_ref_value(const HostProblem& p, int64_t r, int64_t j) {
  const int64_t i = r * p.d + j;
  switch (p.type) {
    case Storage::kF32:
      return static_cast<const float*>(p.refs)[i];
    case Storage::kF16:
      return half_to_float(static_cast<const uint16_t*>(p.refs)[i]);
    case Storage::kI8:
      return float(static_cast<const int8_t*>(p.refs)[i]);
  }
  return 0.0f;
}

// The device kernels' arithmetic for the score of reference r against one prepared query
// (hi/lo: the split of topk_common.h with qinv = 2^-e; fp32 references: hi = the query,
// qinv = 1): per stage of kStageDims dimensions a fresh fp32 partial sum, added to the
// running sum.
inline float emulated_score(const HostProblem& p, const float* hi, const float* lo, float qinv, int64_t r) {
  float acc = 0.0f, nrm = 0.0f;
  for (int64_t j0 = 0; j0 < p.d; j0 += kStageDims) {
    const int64_t j1 = std::min<int64_t>(p.d, j0 + kStageDims);
    float part = 0.0f, npart = 0.0f;
    for (int64_t j = j0; j < j1; ++j) {
      const float x = emulated_ref_value(p, r, j);
      if (p.type == Storage::kF32) {
        part = std::fma(hi[j], x, part);
      } else {
        part += hi[j] * x;  // both products are exact in fp32
        part += lo[j] * x;
      }
      npart = std::fma(x, x, npart);
    }
    acc += part;
    nrm += npart;
  }
  float dot = acc * qinv;
  float nn = nrm;
  if (p.type == Storage::kI8) {
    const float sc = p.scales[r];
    dot *= sc;
    nn = nrm * sc * sc;
  }
  return p.l2 ? 2.0f * dot - nn : dot;
}

class EmulatedBackend {
 public:
  EmulatedBackend(const HostProblem& p, const Plan& plan, float* out_scores, int64_t* out_index)
      : p_(p), plan_(plan), out_scores_(out_scores), out_index_(out_index) {}

  void begin_block(int64_t q0, int64_t nq) {
    q0_ = q0;
    nq_ = nq;
    const size_t slots = size_t(nq * plan_.stride);
    // Fresh buffers hold a recognisable junk pattern: reading an unwritten slot shows up.
    cur_.assign(slots, 0xDEADBEEFDEADBEEFull);
    other_.assign(slots, 0xDEADBEEFDEADBEEFull);
    thr_.assign(size_t(nq), -std::numeric_limits<float>::infinity());
    filled_.assign(size_t(nq), 0);
    counts_.assign(size_t(nq), 0);
    hi_.assign(size_t(nq * p_.d), 0.0f);
    lo_.assign(size_t(nq * p_.d), 0.0f);
    qinv_.assign(size_t(nq), 1.0f);
    for (int64_t q = 0; q < nq; ++q) {
      const float* src = p_.queries + (q0 + q) * p_.d;
      if (p_.type == Storage::kF32) {
        std::copy(src, src + p_.d, hi_.begin() + q * p_.d);
      } else {
        const int e = split_query(src, p_.d, hi_.data() + q * p_.d, lo_.data() + q * p_.d);
        qinv_[size_t(q)] = pow2f(-e);
      }
    }
  }

  // Host references are emulated as on the GPU: two staging buffers managed by SlabBuffers,
  // the next slab "uploaded" while this one is scored, and scores read from the buffer. A
  // wrong slot or a wrongly skipped upload therefore gives wrong results here too.
  void begin_slab(int64_t s0, int64_t s1, int64_t n0, int64_t n1) {
    if (s0 < 0 || s1 > p_.n || s0 >= s1 || n0 != s1 || n1 < n0)
      throw std::logic_error("emulation: bad slab range");
    s0_ = s0;
    s1_ = s1;
    ++slab_calls_;
    if (plan_.slab_rows >= p_.n) return;  // references "on the device": read in place
    cur_slot_ = slabs_.slot_of(s0);
    upload(s0, s1, cur_slot_);
    if (n1 > n0) upload(n0, n1, slabs_.slot_of(n0));
  }

  void end_slab() { s0_ = s1_ = -1; }

  void launch(int64_t c0, int64_t c1, const std::vector<uint8_t>* active) {
    if (c0 < s0_ || c1 > s1_ || c0 >= c1) throw std::logic_error("emulation: chunk outside the resident slab");
    std::fill(counts_.begin(), counts_.end(), 0u);
    for (int64_t q = 0; q < nq_; ++q) {
      if (active != nullptr && (*active)[size_t(q)] == 0) continue;
      const float thr = thr_[size_t(q)];
      uint64_t* dst = cur_.data() + q * plan_.stride + filled_[size_t(q)];
      for (int64_t r = c0; r < c1; ++r) {
        const float s = score(q, r);
        if (!std::isfinite(s)) nonfinite_ = true;
        if (s > thr) {
          const uint32_t pos = counts_[size_t(q)]++;
          if (pos < uint32_t(plan_.cap)) dst[pos] = encode_key(s, uint32_t(r));
        }
      }
    }
  }

  void read_counts(std::vector<uint32_t>& counts) {
    if (nonfinite_) throw NonFiniteError("a score is NaN or Inf");
    counts = counts_;
  }

  void merge(const std::vector<int32_t>& seg_len, const std::vector<int32_t>& filled) {
    for (int64_t q = 0; q < nq_; ++q) {
      const int64_t base = q * plan_.stride, len = seg_len[size_t(q)];
      if (len < 0 || len > plan_.stride) throw std::logic_error("emulation: bad segment length");
      std::copy(cur_.begin() + base, cur_.begin() + base + len, other_.begin() + base);
      std::sort(other_.begin() + base, other_.begin() + base + len, std::greater<uint64_t>());
    }
    std::swap(cur_, other_);
    for (int64_t q = 0; q < nq_; ++q) {
      filled_[size_t(q)] = filled[size_t(q)];
      thr_[size_t(q)] = filled[size_t(q)] == plan_.k ? key_score(cur_[size_t(q * plan_.stride + plan_.k - 1)])
                                                     : -std::numeric_limits<float>::infinity();
    }
  }

  void finish_block(int64_t q0, int64_t nq) {
    for (int64_t q = 0; q < nq; ++q) {
      double qn = 0.0;
      const float* qv = p_.queries + (q0 + q) * p_.d;
      for (int64_t j = 0; j < p_.d; ++j) qn += double(qv[j]) * qv[j];
      for (int64_t i = 0; i < p_.k; ++i) {
        const uint64_t key = cur_[size_t(q * plan_.stride + i)];
        const float s = key_score(key);
        out_scores_[(q0 + q) * p_.k + i] = p_.l2 ? float(std::max(0.0, qn - double(s))) : s;
        out_index_[(q0 + q) * p_.k + i] = int64_t(key_index(key));
      }
    }
  }

  int64_t slab_calls() const { return slab_calls_; }

 private:
  float score(int64_t q, int64_t r) const {
    if (plan_.slab_rows >= p_.n)
      return emulated_score(p_, hi_.data() + q * p_.d, lo_.data() + q * p_.d, qinv_[size_t(q)], r);
    HostProblem staged = p_;  // rows of the resident slab, from its staging buffer
    staged.refs = staging_[size_t(cur_slot_)].data();
    staged.scales = p_.scales != nullptr ? p_.scales + s0_ : nullptr;
    return emulated_score(staged, hi_.data() + q * p_.d, lo_.data() + q * p_.d, qinv_[size_t(q)], r - s0_);
  }

  void upload(int64_t r0, int64_t r1, int slot) {
    if (!slabs_.claim(slot, r0, r1)) return;
    const int64_t row_bytes = p_.d * storage_bytes(p_.type);
    auto& buf = staging_[size_t(slot)];
    buf.assign(size_t(plan_.slab_rows * row_bytes), 0xAB);  // stale bytes must never be read
    const auto* src = static_cast<const uint8_t*>(p_.refs) + r0 * row_bytes;
    std::copy(src, src + (r1 - r0) * row_bytes, buf.begin());
  }

  HostProblem p_;
  Plan plan_;
  float* out_scores_;
  int64_t* out_index_;
  int64_t q0_ = 0, nq_ = 0, s0_ = -1, s1_ = -1, slab_calls_ = 0;
  SlabBuffers slabs_{plan_.slab_rows};
  int cur_slot_ = 0;
  std::vector<uint8_t> staging_[2];
  bool nonfinite_ = false;
  std::vector<uint64_t> cur_, other_;
  std::vector<float> thr_, hi_, lo_, qinv_;
  std::vector<int32_t> filled_;
  std::vector<uint32_t> counts_;
};

// Runs the whole top-k on the CPU through the CUDA orchestration. out_*: [nq, k].
inline RunStats emulate_topk(const HostProblem& p, const Plan& plan, float* out_scores, int64_t* out_index) {
  EmulatedBackend be(p, plan, out_scores, out_index);
  return run_topk(be, plan);
}

}  // namespace topk
}  // namespace csi
