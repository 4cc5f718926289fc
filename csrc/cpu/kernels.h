// CPU ranking kernels: the per-ISA function table the top-k driver calls.
//
// Each table entry is compiled three times (generic x86-64, AVX2+FMA+F16C, AVX-512) from
// kernels_impl.h; dispatch.cpp picks the best one the running CPU supports. Only plain
// function pointers cross the ISA boundary, so no inline or template code compiled with
// wide-vector flags can be picked up by the generic code at link time.
#pragma once

#include <cstdint>

#include "common/storage.h"

namespace csi {

// One ranked candidate: a score (larger is better) and the reference row it came from.
struct Candidate {
  float score;
  int64_t index;
};

// Total order used everywhere: higher score first, then lower index. A function object (not
// a function pointer) so std::nth_element/std::sort inline the comparison.
struct Better {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  }
};
constexpr Better better{};

namespace cpu {

// The streaming (few-query) kernels handle up to this many queries in one pass over the refs.
constexpr int kMaxStreamQueries = 8;

struct KernelTable {
  const char* name;
  int vector_width;  // fp32 lanes per SIMD register
  int qr;            // query rows per GEMM tile
  int qr_step;       // the last tile of a query set may be shorter: any multiple of this
  int nr;            // reference lanes per packed GEMM panel

  // Few-query scan straight from the storage type (no packing).
  //   Q: [nq_pad x dq] fp32, zero padded, nq_pad in {1, 2, 4, 8}, dq >= d a multiple of vector_width
  //   R: [n x d] in `storage`, scales: [n] (int8 only, else nullptr)
  //   S: [nq_pad x lds] out; S[q, j] = <Q_q, R_j> for ip, 2<Q_q, R_j> - |R_j|^2 for l2
  void (*stream_scores)(const float* Q, int nq_pad, int64_t dq, int64_t d, const void* R, Storage storage,
                        const float* scales, int64_t n, bool l2, float* S, int64_t lds);

  // Packs queries into tiles of `qr` rows: Qp[t][p][i] = Q[t*qr + i][p]. Tile t starts at
  // Qp + t*qr*d; the last tile has round_up(rows left, qr_step) rows, zero padded.
  void (*pack_queries)(const float* Q, int64_t nq, int64_t d, float* Qp);

  // Converts n <= block refs to fp32 (scales applied) and packs them into panels of `nr`
  // lanes: Rp[pnl][p][l] = R[pnl*nr + l][p], zero padded. norms[j] = |R_j|^2 when l2.
  void (*pack_refs)(const void* R, Storage storage, const float* scales, int64_t n, int64_t d, bool l2,
                    float* Rp, float* norms);

  // Scores one packed query tile of `rows` rows (qr, or a multiple of qr_step for the last
  // tile) against `npanels` packed panels: S[i, pnl*nr + l] for i < rows; same score
  // definition as stream_scores.
  // Meanwhile prefetches [prefetch, prefetch + prefetch_bytes) into L2 (the next raw block),
  // so packing that block overlaps with this arithmetic instead of stalling on memory.
  void (*gemm_scores)(const float* Qp_tile, int rows, const float* Rp, int64_t npanels, int64_t d,
                      const float* norms, float* S, int64_t lds, const void* prefetch, int64_t prefetch_bytes);

  // Appends every s[j] > thr as Candidate{s[j], base + j} to out (room for n entries) and
  // returns how many were appended. Sets *nonfinite to 1 if any s[j] is NaN or +-Inf.
  int64_t (*filter)(const float* s, int64_t n, float thr, int64_t base, Candidate* out, int* nonfinite);
};

const KernelTable* kernels_generic();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

// Names of the kernel variants this CPU can run, best first (e.g. {"avx512", "avx2", "generic"}).
const char* const* supported_isas(int* count);

// The table for `isa` ("" or "auto" = best supported). Throws std::invalid_argument for an
// unknown name or one this CPU cannot run.
const KernelTable* select_kernels(const char* isa);

}  // namespace cpu
}  // namespace csi
