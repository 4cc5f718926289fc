// Host-side orchestration of the CUDA top-k: query blocking, chunk schedule, overflow
// handling and the merge bookkeeping. Plain C++ with no CUDA in it, so that the very code
// the GPU path runs is also run (with a CPU scoring backend, topk_emulate.h) by the tests
// on machines without a GPU.
//
// Algorithm (per block of queries):
//
//   state per query: its current top-k as sorted keys (see topk_common.h) and a threshold
//   thr = score of the k-th entry (-inf while fewer than k entries are known).
//
//   The references are visited in chunks [c0, c1) in increasing index order. For a chunk,
//   one fused kernel computes every score of (query, ref) and appends the key of each score
//   > thr[query] to the query's candidate region (capacity `cap`; a counter records how many
//   wanted in, even beyond cap). Then, for each query, previous top-k + candidates are sorted
//   (one segmented sort of 64-bit keys) and the first k kept; thr becomes the k-th score.
//
//   Exactness: a reference not appended has score <= thr, and since every later chunk holds
//   only larger indices, such a reference ranks below the current k-th entry under the
//   (score desc, index asc) order and can never enter the top-k. Equal scores are therefore
//   handled exactly by the strict '>' test.
//
//   Capacity: the first chunk is at most `cap` rows (thr = -inf admits everything). Later
//   chunks grow (ChunkSchedule) so that, for references in random order, about cap/4
//   candidates arrive per chunk. If a query's counter exceeds cap anyway (adversarial order,
//   e.g. scores increasing with index), that query's candidates for the chunk are dropped and
//   the chunk is redone for the overflowing queries only, in two halves, recursively. A piece
//   of at most cap rows cannot overflow, so this terminates and stays exact; the schedule
//   then shrinks the following chunks to the size that worked.
//
//   Host references are streamed in slabs (double-buffered on the device); chunks never cross
//   a slab boundary.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/topk_common.h"

namespace csi {
namespace topk {

// A score is NaN or +-Inf (non-finite input, or values too large for float32 arithmetic).
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Candidate slots per query for one chunk.
inline int64_t default_capacity(int64_t k, int64_t n) { return std::min(std::max(4 * k, kMinCap), n); }

// Device bytes one query of a block needs (everything that scales with the block size).
//   two key buffers of `stride` slots (sorted top-k + candidates; ping-pong of the merge sort)
//   + the sort's own scratch (about one more buffer), output scores/indices, the query in
//   fp16 hi/lo (or fp32) padded to a multiple of 64 dims, and small per-query arrays.
inline int64_t bytes_per_query(int64_t k, int64_t cap, int64_t d) {
  const int64_t stride = k + cap;
  return 3 * stride * 8 + k * (4 + 8) + round_up(d, 64) * 4 + d * 4 + 64;
}

struct Plan {
  int64_t nq = 0, n = 0, d = 0, k = 0;
  int64_t cap = 0;        // candidate slots per query and chunk
  int64_t stride = 0;     // key slots per query segment: k (top-k) + cap (candidates)
  int64_t q_block = 0;    // queries per block
  int64_t slab_rows = 0;  // rows per resident slab (n when the references are on the device)
  int64_t max_chunk = 0;  // rows per chunk at most
};

// Chooses block and slab sizes.
//   budget_bytes: device memory the per-query state of one block may use.
//   slab_rows:    0 = references are on the device (one slab), else the host staging size.
//   cap:          0 = default_capacity(k, n); tests pass small values to force overflows.
//   max_chunk:    0 = no limit beyond the slab.
inline Plan make_plan(int64_t nq, int64_t n, int64_t d, int64_t k, int64_t budget_bytes, int64_t slab_rows = 0,
                      int64_t cap = 0, int64_t max_chunk = 0) {
  if (nq < 1) throw std::invalid_argument("top-k plan: need at least one query");
  if (d < 1) throw std::invalid_argument("top-k plan: vector dimension must be >= 1");
  if (n < 1) throw std::invalid_argument("top-k plan: the reference set is empty");
  if (n > kMaxRefs)
    throw std::invalid_argument("the CUDA top-k supports at most " + std::to_string(kMaxRefs) + " references (got " +
                                std::to_string(n) + ")");
  if (k < 1 || k > n)
    throw std::invalid_argument("k = " + std::to_string(k) + " must be in [1, " + std::to_string(n) + "]");
  if (k > kMaxK)
    throw std::invalid_argument("k = " + std::to_string(k) + " exceeds the CUDA limit of " + std::to_string(kMaxK));
  Plan p;
  p.nq = nq;
  p.n = n;
  p.d = d;
  p.k = k;
  p.cap = cap > 0 ? std::min(std::max(cap, k), n) : default_capacity(k, n);
  p.stride = k + p.cap;
  int64_t qb = std::max<int64_t>(1, budget_bytes / bytes_per_query(k, p.cap, d));
  // Segment offsets are int32 in the merge sort.
  qb = std::min(qb, int64_t(0x7FFFFFFF) / p.stride);
  if (qb >= 256) qb = qb / 128 * 128;  // whole large query tiles
  p.q_block = std::max<int64_t>(1, std::min(qb, nq));
  // A slab holds at least one full-capacity chunk, so the first chunk is never clipped below k.
  p.slab_rows = slab_rows > 0 ? std::min(n, std::max(slab_rows, p.cap)) : n;
  p.max_chunk = std::min(p.slab_rows, max_chunk > 0 ? std::max(max_chunk, p.cap) : p.slab_rows);
  return p;
}

// Length of the next chunk (see the header comment).
class ChunkSchedule {
 public:
  ChunkSchedule(int64_t k, int64_t cap, int64_t max_chunk) : k_(k), cap_(cap), max_chunk_(max_chunk) {
    next_ = std::min(cap_, max_chunk_);
  }

  // The next chunk's length, at most `limit` (rows left before the slab ends).
  int64_t take(int64_t limit) const { return std::max<int64_t>(1, std::min(next_, limit)); }

  // Records a finished chunk of `len` rows.
  //   thresholds_before: every query had k entries (a finite threshold) when it started
  //   thresholds_after:  every query has k entries now
  //   max_count:         largest candidate count of a query that did not overflow
  //   overflow:          some query overflowed and the chunk was split
  //   ok_piece:          smallest piece length the split went down to (when overflow)
  void done(int64_t len, bool thresholds_before, bool thresholds_after, int64_t max_count, bool overflow,
            int64_t ok_piece) {
    seen_ += len;
    if (!thresholds_after) {
      next_ = std::min(cap_, max_chunk_);  // thr = -inf somewhere: only cap rows are safe
      return;
    }
    // For references in random order, a chunk of L rows after `seen` rows brings about
    // k * L / seen candidates per query: aim at cap / 4.
    int64_t g = mul_div(seen_, cap_, 4 * k_);
    // Observed density (no tightening assumed): aim at cap / 2 at the same rate.
    if (thresholds_before && max_count > 0) g = std::min(g, mul_div(len, cap_ / 2, max_count));
    if (overflow) g = std::min(g, ok_piece);
    next_ = std::min(std::max(g, cap_), max_chunk_);
  }

  int64_t seen() const { return seen_; }
  int64_t next() const { return next_; }

 private:
  // a * b / c without overflow for the ranges used here (saturates at 2^62).
  static int64_t mul_div(int64_t a, int64_t b, int64_t c) {
    const long double r = static_cast<long double>(a) * static_cast<long double>(b) / static_cast<long double>(c);
    return r > 4.6e18L ? (int64_t(1) << 62) : int64_t(r);
  }

  int64_t k_, cap_, max_chunk_;
  int64_t seen_ = 0;
  int64_t next_ = 0;
};

// Which of the two device staging buffers holds which slab of host references. Slab i (rows
// [i * slab_rows, ...)) always goes to buffer i % 2, so the slab being scored and the next one
// (uploaded meanwhile) never share a buffer; an upload is skipped when the buffer still holds
// exactly those rows (a prefetched slab, or the last slabs of the previous query block).
class SlabBuffers {
 public:
  explicit SlabBuffers(int64_t slab_rows) : slab_rows_(slab_rows) {}

  int slot_of(int64_t s0) const { return int((s0 / slab_rows_) % 2); }

  // True when rows [r0, r1) must be uploaded into `slot`; records that the slot holds them.
  bool claim(int slot, int64_t r0, int64_t r1) {
    if (rows_[slot][0] == r0 && rows_[slot][1] == r1) return false;
    rows_[slot][0] = r0;
    rows_[slot][1] = r1;
    return true;
  }

 private:
  int64_t slab_rows_;
  int64_t rows_[2][2] = {{-1, -1}, {-1, -1}};
};

// Counters reported by a run (tests check that the overflow path was taken; the CUDA tests
// read them through _cuda._topk_with_stats).
struct RunStats {
  int64_t blocks = 0;
  int64_t slabs = 0;
  int64_t chunks = 0;        // top-level chunks
  int64_t launches = 0;      // score + filter passes (chunks + redone pieces)
  int64_t merges = 0;        // segmented sorts
  int64_t overflows = 0;     // (query, piece) pairs that overflowed
  int64_t rows_scored = 0;   // reference rows read by score passes (>= n per block)
  int64_t max_depth = 0;     // deepest overflow split
  Plan plan;                 // the plan the run followed
};

// The backend interface the orchestration drives (the GPU implementation lives in
// topk_cuda.cu, the CPU emulation in topk_emulate.h):
//
//   void begin_block(int64_t q0, int64_t nq);       queries [q0, q0+nq): reset top-k state
//   void begin_slab(int64_t s0, int64_t s1, int64_t n0, int64_t n1);
//        rows [s0, s1) must be addressable by launch(); [n0, n1) is the next slab (n0 == n1:
//        none), which the backend may start uploading
//   void launch(int64_t c0, int64_t c1, const std::vector<uint8_t>* active);
//        score + filter rows [c0, c1) for the block's queries (active == nullptr: all, else
//        only queries q with (*active)[q] != 0); candidate counters start at 0
//   void read_counts(std::vector<uint32_t>& counts);
//        waits for the launch; counts[q] = candidates that wanted in (may exceed cap); throws
//        NonFiniteError if a score was NaN/Inf
//   void merge(const std::vector<int32_t>& seg_len, const std::vector<int32_t>& filled);
//        per query: sort keys [q*stride, q*stride + seg_len[q]) descending, keep the first
//        filled[q] = min(k, seg_len[q]) as the new top-k, update the threshold
//   void end_slab();
//   void finish_block(int64_t q0, int64_t nq);      writes the block's results
//
// Candidates of query q are appended at q*stride + filled[q] (after its current top-k).
template <class Backend>
RunStats run_topk(Backend& be, const Plan& plan) {
  RunStats st;
  st.plan = plan;
  const int64_t k = plan.k, cap = plan.cap;
  std::vector<int32_t> filled, seg_len;
  std::vector<uint32_t> counts;
  std::vector<uint8_t> mask;

  for (int64_t q0 = 0; q0 < plan.nq; q0 += plan.q_block) {
    const int64_t nq = std::min(plan.q_block, plan.nq - q0);
    ++st.blocks;
    be.begin_block(q0, nq);
    filled.assign(size_t(nq), 0);
    seg_len.assign(size_t(nq), 0);
    counts.assign(size_t(nq), 0);
    ChunkSchedule sched(k, cap, plan.max_chunk);

    auto all_full = [&] {
      for (int64_t q = 0; q < nq; ++q)
        if (filled[size_t(q)] < k) return false;
      return true;
    };

    // Per top-level chunk: largest non-overflowing count, smallest successful piece.
    int64_t max_count = 0, ok_piece = 0;
    bool overflow = false;

    // Scores rows [c0, c1) for the queries in `active` (nullptr = all), merges those that
    // fit, recurses on the two halves for those that overflowed.
    auto process = [&](auto&& self, int64_t c0, int64_t c1, const std::vector<uint8_t>* active,
                       int64_t depth) -> void {
      ++st.launches;
      st.rows_scored += c1 - c0;
      st.max_depth = std::max(st.max_depth, depth);
      be.launch(c0, c1, active);
      be.read_counts(counts);
      std::vector<uint8_t> over;
      bool any_over = false, any_new = false;
      for (int64_t q = 0; q < nq; ++q) {
        const bool on = active == nullptr || (*active)[size_t(q)] != 0;
        const int64_t c = on ? int64_t(counts[size_t(q)]) : 0;
        if (c > cap) {
          if (over.empty()) over.assign(size_t(nq), 0);
          over[size_t(q)] = 1;
          any_over = true;
          ++st.overflows;
          seg_len[size_t(q)] = filled[size_t(q)];
        } else {
          if (c > 0) any_new = true;
          max_count = std::max(max_count, c);
          seg_len[size_t(q)] = filled[size_t(q)] + int32_t(c);
        }
      }
      if (any_new) {
        for (int64_t q = 0; q < nq; ++q) filled[size_t(q)] = int32_t(std::min<int64_t>(k, seg_len[size_t(q)]));
        be.merge(seg_len, filled);
        ++st.merges;
      }
      if (!any_over) {
        if (overflow) ok_piece = std::min(ok_piece, c1 - c0);
        return;
      }
      if (c1 - c0 <= cap) throw std::logic_error("top-k: a piece of at most cap rows overflowed");
      overflow = true;
      if (ok_piece == 0) ok_piece = c1 - c0;
      const int64_t mid = c0 + (c1 - c0) / 2;
      ok_piece = std::min(ok_piece, mid - c0);
      self(self, c0, mid, &over, depth + 1);
      self(self, mid, c1, &over, depth + 1);
    };

    for (int64_t s0 = 0; s0 < plan.n; s0 += plan.slab_rows) {
      const int64_t s1 = std::min(plan.n, s0 + plan.slab_rows);
      const int64_t n1 = std::min(plan.n, s1 + plan.slab_rows);
      ++st.slabs;
      be.begin_slab(s0, s1, s1, n1);
      for (int64_t c0 = s0; c0 < s1;) {
        const int64_t len = sched.take(s1 - c0);
        const bool before = all_full();
        max_count = 0;
        ok_piece = 0;
        overflow = false;
        ++st.chunks;
        process(process, c0, c0 + len, nullptr, 0);
        sched.done(len, before, all_full(), max_count, overflow, ok_piece);
        c0 += len;
      }
      be.end_slab();
    }
    if (!all_full()) throw std::logic_error("top-k: fewer than k candidates after a full scan");
    be.finish_block(q0, nq);
  }
  return st;
}

}  // namespace topk
}  // namespace csi
