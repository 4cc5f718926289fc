// Top-k driver: splits the problem into (query slab x reference slab) tasks, runs the fused
// score + threshold-filter kernels on the thread pool, then merges per query.
//
// Selection keeps, per query and task, a buffer of candidates that beat a threshold. When
// the buffer fills, the threshold is raised and the candidates at or below it are dropped
// (see compact()), so steady-state cost is one SIMD compare per score. A task visits its
// references in increasing index order, which makes "score > threshold" exact under the
// (score desc, index asc) order: a later reference with an equal score always ranks lower.
#include "cpu/topk_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/thread_pool.h"

namespace csi {
namespace {

constexpr int64_t kStreamBlockRows = 1024;        // references per streaming step
constexpr int64_t kPackedBlockBytes = 256 * 1024;  // packed fp32 reference block (fits L2)
constexpr int64_t kMinSlabRows = 8192;             // below this, splitting refs across threads costs more than it saves
constexpr int64_t kQueriesPerGemmTask = 48;        // queries per task before refs are split instead

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct QueryState {
  int64_t count = 0;
  float thr = -std::numeric_limits<float>::infinity();
};

// Candidate buffers of one task: `nq` queries x `cap` slots.
struct TaskBuffers {
  Candidate* slots;  // [nq * cap]
  QueryState* state;  // [nq]
  int64_t cap;
};

// Reusable memory for selecting the best k of a candidate buffer.
struct SelectScratch {
  std::vector<float> scores;
  std::vector<float> sample;
  std::vector<Candidate> ties;
};

constexpr int64_t kSampledCompactionMinK = 128;  // below this an exact selection is as cheap
constexpr int64_t kCompactionSample = 256;

// Moves the best k of buf[0, n) (n > k) to the front, in no particular order, and returns the
// k-th best score. The k-th score is found on a float copy (cheaper than selecting 16-byte
// records with a two-key comparison); records scoring above it are then compacted in place and
// the remaining places go to the lowest indices among those scoring exactly it.
float keep_best(Candidate* buf, int64_t n, int64_t k, SelectScratch& s) {
  s.scores.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) s.scores[size_t(i)] = buf[i].score;
  std::nth_element(s.scores.begin(), s.scores.begin() + (k - 1), s.scores.end(), std::greater<float>());
  const float kth = s.scores[size_t(k - 1)];
  s.ties.clear();
  int64_t out = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (buf[i].score > kth)
      buf[out++] = buf[i];
    else if (buf[i].score == kth)
      s.ties.push_back(buf[i]);
  }
  const int64_t need = k - out;  // >= 1: the k-th score itself is among the ties
  std::partial_sort(s.ties.begin(), s.ties.begin() + need, s.ties.end(),
                    [](const Candidate& a, const Candidate& b) { return a.index < b.index; });
  std::copy(s.ties.begin(), s.ties.begin() + need, buf + out);
  return kth;
}

// Raises a full buffer's threshold and drops the candidates at or below it, keeping at most
// `max_keep` (>= k) of them.
//
// Any threshold t with at least k candidates strictly above it is exact: each dropped candidate
// (score <= t) and each later reference scoring <= t has k better ones. For large k, t is taken
// from a sample of the scores so that about 1.25 k survive, which costs a few branch-free passes
// instead of an exact selection (the dominant cost of selective queries, e.g. k = 1000 of 1e5).
// The exact selection (exactly k kept) remains for small k and for samples that miss.
void compact(Candidate* buf, QueryState& st, int64_t k, int64_t max_keep, SelectScratch& s) {
  const int64_t n = st.count;
  if (n <= k) return;
  if (k >= kSampledCompactionMinK && max_keep > k) {
    s.scores.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) s.scores[size_t(i)] = buf[i].score;
    const int64_t m = std::min(n, kCompactionSample);
    s.sample.resize(size_t(m));
    for (int64_t i = 0; i < m; ++i) s.sample[size_t(i)] = s.scores[size_t(i * n / m)];
    for (const double keep : {1.25, 1.6}) {
      const int64_t rank = std::min(m - 1, int64_t(double(m) * keep * double(k) / double(n)));
      std::nth_element(s.sample.begin(), s.sample.begin() + rank, s.sample.end(), std::greater<float>());
      const float t = s.sample[size_t(rank)];
      int64_t above = 0;
      for (int64_t i = 0; i < n; ++i) above += s.scores[size_t(i)] > t;
      if (above < k || above > max_keep) continue;  // too few kept, or too many for the room
      int64_t out = 0;
      for (int64_t i = 0; i < n; ++i) {  // branch-free stable compaction
        buf[out] = buf[i];
        out += s.scores[size_t(i)] > t;
      }
      st.thr = t;
      st.count = out;
      return;
    }
  }
  st.thr = keep_best(buf, n, k, s);
  st.count = k;
}

// Filters one row of scores into a query's buffer, compacting first if the row might not fit.
// The plan guarantees cap >= k + len whenever a compaction can happen (cap = min(4k, slab) +
// block); the check below turns any violation into an exception, never an overflow.
void offer(const cpu::KernelTable& kt, const float* scores, int64_t len, int64_t base, Candidate* buf,
           QueryState& st, int64_t cap, int64_t k, SelectScratch& scratch, int* nonfinite) {
  if (st.count + len > cap) compact(buf, st, k, std::min(cap - len, (st.count + k) / 2), scratch);
  if (st.count + len > cap) throw std::logic_error("top-k: candidate buffer too small (internal error)");
  st.count += kt.filter(scores, len, st.thr, base, buf + st.count, nonfinite);
}

struct Plan {
  bool stream;
  int64_t block;       // references per block
  int64_t q_chunk;     // queries per pass
  int64_t q_slabs;     // query slabs per pass
  int64_t r_slabs;     // reference slabs
  int64_t cap;         // candidate slots per (task, query)
};

Plan make_plan(const TopkProblem& p, const TopkOptions& o, const cpu::KernelTable& kt) {
  Plan plan{};
  const int64_t threads = std::max(1, o.threads);
  plan.stream = p.nq <= cpu::kMaxStreamQueries;
  if (plan.stream) {
    plan.block = kStreamBlockRows;
  } else {
    int64_t b = kPackedBlockBytes / (4 * p.d);
    b = std::max<int64_t>(kt.nr, b / kt.nr * kt.nr);
    plan.block = std::min<int64_t>(b, 2048);
  }
  auto slabs_for = [&](int64_t q_chunk, int64_t* q_slabs, int64_t* r_slabs) {
    *q_slabs = plan.stream ? 1 : std::clamp<int64_t>(q_chunk / kQueriesPerGemmTask, 1, threads);
    const int64_t max_r = std::max<int64_t>(1, p.n / kMinSlabRows);
    *r_slabs = std::clamp<int64_t>(ceil_div(threads, *q_slabs), 1, max_r);
  };
  auto cap_for = [&](int64_t r_slabs) {
    const int64_t slab_rows = ceil_div(p.n, r_slabs);
    return std::min(4 * p.k, slab_rows) + plan.block;
  };
  int64_t qs, rs;
  slabs_for(p.nq, &qs, &rs);
  const int64_t per_query = rs * cap_for(rs) * int64_t(sizeof(Candidate));
  int64_t q_chunk = std::max<int64_t>(1, o.scratch_bytes / std::max<int64_t>(1, per_query));
  if (!plan.stream) q_chunk = std::max<int64_t>(kt.qr, q_chunk / kt.qr * kt.qr);
  plan.q_chunk = std::min(q_chunk, p.nq);
  slabs_for(plan.q_chunk, &plan.q_slabs, &plan.r_slabs);
  plan.cap = cap_for(plan.r_slabs);
  return plan;
}

// Scans refs [r0, r1) for queries [q0, q1) of the current chunk (indices relative to it).
void run_stream_task(const TopkProblem& p, const cpu::KernelTable& kt, const Plan& plan, const float* chunk_q,
                     int64_t nq, int64_t r0, int64_t r1, TaskBuffers tb, int* nonfinite) {
  const int64_t W = kt.vector_width;
  const int64_t dq = ceil_div(p.d, W) * W;
  const int nq_pad = nq <= 1 ? 1 : (nq <= 2 ? 2 : (nq <= 4 ? 4 : 8));
  std::vector<float> qpad(size_t(nq_pad * dq), 0.0f);
  for (int64_t q = 0; q < nq; ++q) std::copy(chunk_q + q * p.d, chunk_q + (q + 1) * p.d, qpad.data() + q * dq);
  std::vector<float> scores(size_t(nq_pad * plan.block));
  SelectScratch scratch;
  const char* refs = static_cast<const char*>(p.refs);
  const int64_t row_bytes = p.d * storage_bytes(p.storage);
  for (int64_t b0 = r0; b0 < r1; b0 += plan.block) {
    const int64_t nb = std::min(plan.block, r1 - b0);
    kt.stream_scores(qpad.data(), nq_pad, dq, p.d, refs + b0 * row_bytes, p.storage,
                     p.scales ? p.scales + b0 : nullptr, nb, p.l2, scores.data(), plan.block);
    for (int64_t q = 0; q < nq; ++q)
      offer(kt, scores.data() + q * plan.block, nb, b0, tb.slots + q * tb.cap, tb.state[q], tb.cap, p.k,
            scratch, nonfinite);
  }
}

void run_gemm_task(const TopkProblem& p, const cpu::KernelTable& kt, const Plan& plan, const float* packed_q,
                   int64_t q0, int64_t q1, int64_t r0, int64_t r1, TaskBuffers tb, int* nonfinite) {
  const int64_t nr = kt.nr, qr = kt.qr;
  const int64_t block_pad = ceil_div(plan.block, nr) * nr;
  std::vector<float> rp(static_cast<size_t>(block_pad * p.d));
  std::vector<float> norms(static_cast<size_t>(block_pad));
  std::vector<float> scores(static_cast<size_t>(qr * block_pad));
  SelectScratch scratch;
  const char* refs = static_cast<const char*>(p.refs);
  const int64_t row_bytes = p.d * storage_bytes(p.storage);
  for (int64_t b0 = r0; b0 < r1; b0 += plan.block) {
    const int64_t nb = std::min(plan.block, r1 - b0);
    const int64_t panels = ceil_div(nb, nr);
    kt.pack_refs(refs + b0 * row_bytes, p.storage, p.scales ? p.scales + b0 : nullptr, nb, p.d, p.l2, rp.data(),
                 norms.data());
    // The next block's raw bytes, prefetched in equal parts while each query tile computes.
    const int64_t next_rows = std::max<int64_t>(0, std::min(plan.block, r1 - b0 - nb));
    const char* next = refs + (b0 + nb) * row_bytes;
    const int64_t next_bytes = next_rows * row_bytes;
    const int64_t tiles = ceil_div(q1 - q0, qr);
    for (int64_t t0 = q0; t0 < q1; t0 += qr) {
      const int64_t t = (t0 - q0) / qr;
      const int64_t pf0 = next_bytes * t / tiles, pf1 = next_bytes * (t + 1) / tiles;
      // Slabs end on tile boundaries, so only the chunk's last tile can be short.
      const int rows = int(std::min(qr, ceil_div(q1 - t0, kt.qr_step) * kt.qr_step));
      kt.gemm_scores(packed_q + t0 * p.d, rows, rp.data(), panels, p.d, p.l2 ? norms.data() : nullptr,
                     scores.data(), panels * nr, next + pf0, pf1 - pf0);
      for (int64_t i = 0; i < qr && t0 + i < q1; ++i) {
        const int64_t q = t0 + i - q0;
        offer(kt, scores.data() + i * panels * nr, nb, b0, tb.slots + q * tb.cap, tb.state[q], tb.cap, p.k,
              scratch, nonfinite);
      }
    }
  }
}

void check_problem(const TopkProblem& p) {
  if (p.nq < 0) throw std::invalid_argument("number of queries must be >= 0");
  if (p.d < 1) throw std::invalid_argument("vector dimension must be >= 1");
  if (p.n < 1) throw std::invalid_argument("the reference set is empty");
  if (p.k < 1) throw std::invalid_argument("k must be >= 1 (got " + std::to_string(p.k) + ")");
  if (p.k > p.n)
    throw std::invalid_argument("k = " + std::to_string(p.k) + " exceeds the number of references (" +
                                std::to_string(p.n) + ")");
  if (p.k > kCpuMaxK)
    throw std::invalid_argument("k = " + std::to_string(p.k) + " exceeds the CPU limit of " +
                                std::to_string(kCpuMaxK));
  if (p.nq > 0 && (p.queries == nullptr || p.refs == nullptr))
    throw std::invalid_argument("null query or reference pointer");
  if ((p.storage == Storage::kI8) != (p.scales != nullptr))
    throw std::invalid_argument("per-row scales are required for int8 references and only for them");
}

}  // namespace

void topk_cpu(const TopkProblem& p, const TopkOptions& o, float* out_scores, int64_t* out_index) {
  check_problem(p);
  if (p.nq == 0) return;
  const cpu::KernelTable& kt = o.kernels ? *o.kernels : *cpu::select_kernels("");
  const Plan plan = make_plan(p, o, kt);
  const int threads = std::max(1, o.threads);
  std::atomic<int> nonfinite{0};

  std::vector<Candidate> slots;
  std::vector<QueryState> states;
  std::vector<float> packed_q;

  for (int64_t c0 = 0; c0 < p.nq; c0 += plan.q_chunk) {
    const int64_t nq = std::min(plan.q_chunk, p.nq - c0);
    const float* chunk_q = p.queries + c0 * p.d;
    slots.resize(size_t(plan.r_slabs * nq * plan.cap));
    states.assign(size_t(plan.r_slabs * nq), QueryState{});
    if (!plan.stream) {
      packed_q.resize(size_t(ceil_div(nq, kt.qr) * kt.qr * p.d));
      kt.pack_queries(chunk_q, nq, p.d, packed_q.data());
    }
    // Query slabs start on tile boundaries so every task reads whole packed tiles.
    const int64_t tiles = ceil_div(nq, plan.stream ? 1 : kt.qr);
    const int64_t q_slabs = std::min(plan.q_slabs, tiles);
    const int64_t tile_rows = plan.stream ? 1 : kt.qr;

    parallel_for(q_slabs * plan.r_slabs, threads, [&](int64_t task) {
      const int64_t qs = task / plan.r_slabs, rs = task % plan.r_slabs;
      const int64_t q0 = std::min(nq, tiles * qs / q_slabs * tile_rows);
      const int64_t q1 = std::min(nq, tiles * (qs + 1) / q_slabs * tile_rows);
      const int64_t r0 = p.n * rs / plan.r_slabs, r1 = p.n * (rs + 1) / plan.r_slabs;
      if (q0 >= q1 || r0 >= r1) return;
      // Buffers are laid out [r_slab][query][cap] so each query's slabs are easy to merge.
      TaskBuffers tb{slots.data() + (rs * nq + q0) * plan.cap, states.data() + rs * nq + q0, plan.cap};
      int bad = 0;
      if (plan.stream)
        run_stream_task(p, kt, plan, chunk_q, nq, r0, r1, tb, &bad);
      else
        run_gemm_task(p, kt, plan, packed_q.data(), q0, q1, r0, r1, tb, &bad);
      if (bad) nonfinite.store(1);
    });

    if (nonfinite.load())
      throw NonFiniteError("a score is NaN or infinite: the queries or references contain NaN/Inf, "
                           "or their values are too large for float32 arithmetic");

    parallel_for(ceil_div(nq, 64), threads, [&](int64_t group) {
      std::vector<Candidate> merged;
      SelectScratch scratch;
      for (int64_t q = group * 64; q < std::min(nq, (group + 1) * 64); ++q) {
        merged.clear();
        for (int64_t rs = 0; rs < plan.r_slabs; ++rs) {
          const Candidate* buf = slots.data() + (rs * nq + q) * plan.cap;
          merged.insert(merged.end(), buf, buf + states[size_t(rs * nq + q)].count);
        }
        if (int64_t(merged.size()) < p.k)
          throw std::logic_error("top-k: fewer candidates than k after a full scan");
        if (int64_t(merged.size()) > p.k) keep_best(merged.data(), int64_t(merged.size()), p.k, scratch);
        auto kth = merged.begin() + (p.k - 1);
        std::sort(merged.begin(), kth + 1, better);
        const int64_t row = c0 + q;
        double qn = 0.0;
        if (p.l2)
          for (int64_t j = 0; j < p.d; ++j) qn += double(p.queries[row * p.d + j]) * p.queries[row * p.d + j];
        if (p.l2) {
          // Distances are |q|^2 - s rounded to float32: distinct s can round to one distance, so
          // re-sort by (distance, index) to keep "equal scores -> lower index first" visible.
          for (int64_t i = 0; i < p.k; ++i)
            merged[size_t(i)].score = -float(std::max(0.0, qn - double(merged[size_t(i)].score)));
          std::sort(merged.begin(), kth + 1, better);
        }
        for (int64_t i = 0; i < p.k; ++i) {
          const Candidate& c = merged[size_t(i)];
          out_scores[row * p.k + i] = p.l2 ? -c.score : c.score;
          out_index[row * p.k + i] = c.index;
        }
      }
    });
  }
}

}  // namespace csi
