// Exact, fused top-k over a reference matrix on the CPU.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/kernels.h"

namespace csi {

// Raised when a score is NaN or +-Inf: the inputs hold non-finite values or overflow fp32.
class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Largest k the CPU path accepts (the output alone is then 12 MiB per query).
constexpr int64_t kCpuMaxK = int64_t(1) << 20;

struct TopkProblem {
  const float* queries = nullptr;  // [nq, d] fp32, C order
  int64_t nq = 0;
  int64_t d = 0;
  const void* refs = nullptr;  // [n, d] in `storage`, C order
  Storage storage = Storage::kF32;
  const float* scales = nullptr;  // [n] per-row scales (int8 storage only)
  int64_t n = 0;
  int64_t k = 0;
  bool l2 = false;  // false: inner product (larger first); true: squared L2 (smaller first)
};

struct TopkOptions {
  int threads = 1;
  const cpu::KernelTable* kernels = nullptr;  // nullptr: best for this CPU
  // Upper bound on the candidate buffers of one pass; queries are processed in chunks so the
  // scratch memory stays below it whatever Q and k are.
  int64_t scratch_bytes = int64_t(256) << 20;
};

// Writes scores [nq, k] and indices [nq, k], best first, ties broken by lower index.
// Throws std::invalid_argument for inconsistent arguments and NonFiniteError for NaN/Inf
// scores. Never materialises the nq x n score matrix.
void topk_cpu(const TopkProblem& problem, const TopkOptions& options, float* out_scores, int64_t* out_index);

}  // namespace csi
