// Stand-alone property tests of the CUDA top-k orchestration (csrc/cuda/topk_plan.h), its key
// encoding (topk_common.h) and the CPU emulation backend (topk_emulate.h). Plain C++: built
// with g++ by tests/test_cuda_logic.py, so it runs on machines without CUDA.
//
// The emulation is checked against a brute-force ranking computed with the *same* scores
// (score_of below mirrors the backend's arithmetic), so every comparison is exact: this tests
// selection, chunking, overflow splitting, blocking and slabbing, not floating point.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/topk_common.h"
#include "cuda/topk_emulate.h"
#include "cuda/topk_plan.h"

using namespace csi::topk;

static int g_failures = 0;
static int64_t g_overflows = 0, g_max_depth = 0, g_blocks = 0, g_slabs = 0;

#define EXPECT(cond, ...)                                 \
  do {                                                    \
    if (!(cond)) {                                        \
      ++g_failures;                                       \
      std::fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                  \
      std::fprintf(stderr, "\n");                         \
      if (g_failures > 20) std::exit(1);                  \
    }                                                     \
  } while (0)

// ---- keys ------------------------------------------------------------------------------

static void test_keys() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 1e-45f, -1e-45f, 1e-38f, -1e-38f, 3.4e38f, -3.4e38f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          0.5f, -0.5f, 2.0f, 123.25f, -7.75f};
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000; ++i) {
    float f = bits_float(bits(rng));
    if (!std::isnan(f)) v.push_back(f);
  }
  for (float a : v) {
    EXPECT(float_from_ordered(ordered_from_float(a)) == a, "roundtrip %g", double(a));
    for (uint32_t idx : {0u, 1u, 12345u, 0x7FFFFFFEu}) {
      const uint64_t key = encode_key(a, idx);
      EXPECT(key_index(key) == idx, "index roundtrip");
      EXPECT(key_score(key) == a, "score roundtrip %g", double(a));
    }
  }
  // -0.0 and +0.0 share a key.
  EXPECT(encode_key(-0.0f, 7) == encode_key(0.0f, 7), "signed zeros");
  // Descending key order == (score desc, index asc).
  for (size_t i = 0; i < 300; ++i)
    for (size_t j = 0; j < 300; ++j) {
      const float a = v[i], b = v[j];
      const uint32_t ia = uint32_t(i * 7), ib = uint32_t(j * 7 + 3);
      const bool better = a > b || (a == b && ia < ib);
      EXPECT((encode_key(a, ia) > encode_key(b, ib)) == better, "order %g/%u vs %g/%u", double(a), ia, double(b), ib);
    }
}

static void test_exponent() {
  const float vals[] = {1.0f, 0.75f, 3.0f, 16384.0f, 32767.0f, 32768.0f, 1e-3f, 1e-20f, 3e38f, 1e-40f, 1e-45f, 6e4f};
  for (float m : vals) {
    const int e = query_exponent(m);
    const double s = std::ldexp(double(m), e);
    if (m >= 1e-30f) {
      EXPECT(s >= 16384.0 && s < 32768.0, "max %g scaled by 2^%d = %g", double(m), e, s);
    } else {
      EXPECT(e == 126, "tiny max %g -> e = %d", double(m), e);
    }
    EXPECT(e >= -126 && e <= 126, "range");
    EXPECT(pow2f(-e) == float(std::ldexp(1.0, -e)), "pow2f");
  }
  EXPECT(query_exponent(0.0f) == 0, "zero");
  EXPECT(query_exponent(std::numeric_limits<float>::infinity()) == 0, "inf");
  EXPECT(query_exponent(std::nanf("")) == 0, "nan");
}

static void test_half_rounding() {
  // Values exactly between two fp16 neighbours round to the even one.
  EXPECT(round_to_half(1.0f + 1.0f / 2048.0f) == 1.0f, "tie to even (down)");
  EXPECT(round_to_half(1.0f + 3.0f / 2048.0f) == 1.0f + 2.0f / 1024.0f, "tie to even (up)");
  EXPECT(round_to_half(65504.0f) == 65504.0f, "max");
  EXPECT(std::isinf(round_to_half(65520.0f)), "overflow");
  EXPECT(round_to_half(65519.0f) == 65504.0f, "below overflow");
  EXPECT(round_to_half(std::ldexp(1.0f, -24)) == std::ldexp(1.0f, -24), "smallest subnormal");
  EXPECT(round_to_half(std::ldexp(1.0f, -25)) == 0.0f, "half of smallest subnormal ties to 0");
  EXPECT(round_to_half(std::ldexp(3.0f, -26)) == std::ldexp(1.0f, -24), "above half rounds up");
}

// ---- schedule and plan -----------------------------------------------------------------

static void test_schedule() {
  for (int64_t k : {1, 10, 100, 4096}) {
    const int64_t cap = std::max<int64_t>(4 * k, 8192);
    ChunkSchedule s(k, cap, int64_t(1) << 26);
    EXPECT(s.take(int64_t(1) << 40) == cap, "first chunk = cap");
    s.done(cap, false, true, cap, false, 0);
    int64_t prev = cap;
    for (int i = 0; i < 30; ++i) {
      const int64_t len = s.take(int64_t(1) << 40);
      EXPECT(len >= cap && len <= (int64_t(1) << 26), "bounds %lld", (long long)len);
      EXPECT(len >= prev || len == (int64_t(1) << 26), "i.i.d. growth");
      prev = len;
      s.done(len, true, true, k, false, 0);
    }
    // An overflow shrinks the next chunk to the piece that worked (but never below cap).
    ChunkSchedule t(k, cap, int64_t(1) << 26);
    t.done(cap, false, true, cap, false, 0);
    const int64_t big = t.take(int64_t(1) << 40);
    t.done(big, true, true, cap / 2, true, cap);
    EXPECT(t.take(int64_t(1) << 40) == cap, "after overflow");
    // Without thresholds everywhere the next chunk stays at cap.
    ChunkSchedule u(k, cap, int64_t(1) << 26);
    u.done(cap, false, false, 0, false, 0);
    EXPECT(u.take(int64_t(1) << 40) == cap, "no thresholds");
    EXPECT(u.take(5) == 5, "limit");
  }
}

static void test_plan() {
  for (int64_t k : {1, 10, 1000, 4096, 65536}) {
    for (int64_t n : {int64_t(1), int64_t(100), int64_t(100000), int64_t(100000000)}) {
      if (k > n) continue;
      for (int64_t budget : {int64_t(1) << 20, int64_t(1) << 30, int64_t(8) << 30}) {
        const Plan p = make_plan(10000, n, 256, k, budget);
        EXPECT(p.cap >= k && p.cap <= n, "cap");
        EXPECT(p.stride == k + p.cap, "stride");
        EXPECT(p.q_block >= 1 && p.q_block <= 10000, "q_block");
        EXPECT(p.q_block == 1 || p.q_block * bytes_per_query(k, p.cap, 256) <= budget, "budget");
        EXPECT(p.q_block * p.stride <= 0x7FFFFFFF, "int32 offsets");
        EXPECT(p.slab_rows == n, "device refs: one slab");
        const Plan h = make_plan(10, n, 256, k, budget, 1000);
        EXPECT(h.slab_rows >= std::min(n, h.cap), "slab holds a full chunk");
        EXPECT(h.max_chunk <= h.slab_rows, "chunk within slab");
      }
    }
  }
  bool threw = false;
  try {
    make_plan(1, int64_t(1) << 31, 8, 1, 1 << 30);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  EXPECT(threw, "n >= 2^31 rejected");
  threw = false;
  try {
    make_plan(1, 100, 8, 101, 1 << 30);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  EXPECT(threw, "k > n rejected");
}

// ---- emulation against brute force -------------------------------------------------------

struct Case {
  int64_t nq, n, d, k;
  Storage type;
  bool l2;
  int order;  // 0 random, 1 ascending score of query 0 (adversarial), 2 descending, 3 many duplicates
  int64_t cap, slab_rows, max_chunk, budget;
};

// The scores the emulation computes (its scoring function, called directly).
static std::vector<float> all_scores(const HostProblem& p) {
  std::vector<float> out(size_t(p.nq * p.n)), hi(size_t(p.d)), lo(size_t(p.d), 0.0f);
  for (int64_t q = 0; q < p.nq; ++q) {
    float qinv = 1.0f;
    if (p.type == Storage::kF32)
      std::copy(p.queries + q * p.d, p.queries + (q + 1) * p.d, hi.begin());
    else
      qinv = pow2f(-split_query(p.queries + q * p.d, p.d, hi.data(), lo.data()));
    for (int64_t r = 0; r < p.n; ++r) out[size_t(q * p.n + r)] = emulated_score(p, hi.data(), lo.data(), qinv, r);
  }
  return out;
}

static void run_case(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> queries(size_t(c.nq * c.d));
  for (float& x : queries) x = nd(rng);
  std::vector<float> base(size_t(c.n * c.d));
  for (float& x : base) x = nd(rng);
  if (c.order == 3)  // duplicates: only 7 distinct rows
    for (int64_t r = 0; r < c.n; ++r)
      std::copy(base.begin() + (r % 7) * c.d, base.begin() + (r % 7 + 1) * c.d, base.begin() + r * c.d);
  if (c.order == 1 || c.order == 2) {
    std::vector<std::pair<double, int64_t>> key;
    for (int64_t r = 0; r < c.n; ++r) {
      double s = 0;
      for (int64_t j = 0; j < c.d; ++j) s += double(queries[size_t(j)]) * base[size_t(r * c.d + j)];
      if (c.l2) {
        double nn = 0;
        for (int64_t j = 0; j < c.d; ++j) nn += double(base[size_t(r * c.d + j)]) * base[size_t(r * c.d + j)];
        s = 2 * s - nn;
      }
      key.push_back({c.order == 1 ? s : -s, r});
    }
    std::sort(key.begin(), key.end());
    std::vector<float> sorted(base.size());
    for (int64_t r = 0; r < c.n; ++r)
      std::copy(base.begin() + key[size_t(r)].second * c.d, base.begin() + (key[size_t(r)].second + 1) * c.d,
                sorted.begin() + r * c.d);
    base.swap(sorted);
  }
  std::vector<uint16_t> f16;
  std::vector<int8_t> i8;
  std::vector<float> scales;
  HostProblem p;
  p.queries = queries.data();
  p.nq = c.nq;
  p.d = c.d;
  p.n = c.n;
  p.k = c.k;
  p.l2 = c.l2;
  p.type = c.type;
  if (c.type == Storage::kF32) {
    p.refs = base.data();
  } else if (c.type == Storage::kF16) {
    f16.resize(base.size());
    for (size_t i = 0; i < base.size(); ++i) {
      // fp16 bits of a value already representable: search via round_to_half
      const float h = round_to_half(base[i] * 0.25f);
      // encode h into binary16 bits (normal/subnormal/zero only: |h| < 2)
      uint16_t sign = std::signbit(h) ? 0x8000 : 0;
      const float a = std::fabs(h);
      uint16_t b;
      if (a == 0.0f) {
        b = 0;
      } else if (a < std::ldexp(1.0f, -14)) {
        b = uint16_t(std::lround(std::ldexp(a, 24)));
      } else {
        int e;
        const float m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
        b = uint16_t(((e - 1 + 15) << 10) | (uint16_t(std::lround(std::ldexp(m, 11))) & 0x3FF));
      }
      f16[i] = uint16_t(sign | b);
      EXPECT(csi::half_to_float(f16[i]) == h, "fp16 encode %g", double(h));
    }
    p.refs = f16.data();
  } else {
    i8.resize(base.size());
    scales.resize(size_t(c.n));
    // Codes follow `base` (so the orderings above carry over); varying scales only for the
    // random order, where they cannot spoil an intended ordering or duplicate.
    for (size_t i = 0; i < base.size(); ++i) i8[i] = int8_t(std::clamp(std::lround(base[i] * 30.0f), -127L, 127L));
    for (int64_t r = 0; r < c.n; ++r) scales[size_t(r)] = c.order == 0 ? 0.005f + 0.01f * float(r % 13) : 0.01f;
    p.refs = i8.data();
    p.scales = scales.data();
  }

  const std::vector<float> s_all = all_scores(p);
  const Plan plan = make_plan(c.nq, c.n, c.d, c.k, c.budget, c.slab_rows, c.cap, c.max_chunk);
  std::vector<float> out_s(size_t(c.nq * c.k));
  std::vector<int64_t> out_i(size_t(c.nq * c.k));
  const RunStats st = emulate_topk(p, plan, out_s.data(), out_i.data());
  EXPECT(st.rows_scored >= c.n * st.blocks, "every row scored");
  g_overflows += st.overflows;
  g_max_depth = std::max(g_max_depth, st.max_depth);
  g_blocks += st.blocks - 1;
  g_slabs += st.slabs - st.blocks;
  // Adversarial order: the first chunk (cap rows) is followed by one of about cap^2 / (4k) rows in
  // which every row beats query 0's threshold: it must overflow when that is more than cap.
  const int64_t second = std::min(plan.cap * plan.cap / (4 * c.k), c.n - plan.cap);
  if (c.order == 1 && c.slab_rows == 0 && c.max_chunk == 0 && second > plan.cap)
    EXPECT(st.overflows > 0, "adversarial order must overflow (n=%lld cap=%lld k=%lld l2=%d type=%d chunks=%lld)",
           (long long)c.n, (long long)plan.cap, (long long)c.k, int(c.l2), int(c.type), (long long)st.chunks);

  for (int64_t q = 0; q < c.nq; ++q) {
    std::vector<std::pair<float, int64_t>> ref;
    for (int64_t r = 0; r < c.n; ++r) ref.push_back({s_all[size_t(q * c.n + r)], r});
    std::sort(ref.begin(), ref.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    double qn = 0;
    for (int64_t j = 0; j < c.d; ++j) qn += double(queries[size_t(q * c.d + j)]) * queries[size_t(q * c.d + j)];
    for (int64_t i = 0; i < c.k; ++i) {
      const int64_t got = out_i[size_t(q * c.k + i)];
      const float want_s = c.l2 ? float(std::max(0.0, qn - double(ref[size_t(i)].first))) : ref[size_t(i)].first;
      EXPECT(got == ref[size_t(i)].second, "case nq=%lld n=%lld d=%lld k=%lld type=%d l2=%d order=%d cap=%lld: "
             "q=%lld rank %lld: got %lld want %lld",
             (long long)c.nq, (long long)c.n, (long long)c.d, (long long)c.k, int(c.type), int(c.l2), c.order,
             (long long)c.cap, (long long)q, (long long)i, (long long)got, (long long)ref[size_t(i)].second);
      EXPECT(out_s[size_t(q * c.k + i)] == want_s, "score q=%lld rank %lld", (long long)q, (long long)i);
    }
  }
}

static void test_emulation() {
  std::mt19937 rng(12345);
  int cases = 0;
  for (Storage t : {Storage::kF32, Storage::kF16, Storage::kI8})
    for (bool l2 : {false, true})
      for (int order : {0, 1, 2, 3})
        for (int64_t n : {1, 5, 64, 700, 3001}) {
          for (int64_t k : {int64_t(1), int64_t(3), int64_t(17), n}) {
            if (k > n) continue;
            std::uniform_int_distribution<int> dq(1, 5), dd(1, 70);
            Case c{dq(rng), n, dd(rng), k, t, l2, order, 0, 0, 0, int64_t(1) << 30};
            // Small capacities force splits; small slabs and budgets force slabbing and blocking.
            std::uniform_int_distribution<int> pick(0, 3);
            const int mode = pick(rng);
            if (mode >= 1) c.cap = std::max<int64_t>(k, 1 + int64_t(rng() % 40));
            if (mode >= 2) c.slab_rows = 1 + int64_t(rng() % 300);
            if (mode == 3) {
              c.max_chunk = 1 + int64_t(rng() % 200);
              c.budget = 1;  // one query per block
            }
            run_case(c, rng);
            ++cases;
          }
        }
  // k at the CUDA limit and a larger catalog (default capacity, real growth).
  run_case(Case{2, 20000, 8, 4096, Storage::kF16, false, 0, 0, 0, 0, int64_t(1) << 30}, rng);
  run_case(Case{2, 20000, 8, 4096, Storage::kF16, false, 1, 0, 0, 0, int64_t(1) << 30}, rng);
  run_case(Case{3, 70000, 4, 10, Storage::kF32, true, 1, 0, 0, 0, int64_t(1) << 30}, rng);
  run_case(Case{3, 70000, 4, 1, Storage::kI8, false, 0, 0, 0, 0, int64_t(1) << 30}, rng);
  run_case(Case{1, 70000, 3, 65536, Storage::kF16, true, 0, 0, 0, 0, int64_t(1) << 30}, rng);
  std::printf("emulation: %d random cases + 5 large ones; %lld overflows (max split depth %lld), "
              "%lld extra query blocks, %lld extra slabs\n",
              cases, (long long)g_overflows, (long long)g_max_depth, (long long)g_blocks, (long long)g_slabs);
  EXPECT(g_overflows > 50 && g_max_depth >= 3, "the overflow path must be exercised");
  EXPECT(g_blocks > 50 && g_slabs > 50, "blocking and slabbing must be exercised");
}

static void test_nonfinite() {
  std::vector<float> q = {1.0f, 2.0f};
  std::vector<float> r = {1.0f, 1.0f, 2.0f, std::nanf(""), 3.0f, 3.0f};
  HostProblem p;
  p.queries = q.data();
  p.nq = 1;
  p.d = 2;
  p.refs = r.data();
  p.n = 3;
  p.k = 1;
  std::vector<float> s(1);
  std::vector<int64_t> i(1);
  bool threw = false;
  try {
    emulate_topk(p, make_plan(1, 3, 2, 1, 1 << 30), s.data(), i.data());
  } catch (const NonFiniteError&) {
    threw = true;
  }
  EXPECT(threw, "NaN reference detected");
}

int main() {
  test_keys();
  test_exponent();
  test_half_rounding();
  test_schedule();
  test_plan();
  test_nonfinite();
  test_emulation();
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all passed\n");
  return 0;
}
