// The CUDA top-k: the GPU backend of the orchestration in topk_plan.h.
//
// Per call (nothing is shared between calls, so concurrent calls from several host threads
// are independent): two non-blocking streams (compute, host-to-device copies), events, and
// stream-ordered allocations (cudaMallocAsync where the device supports memory pools, else
// cudaMalloc) that are all released when the call returns or throws.
//
// Device memory of one call:
//   per query of a block  3 * (k + cap) * 8 bytes of keys (two sort buffers + sort scratch),
//                         k * 12 bytes of output, the split query, small arrays;
//                         blocks are sized to a budget (half the free memory, 64 MiB..8 GiB)
//   host references       2 slabs of min(256 MiB, free/16) (at least `cap` rows each)
//   host queries/scales   one copy of each
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/cuda_check.cuh"
#include "cuda/device_guard.cuh"
#include "cuda/score_kernels.cuh"
#include "cuda/segmented_sort.cuh"
#include "cuda/topk_cuda.h"
#include "cuda/topk_plan.h"

namespace csi {
namespace cuda {
namespace {

using topk::Plan;

constexpr int64_t kDefaultMaxChunk = int64_t(1) << 26;  // rows per chunk (bounds grid size)
constexpr int64_t kSlabBytes = int64_t(256) << 20;      // host-reference staging, per buffer
constexpr int64_t kMinBudget = int64_t(64) << 20;
constexpr int64_t kMaxBudget = int64_t(8) << 30;

__device__ __forceinline__ float neg_inf() { return __int_as_float(int(0xFF800000u)); }

// One CTA per (padded) query row: checks finiteness, computes |q|^2 in double, and writes the
// query padded to dp dims as fp16 hi/lo (split) or fp32, plus 2^-e. Rows >= nq are zeros.
__global__ void __launch_bounds__(256) prep_queries_kernel(const float* __restrict__ q, int nq, int d, int dp,
                                                           int split, __half* hi, __half* lo, float* f32,
                                                           float* qinv, double* qnorm2, int* nonfinite) {
  const int row = int(blockIdx.x), tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const float* src = q + int64_t(row) * d;
  float m = 0.0f;
  double ss = 0.0;
  int bad = 0;
  if (row < nq) {
    for (int j = tid; j < d; j += 256) {
      const float x = src[j];
      if (detail::is_finite(x))
        m = fmaxf(m, fabsf(x));
      else
        bad = 1;
      ss += double(x) * double(x);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
    bad |= __shfl_xor_sync(0xFFFFFFFFu, bad, o);
  }
  __shared__ float s_max[8];
  __shared__ double s_sum[8];
  __shared__ int s_bad[8];
  if (lane == 0) {
    s_max[warp] = m;
    s_sum[warp] = ss;
    s_bad[warp] = bad;
  }
  __syncthreads();
  m = 0.0f;
  ss = 0.0;
  bad = 0;
  for (int w = 0; w < 8; ++w) {  // same order in every thread: identical results
    m = fmaxf(m, s_max[w]);
    ss += s_sum[w];
    bad |= s_bad[w];
  }
  const int e = (row < nq && split && !bad) ? topk::query_exponent(m) : 0;
  const float scale = topk::pow2f(e);
  if (tid == 0) {
    qinv[row] = topk::pow2f(-e);
    if (row < nq) qnorm2[row] = ss;
    if (bad) atomicOr(nonfinite, 1);
  }
  for (int j = tid; j < dp; j += 256) {
    const float x = (row < nq && j < d) ? src[j] : 0.0f;
    if (split) {
      const float s = x * scale;  // exact: a power of two
      const __half h = __float2half_rn(s);
      hi[int64_t(row) * dp + j] = h;
      lo[int64_t(row) * dp + j] = __float2half_rn(s - __half2float(h));
    } else {
      f32[int64_t(row) * dp + j] = x;
    }
  }
}

__global__ void init_block_kernel(float* thr, int* filled, int* seg_begin, int nq, int64_t stride) {
  const int q = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (q < nq) {
    thr[q] = neg_inf();
    filled[q] = 0;
    seg_begin[q] = int(int64_t(q) * stride);
  }
}

// After a merge: the sorted segment's k-th key gives the new threshold.
__global__ void update_thresholds_kernel(const unsigned long long* __restrict__ sorted, const int* filled_new,
                                         float* thr, int* filled, int nq, int64_t stride, int k) {
  const int q = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (q < nq) {
    const int f = filled_new[q];
    filled[q] = f;
    thr[q] = f >= k ? topk::key_score(sorted[int64_t(q) * stride + k - 1]) : neg_inf();
  }
}

__global__ void finalize_kernel(const unsigned long long* __restrict__ keys, const double* __restrict__ qnorm2,
                                int nq, int64_t stride, int k, int l2, float* out_s, int64_t* out_i) {
  const int64_t total = int64_t(nq) * k;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = t / k, i = t % k;
    const unsigned long long key = keys[q * stride + i];
    const float s = topk::key_score(key);
    out_s[t] = l2 ? float(fmax(0.0, qnorm2[q] - double(s))) : s;
    out_i[t] = int64_t(topk::key_index(key));
  }
}

int blocks_for(int64_t n, int threads) { return int(std::max<int64_t>(1, (n + threads - 1) / threads)); }

// Streams, events and allocations of one call. Destruction waits for both streams before
// freeing, so an exception thrown mid-flight never frees memory a copy or kernel still uses.
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  void init(int device) {
    int pools = 0;
    check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device), "cudaDeviceGetAttribute");
    pools_ = pools != 0;
    check(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    check(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    for (int i = 0; i < 2; ++i) {
      check(cudaEventCreateWithFlags(&h2d_done[i], cudaEventDisableTiming), "cudaEventCreate");
      check(cudaEventCreateWithFlags(&slab_free[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }

  ~Workspace() {
    if (copy) (void)cudaStreamSynchronize(copy);
    if (compute) (void)cudaStreamSynchronize(compute);
    for (void* p : allocs_) release_now(p);
    if (compute) (void)cudaStreamSynchronize(compute);
    for (int i = 0; i < 2; ++i) {
      if (h2d_done[i]) (void)cudaEventDestroy(h2d_done[i]);
      if (slab_free[i]) (void)cudaEventDestroy(slab_free[i]);
    }
    if (copy) (void)cudaStreamDestroy(copy);
    if (compute) (void)cudaStreamDestroy(compute);
    (void)cudaGetLastError();
  }

  template <typename T>
  T* alloc(int64_t count, const char* what) {
    const int64_t bytes = count * int64_t(sizeof(T));
    if (bytes <= 0) return nullptr;
    void* p = nullptr;
    const cudaError_t err = pools_ ? cudaMallocAsync(&p, size_t(bytes), compute) : cudaMalloc(&p, size_t(bytes));
    check(err, what, bytes);
    allocs_.push_back(p);
    return static_cast<T*>(p);
  }

  void free(void* p) {
    auto it = std::find(allocs_.begin(), allocs_.end(), p);
    if (it == allocs_.end()) return;
    allocs_.erase(it);
    release_now(p);
  }

  cudaStream_t compute = nullptr, copy = nullptr;
  cudaEvent_t h2d_done[2] = {nullptr, nullptr};   // slab buffer i uploaded
  cudaEvent_t slab_free[2] = {nullptr, nullptr};  // compute done with slab buffer i

 private:
  void release_now(void* p) {
    if (pools_)
      (void)cudaFreeAsync(p, compute);
    else
      (void)cudaFree(p);
  }

  bool pools_ = false;
  std::vector<void*> allocs_;
};

class GpuBackend {
 public:
  GpuBackend(const TopkArgs& a, const Plan& plan, Workspace& ws, float* out_scores, int64_t* out_index)
      : a_(a), plan_(plan), ws_(ws), out_scores_(out_scores), out_index_(out_index) {
    split_ = a.type != Storage::kF32;
    row_bytes_ = a.d * int64_t(storage_bytes(a.type));
    dp_ = topk::round_up(a.d, topk::kStageDims);
    const int64_t qb = plan.q_block;
    const int64_t rows = topk::round_up(qb, kQueryRowPad);
    if (split_) {
      q_hi_ = ws.alloc<__half>(rows * dp_, "query buffers");
      q_lo_ = ws.alloc<__half>(rows * dp_, "query buffers");
    } else {
      q_f32_ = ws.alloc<float>(rows * dp_, "query buffers");
    }
    q_inv_ = ws.alloc<float>(rows, "query buffers");
    q_norm2_ = ws.alloc<double>(qb, "query buffers");
    thr_ = ws.alloc<float>(qb, "selection state");
    filled_ = ws.alloc<int>(qb, "selection state");
    seg_begin_ = ws.alloc<int>(qb, "selection state");
    meta_ = ws.alloc<int>(2 * qb, "selection state");
    counts_ = ws.alloc<unsigned>(qb + 1, "selection state");
    active_ = ws.alloc<uint8_t>(qb, "selection state");
    keys_a_ = ws.alloc<unsigned long long>(qb * plan.stride, "candidate buffers");
    keys_b_ = ws.alloc<unsigned long long>(qb * plan.stride, "candidate buffers");
    out_s_ = ws.alloc<float>(qb * plan.k, "output buffers");
    out_i_ = ws.alloc<int64_t>(qb * plan.k, "output buffers");
    ensure_sort_scratch(qb);
    check(cudaMemsetAsync(counts_, 0, size_t(qb + 1) * sizeof(unsigned), ws.compute), "cudaMemsetAsync");

    if (a.queries_on_device) {
      queries_ = a.queries;
    } else {
      float* q = ws.alloc<float>(a.nq * a.d, "query upload");
      check(cudaMemcpyAsync(q, a.queries, size_t(a.nq * a.d) * 4, cudaMemcpyHostToDevice, ws.compute),
            "cudaMemcpyAsync (queries)");
      queries_ = q;
    }
    if (a.scales != nullptr) {
      if (a.scales_on_device) {
        scales_ = a.scales;
      } else {
        float* s = ws.alloc<float>(a.n, "scales upload");
        check(cudaMemcpyAsync(s, a.scales, size_t(a.n) * 4, cudaMemcpyHostToDevice, ws.compute),
              "cudaMemcpyAsync (scales)");
        scales_ = s;
      }
    }
    if (!a.refs_on_device) {  // a second staging buffer only when there is a second slab
      const int buffers = plan.slab_rows < a.n ? 2 : 1;
      for (int i = 0; i < buffers; ++i) slab_[i] = ws.alloc<char>(plan.slab_rows * row_bytes_, "reference staging");
    }
    // Stream-ordered allocations become usable by the copy stream once the compute stream has
    // passed them.
    check(cudaStreamSynchronize(ws.compute), "cudaStreamSynchronize (setup)");
  }

  void begin_block(int64_t q0, int64_t nq) {
    nq_ = nq;
    const int64_t rows = topk::round_up(nq, kQueryRowPad);
    prep_queries_kernel<<<unsigned(rows), 256, 0, ws_.compute>>>(queries_ + q0 * a_.d, int(nq), int(a_.d),
                                                                   int(dp_), split_ ? 1 : 0, q_hi_, q_lo_, q_f32_,
                                                                   q_inv_, q_norm2_, nonfinite_flag());
    check_launch("query preparation kernel");
    init_block_kernel<<<blocks_for(nq, 256), 256, 0, ws_.compute>>>(thr_, filled_, seg_begin_, int(nq),
                                                                     plan_.stride);
    check_launch("selection init kernel");
    cur_ = keys_a_;
    other_ = keys_b_;
    ensure_sort_scratch(nq);
    tile_ = tile_for_queries(int(nq));
  }

  void begin_slab(int64_t s0, int64_t s1, int64_t n0, int64_t n1) {
    slab_s0_ = s0;
    slab_s1_ = s1;
    if (a_.refs_on_device) {
      slab_ptr_ = static_cast<const char*>(a_.refs) + s0 * row_bytes_;
      return;
    }
    // Slab i of a block lives in buffer i % 2; upload() skips a slab that is already there
    // (prefetched, or left by the previous query block).
    const int slot = slabs_.slot_of(s0);
    upload(s0, s1, slot);
    check(cudaStreamWaitEvent(ws_.compute, ws_.h2d_done[slot], 0), "cudaStreamWaitEvent");
    slab_ptr_ = slab_[slot];
    cur_slot_ = slot;
    pending_ = n1 > n0;
    pend_s0_ = n0;
    pend_s1_ = n1;
  }

  void launch(int64_t c0, int64_t c1, const std::vector<uint8_t>* active) {
    if (c0 < slab_s0_ || c1 > slab_s1_ || c0 >= c1) throw std::logic_error("top-k: chunk outside the resident slab");
    check(cudaMemsetAsync(counts_ + 1, 0, size_t(nq_) * sizeof(unsigned), ws_.compute), "cudaMemsetAsync");
    if (active != nullptr) {
      h_active_ = *active;
      check(cudaMemcpyAsync(active_, h_active_.data(), size_t(nq_), cudaMemcpyHostToDevice, ws_.compute),
            "cudaMemcpyAsync (active mask)");
    }
    ScoreParams p;
    p.refs = slab_ptr_ + (c0 - slab_s0_) * row_bytes_;
    p.scales = scales_ != nullptr ? scales_ + c0 : nullptr;
    p.n_rows = int(c1 - c0);
    p.d = int(a_.d);
    p.dp = int(dp_);
    p.index_base = uint32_t(c0);
    p.q_hi = q_hi_;
    p.q_lo = q_lo_;
    p.q_f32 = q_f32_;
    p.q_inv = q_inv_;
    p.nq = int(nq_);
    p.thr = thr_;
    p.active = active != nullptr ? active_ : nullptr;
    p.filled = filled_;
    p.keys = cur_;
    p.stride = plan_.stride;
    p.cap = unsigned(plan_.cap);
    p.counts = counts_ + 1;
    p.nonfinite = nonfinite_flag();
    p.l2 = a_.l2;
    const bool vec = row_bytes_ % 16 == 0 && reinterpret_cast<uintptr_t>(p.refs) % 16 == 0;
    switch (a_.type) {
      case Storage::kF16:
        launch_score_f16(p, tile_, vec, ws_.compute);
        break;
      case Storage::kI8:
        launch_score_i8(p, tile_, vec, ws_.compute);
        break;
      case Storage::kF32:
        launch_score_f32(p, tile_ == 0 ? 0 : 1, vec, ws_.compute);
        break;
    }
    // The next slab's upload overlaps this slab's work (issued after the first kernel so a
    // pageable copy, which blocks this thread while it stages, runs alongside it).
    if (pending_) {
      pending_ = false;
      upload(pend_s0_, pend_s1_, slabs_.slot_of(pend_s0_));
    }
  }

  void read_counts(std::vector<uint32_t>& counts) {
    h_counts_.resize(size_t(nq_ + 1));
    check(cudaMemcpyAsync(h_counts_.data(), counts_, size_t(nq_ + 1) * sizeof(unsigned), cudaMemcpyDeviceToHost,
                          ws_.compute),
          "cudaMemcpyAsync (candidate counts)");
    check(cudaStreamSynchronize(ws_.compute), "score kernel (synchronize)");
    if (h_counts_[0] != 0)
      throw topk::NonFiniteError("a score is NaN or Inf: the queries or references hold NaN/Inf, or their values "
                                 "are too large for float32 arithmetic");
    counts.assign(h_counts_.begin() + 1, h_counts_.end());
  }

  void merge(const std::vector<int32_t>& seg_len, const std::vector<int32_t>& filled) {
    h_meta_.resize(size_t(2 * nq_));
    for (int64_t q = 0; q < nq_; ++q) {
      h_meta_[size_t(q)] = int32_t(q * plan_.stride + seg_len[size_t(q)]);
      h_meta_[size_t(nq_ + q)] = filled[size_t(q)];
    }
    check(cudaMemcpyAsync(meta_, h_meta_.data(), size_t(2 * nq_) * sizeof(int), cudaMemcpyHostToDevice,
                          ws_.compute),
          "cudaMemcpyAsync (segment ends)");
    size_t bytes = sort_bytes_;
    check(sort_segments_descending(sort_scratch_, bytes, cur_, other_, nq_ * plan_.stride, nq_, seg_begin_, meta_,
                                   ws_.compute),
          "cub::DeviceSegmentedSort::SortKeysDescending");
    update_thresholds_kernel<<<blocks_for(nq_, 256), 256, 0, ws_.compute>>>(other_, meta_ + nq_, thr_, filled_,
                                                                            int(nq_), plan_.stride, int(plan_.k));
    check_launch("threshold update kernel");
    std::swap(cur_, other_);
  }

  void end_slab() {
    if (a_.refs_on_device) return;
    if (pending_) {
      pending_ = false;
      upload(pend_s0_, pend_s1_, slabs_.slot_of(pend_s0_));
    }
    check(cudaEventRecord(ws_.slab_free[cur_slot_], ws_.compute), "cudaEventRecord");
  }

  void finish_block(int64_t q0, int64_t nq) {
    const int64_t total = nq * plan_.k;
    finalize_kernel<<<int(std::min<int64_t>(blocks_for(total, 256), 8192)), 256, 0, ws_.compute>>>(
        cur_, q_norm2_, int(nq), plan_.stride, int(plan_.k), a_.l2 ? 1 : 0, out_s_, out_i_);
    check_launch("finalize kernel");
    check(cudaMemcpyAsync(out_scores_ + q0 * plan_.k, out_s_, size_t(total) * 4, cudaMemcpyDeviceToHost, ws_.compute),
          "cudaMemcpyAsync (scores)");
    check(cudaMemcpyAsync(out_index_ + q0 * plan_.k, out_i_, size_t(total) * 8, cudaMemcpyDeviceToHost, ws_.compute),
          "cudaMemcpyAsync (indices)");
    check(cudaStreamSynchronize(ws_.compute), "top-k (synchronize)");
  }

 private:
  int* nonfinite_flag() { return reinterpret_cast<int*>(counts_); }

  void ensure_sort_scratch(int64_t nq) {
    size_t bytes = 0;
    check(sort_segments_descending(nullptr, bytes, nullptr, nullptr, nq * plan_.stride, nq, seg_begin_, meta_,
                                   ws_.compute),
          "cub::DeviceSegmentedSort (scratch size)");
    if (bytes <= sort_bytes_ && sort_scratch_ != nullptr) return;
    if (sort_scratch_ != nullptr) ws_.free(sort_scratch_);
    sort_scratch_ = ws_.alloc<char>(int64_t(std::max<size_t>(bytes, 16)), "sort scratch");
    sort_bytes_ = std::max<size_t>(bytes, 16);
  }

  // Host rows [r0, r1) into staging buffer `slot` on the copy stream, after the compute stream
  // is done with the slab that buffer held before.
  void upload(int64_t r0, int64_t r1, int slot) {
    if (!slabs_.claim(slot, r0, r1)) return;  // already there
    check(cudaStreamWaitEvent(ws_.copy, ws_.slab_free[slot], 0), "cudaStreamWaitEvent");
    check(cudaMemcpyAsync(slab_[slot], static_cast<const char*>(a_.refs) + r0 * row_bytes_,
                          size_t((r1 - r0) * row_bytes_), cudaMemcpyHostToDevice, ws_.copy),
          "cudaMemcpyAsync (references)", (r1 - r0) * row_bytes_);
    check(cudaEventRecord(ws_.h2d_done[slot], ws_.copy), "cudaEventRecord");
  }

  const TopkArgs& a_;
  const Plan& plan_;
  Workspace& ws_;
  float* out_scores_;
  int64_t* out_index_;

  bool split_ = false;
  int64_t row_bytes_ = 0, dp_ = 0, nq_ = 0;
  int tile_ = 0;
  const float* queries_ = nullptr;
  const float* scales_ = nullptr;
  __half* q_hi_ = nullptr;
  __half* q_lo_ = nullptr;
  float* q_f32_ = nullptr;
  float* q_inv_ = nullptr;
  double* q_norm2_ = nullptr;
  float* thr_ = nullptr;
  int* filled_ = nullptr;
  int* seg_begin_ = nullptr;
  int* meta_ = nullptr;  // [0, nq): segment ends; [nq, 2 nq): new filled counts
  unsigned* counts_ = nullptr;  // [0]: non-finite flag; [1, nq]: candidate counters
  uint8_t* active_ = nullptr;
  unsigned long long* keys_a_ = nullptr;
  unsigned long long* keys_b_ = nullptr;
  unsigned long long* cur_ = nullptr;
  unsigned long long* other_ = nullptr;
  float* out_s_ = nullptr;
  int64_t* out_i_ = nullptr;
  void* sort_scratch_ = nullptr;
  size_t sort_bytes_ = 0;

  // Host-reference staging.
  char* slab_[2] = {nullptr, nullptr};
  topk::SlabBuffers slabs_{plan_.slab_rows};
  const char* slab_ptr_ = nullptr;
  int64_t slab_s0_ = 0, slab_s1_ = 0;
  int cur_slot_ = 0;
  bool pending_ = false;
  int64_t pend_s0_ = 0, pend_s1_ = 0;

  std::vector<uint8_t> h_active_;
  std::vector<uint32_t> h_counts_;
  std::vector<int32_t> h_meta_;
};

void validate(const TopkArgs& a) {
  if (a.nq < 0) throw std::invalid_argument("number of queries must be >= 0");
  if (a.d < 1) throw std::invalid_argument("vector dimension must be >= 1");
  if (a.d > (int64_t(1) << 24)) throw std::invalid_argument("vector dimension too large for the CUDA kernels");
  if (a.n < 1) throw std::invalid_argument("refs is empty: nothing to rank against");
  if (a.n > topk::kMaxRefs)
    throw std::invalid_argument("the CUDA top-k supports at most " + std::to_string(topk::kMaxRefs) +
                                " references (got " + std::to_string(a.n) + "); split the reference set");
  if (a.k < 1) throw std::invalid_argument("k must be >= 1 (got " + std::to_string(a.k) + ")");
  if (a.k > a.n)
    throw std::invalid_argument("k = " + std::to_string(a.k) + " exceeds the number of references (" +
                                std::to_string(a.n) + ")");
  if (a.k > topk::kMaxK)
    throw std::invalid_argument("k = " + std::to_string(a.k) + " exceeds the CUDA limit of " +
                                std::to_string(topk::kMaxK));
  if ((a.type == Storage::kI8) != (a.scales != nullptr))
    throw std::invalid_argument("per-row scales are required for int8 references and only for them");
  if (a.nq > 0 && (a.queries == nullptr || a.refs == nullptr))
    throw std::invalid_argument("null query or reference pointer");
  auto aligned = [](const void* p, int64_t m) { return reinterpret_cast<uintptr_t>(p) % uintptr_t(m) == 0; };
  if (!aligned(a.queries, 4) || !aligned(a.refs, storage_bytes(a.type)) || !aligned(a.scales, 4))
    throw std::invalid_argument("queries, refs and scales must be aligned to their element size");
}

void check_location(const void* p, bool on_device, int device, const char* name) {
  if (p == nullptr) return;
  const int where = pointer_device(p);
  if (on_device && where != device)
    throw std::invalid_argument(std::string(name) + " must be in the memory of cuda:" + std::to_string(device) +
                                (where < 0 ? " (the pointer is not device memory)"
                                           : " (it is on cuda:" + std::to_string(where) + ")"));
  if (!on_device && where >= 0)
    throw std::invalid_argument(std::string(name) + " was passed as a host array but points to device memory");
}

void sync_producer_stream(uintptr_t s) {
  if (s == 0) return;
  cudaStream_t stream = s == 1 ? cudaStreamLegacy : (s == 2 ? cudaStreamPerThread : reinterpret_cast<cudaStream_t>(s));
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (producer stream of a device array)");
}

}  // namespace

topk::RunStats topk(const TopkArgs& a, float* out_scores, int64_t* out_index) {
  validate(a);
  if (a.nq == 0) return topk::RunStats{};
  (void)cudaGetLastError();  // a stale error of this thread must not be reported as ours
  DeviceGuard guard(a.device);
  for (uintptr_t s : a.sync_streams) sync_producer_stream(s);
  check_location(a.queries, a.queries_on_device, a.device, "queries");
  check_location(a.refs, a.refs_on_device, a.device, "refs");
  check_location(a.scales, a.scales_on_device, a.device, "scales");

  Workspace ws;
  ws.init(a.device);
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  const int64_t free_bytes = int64_t(free_b);
  const int64_t row_bytes = a.d * int64_t(storage_bytes(a.type));
  int64_t slab_rows = 0;
  if (!a.refs_on_device)
    slab_rows = a.slab_rows > 0 ? a.slab_rows : std::max<int64_t>(1, std::min(kSlabBytes, free_bytes / 16) / row_bytes);
  int64_t budget = a.budget_bytes;
  if (budget <= 0) {
    int64_t extra = 2 * slab_rows * row_bytes;
    if (!a.queries_on_device) extra += a.nq * a.d * 4;
    if (a.scales != nullptr && !a.scales_on_device) extra += a.n * 4;
    budget = std::clamp((free_bytes - extra) / 2, kMinBudget, kMaxBudget);
  }
  const Plan plan = topk::make_plan(a.nq, a.n, a.d, a.k, budget, slab_rows, a.cap,
                                    a.max_chunk > 0 ? a.max_chunk : kDefaultMaxChunk);
  GpuBackend backend(a, plan, ws, out_scores, out_index);
  return topk::run_topk(backend, plan);
}

}  // namespace cuda
}  // namespace csi
