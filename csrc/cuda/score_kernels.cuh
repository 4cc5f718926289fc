// Fused score + threshold-filter kernels of the CUDA top-k.
//
// One CTA (256 threads) scores a tile of BM queries x BN references of the current chunk,
// never writing scores to global memory: the tile goes to shared memory and each score is
// compared with its query's threshold; the few that beat it are appended as sort keys to the
// query's candidate region (warp-aggregated atomicAdd on a per-query counter). The counter
// keeps counting past the capacity while the stores stop, so the host sees the overflow and
// redoes the chunk in halves (topk_plan.h).
//
// The reduction dimension goes through shared memory in stages of kStageDims (64) values:
//   global -> registers (16-byte loads, issued one stage ahead so that they are in flight
//   while the current stage computes) -> shared memory (converted to fp16 for the tensor-core
//   path, which also zero-pads any D and realigns rows for WMMA) -> fragments.
//
// Tensor-core path (fp16 and int8 references): queries are pre-split into fp16 hi + lo
// (topk_common.h), two m16n16k16 MMAs per fragment and k-step, fp32 accumulation. Each stage
// accumulates into a zeroed fragment that is then added to the running fragment in fp32,
// because tensor cores truncate when accumulating (see kStageDims).
//
// SIMT path (fp32 references): plain fp32 FMAs, 16x16 thread grid, TM x TN outputs each.
//
// Tile shapes (256 threads, 8 warps):
//   small  BM=16,  BN=256  (Q <= 16: bandwidth-bound; one query tile, many CTAs in flight)
//   medium BM=64,  BN=128
//   large  BM=128, BN=128  (warp tile 64x32; compute-bound regime)
//   SIMT   BM=16 x BN=128 and BM=64 x BN=64
// The grid is 1-D with the query tile as the fast index, so CTAs that share a reference
// tile run together and all but the first read it from L2.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "cuda/topk_common.h"

namespace csi {
namespace cuda {

struct ScoreParams {
  const void* refs = nullptr;      // row 0 of the chunk, [n_rows, d] in the storage type
  const float* scales = nullptr;   // scales of row 0 of the chunk (int8), else nullptr
  int n_rows = 0;                  // rows in the chunk
  int d = 0;                       // vector dimension
  int dp = 0;                      // d rounded up to a multiple of kStageDims
  uint32_t index_base = 0;         // global index of chunk row 0
  const __half* q_hi = nullptr;    // [rows, dp] split queries (tensor-core path)
  const __half* q_lo = nullptr;
  const float* q_f32 = nullptr;    // [rows, dp] queries (SIMT path)
  const float* q_inv = nullptr;    // [nq] 2^-e (1 for the SIMT path)
  int nq = 0;                      // queries in the block (rows >= nq are zero padding)
  int q_tiles = 0;                 // set by the launcher
  const float* thr = nullptr;      // [nq] thresholds
  const uint8_t* active = nullptr; // [nq] or nullptr (all active)
  const int* filled = nullptr;     // [nq] top-k entries already in each segment
  unsigned long long* keys = nullptr;  // segments of `stride` keys per query
  int64_t stride = 0;
  unsigned cap = 0;
  unsigned* counts = nullptr;      // [nq]
  int* nonfinite = nullptr;        // set to 1 on a NaN/Inf score
  bool l2 = false;
};

namespace detail {

constexpr int kThreads = 256;
constexpr int BK = topk::kStageDims;

__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) <= 3.4028234663852886e38f; }

// Filters a BM x BN tile of raw dot products held in shared memory (row-major, ld LDC).
//   score = dot * q_inv[q] * row_scale[c]           (ip)
//   score = 2 * that - row_norm[c]                  (l2: ranks like the squared distance)
template <int BM, int BN, int LDC>
__device__ __forceinline__ void filter_tile(const ScoreParams& p, const float* Cs, const float* row_norm,
                                            const float* row_scale, int m0, int n0) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned lane_lt = (1u << lane) - 1u;
  bool bad = false;
  for (int m = warp; m < BM; m += kThreads / 32) {
    const int q = m0 + m;
    if (q >= p.nq) break;  // uniform across the warp
    if (p.active != nullptr && p.active[q] == 0) continue;
    const float thr = p.thr[q];
    const float qinv = p.q_inv[q];
    unsigned long long* dst = p.keys + int64_t(q) * p.stride + p.filled[q];
    unsigned* counter = p.counts + q;
#pragma unroll 2
    for (int c0 = 0; c0 < BN; c0 += 32) {
      const int c = c0 + lane;
      const int n = n0 + c;
      const bool valid = n < p.n_rows;
      float s = 0.0f;
      if (valid) {
        const float dot = Cs[m * LDC + c] * qinv * row_scale[c];
        s = p.l2 ? 2.0f * dot - row_norm[c] : dot;
        bad |= !is_finite(s);
      }
      const bool pass = valid && s > thr;
      const unsigned mask = __ballot_sync(0xFFFFFFFFu, pass);
      if (mask != 0u) {
        const int leader = __ffs(mask) - 1;
        unsigned base = 0;
        if (lane == leader) base = atomicAdd(counter, unsigned(__popc(mask)));
        base = __shfl_sync(0xFFFFFFFFu, base, leader);
        if (pass) {
          const unsigned pos = base + unsigned(__popc(mask & lane_lt));
          if (pos < p.cap) dst[pos] = topk::encode_key(s, p.index_base + uint32_t(n));
        }
      }
    }
  }
  if (bad) atomicOr(p.nonfinite, 1);
}

// Loads of one reference stage (rows n0.., dims k0..k0+BK) into registers, 16 bytes each.
// Only used when d * sizeof(T) is a multiple of 16 and the base pointer is 16-byte aligned,
// so a vector is either entirely inside [0, d) or entirely past it.
template <typename T, int BN>
struct RefStageVec {
  static constexpr int kElems = 16 / int(sizeof(T));  // elements per vector
  static constexpr int kVpr = BK / kElems;            // vectors per row and stage
  static constexpr int kIters = BN * kVpr / kThreads;
  static_assert(BN * kVpr % kThreads == 0, "stage must split evenly over the threads");
  uint4 r[kIters];

  // Thread t handles vector column t % kVpr of rows t / kVpr + it * kRowStep.
  static constexpr int kRowStep = kThreads / kVpr;

  __device__ __forceinline__ void load(const ScoreParams& p, int n0, int k0) {
    const int row0 = int(threadIdx.x) / kVpr, vc = int(threadIdx.x) % kVpr;
    const int col = k0 + vc * kElems;
    const int64_t row_bytes = int64_t(p.d) * int64_t(sizeof(T));
    const char* src = static_cast<const char*>(p.refs) + int64_t(n0 + row0) * row_bytes + int64_t(col) * int64_t(sizeof(T));
    const bool col_ok = col < p.d;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      if (col_ok && n0 + row0 + it * kRowStep < p.n_rows)
        r[it] = __ldg(reinterpret_cast<const uint4*>(src + int64_t(it) * kRowStep * row_bytes));
      else
        r[it] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
};

// Stores a register stage to shared memory as fp16 [BN][LDB].
template <int BN, int LDB>
__device__ __forceinline__ void store_stage_half(const RefStageVec<__half, BN>& st, __half* Bs) {
  using S = RefStageVec<__half, BN>;
  const int row0 = int(threadIdx.x) / S::kVpr, vc = int(threadIdx.x) % S::kVpr;
#pragma unroll
  for (int it = 0; it < S::kIters; ++it)
    *reinterpret_cast<uint4*>(Bs + (row0 + it * S::kRowStep) * LDB + vc * 8) = st.r[it];
}

// Two fp16 values packed little-endian into a 32-bit word (first one at the lower address).
__device__ __forceinline__ uint32_t pack_half2(__half a, __half b) {
  return uint32_t(__half_as_ushort(a)) | (uint32_t(__half_as_ushort(b)) << 16);
}

// Bytes `byte` and `byte + 1` of w as int8 codes, converted to fp16 (exact: |code| <= 128).
__device__ __forceinline__ uint32_t i8x2_to_half2_bits(uint32_t w, int byte) {
  const int a = int(int8_t(uint8_t((w >> (8 * byte)) & 0xFFu)));
  const int b = int(int8_t(uint8_t((w >> (8 * byte + 8)) & 0xFFu)));
  return pack_half2(__int2half_rn(a), __int2half_rn(b));
}

template <int BN, int LDB>
__device__ __forceinline__ void store_stage_half(const RefStageVec<int8_t, BN>& st, __half* Bs) {
  using S = RefStageVec<int8_t, BN>;
  const int row0 = int(threadIdx.x) / S::kVpr, vc = int(threadIdx.x) % S::kVpr;
#pragma unroll
  for (int it = 0; it < S::kIters; ++it) {
    const int row = row0 + it * S::kRowStep;
    const uint4 v = st.r[it];  // 16 codes: bytes 0..3 of x, then y, z, w
    const uint4 lo = make_uint4(i8x2_to_half2_bits(v.x, 0), i8x2_to_half2_bits(v.x, 2), i8x2_to_half2_bits(v.y, 0),
                                i8x2_to_half2_bits(v.y, 2));
    const uint4 hi = make_uint4(i8x2_to_half2_bits(v.z, 0), i8x2_to_half2_bits(v.z, 2), i8x2_to_half2_bits(v.w, 0),
                                i8x2_to_half2_bits(v.w, 2));
    uint4* dst = reinterpret_cast<uint4*>(Bs + row * LDB + vc * 16);
    dst[0] = lo;
    dst[1] = hi;
  }
}

__device__ __forceinline__ __half to_half(__half x) { return x; }
__device__ __forceinline__ __half to_half(int8_t x) { return __int2half_rn(int(x)); }

// Element-wise stage load straight into shared memory (any d, any alignment).
template <typename T, int BN, int LDB>
__device__ __forceinline__ void load_stage_scalar(const ScoreParams& p, int n0, int k0, __half* Bs) {
  const T* base = static_cast<const T*>(p.refs);
  for (int idx = int(threadIdx.x); idx < BN * BK; idx += kThreads) {
    const int row = idx / BK, c = idx % BK;
    const int n = n0 + row, col = k0 + c;
    __half v = __float2half_rn(0.0f);
    if (n < p.n_rows && col < p.d) v = to_half(base[int64_t(n) * p.d + col]);
    Bs[row * LDB + c] = v;
  }
}

// Query stage (fp16 hi and lo, [rows, dp], always aligned and padded).
template <int BM>
struct QueryStageHalf {
  static constexpr int kVecs = 2 * BM * (BK / 8);  // hi and lo
  static constexpr int kIters = kVecs / kThreads;
  static_assert(kVecs % kThreads == 0, "query stage must split evenly over the threads");
  uint4 r[kIters];

  __device__ __forceinline__ void load(const ScoreParams& p, int m0, int k0) {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = it * kThreads + int(threadIdx.x);
      const int which = idx / (BM * 8), rem = idx % (BM * 8);
      const int row = rem / 8, vc = rem % 8;
      const __half* src = (which ? p.q_lo : p.q_hi) + int64_t(m0 + row) * p.dp + k0 + vc * 8;
      r[it] = __ldg(reinterpret_cast<const uint4*>(src));
    }
  }

  template <int LDA>
  __device__ __forceinline__ void store(__half* As_hi, __half* As_lo) const {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int idx = it * kThreads + int(threadIdx.x);
      const int which = idx / (BM * 8), rem = idx % (BM * 8);
      const int row = rem / 8, vc = rem % 8;
      *reinterpret_cast<uint4*>((which ? As_lo : As_hi) + row * LDA + vc * 8) = r[it];
    }
  }
};

// Sum of squares of one fp16 row of a stage, read in a rotated order so that the threads of a
// warp (one row each, row stride LDB = BK + 8 halves) hit distinct banks.
template <int LDB>
__device__ __forceinline__ float row_sumsq_half(const __half* row, int rot) {
  const __half2* r2 = reinterpret_cast<const __half2*>(row);
  float s = 0.0f;
#pragma unroll 8
  for (int jj = 0; jj < BK / 2; ++jj) {
    const float2 f = __half22float2(r2[(jj + rot) & (BK / 2 - 1)]);
    s = fmaf(f.x, f.x, s);
    s = fmaf(f.y, f.y, s);
  }
  return s;
}

template <int BM, int BN>
struct MmaSmem {
  static constexpr int LDA = BK + 8, LDB = BK + 8, LDC = BN + 4;
  static constexpr int kABytes = 2 * BM * LDA * 2;
  static constexpr int kBBytes = BN * LDB * 2;
  static constexpr int kCBytes = BM * LDC * 4;
  static constexpr int kRegion = (kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes);
  static constexpr int kBytes = (kRegion + 127) / 128 * 128 + 2 * BN * 4;
};

}  // namespace detail

// Tensor-core score + filter. T: __half or int8_t. VEC: 16-byte reference loads allowed.
template <typename T, int BM, int BN, int WM, int WN, bool VEC, int MINB>
__global__ void __launch_bounds__(detail::kThreads, MINB) score_mma_kernel(ScoreParams p) {
  using namespace nvcuda;
  using namespace detail;
  using Smem = MmaSmem<BM, BN>;
  constexpr int LDA = Smem::LDA, LDB = Smem::LDB, LDC = Smem::LDC;
  constexpr int WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 16;
  static_assert(WM * WN == kThreads / 32, "8 warps");
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be whole fragments");

  extern __shared__ __align__(128) unsigned char smem[];
  __half* As_hi = reinterpret_cast<__half*>(smem);
  __half* As_lo = As_hi + BM * LDA;
  __half* Bs = As_lo + BM * LDA;
  float* Cs = reinterpret_cast<float*>(smem);  // aliases A and B after the last stage
  float* row_norm = reinterpret_cast<float*>(smem + (Smem::kRegion + 127) / 128 * 128);
  float* row_scale = row_norm + BN;

  const int tid = int(threadIdx.x), warp = tid / 32;
  const int qt = int(blockIdx.x % unsigned(p.q_tiles));
  const int rt = int(blockIdx.x / unsigned(p.q_tiles));
  const int m0 = qt * BM, n0 = rt * BN;
  const int wm = warp / WN, wn = warp % WN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MI][NI];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  QueryStageHalf<BM> qa;
  RefStageVec<T, BN> rb;  // unused registers when !VEC (the compiler drops them)
  float nrm = 0.0f;

  const int nk = p.dp / BK;
  qa.load(p, m0, 0);
  if constexpr (VEC) rb.load(p, n0, 0);
  for (int ks = 0; ks < nk; ++ks) {
    const int k0 = ks * BK;
    __syncthreads();  // every warp is done reading the previous stage
    qa.template store<LDA>(As_hi, As_lo);
    if constexpr (VEC)
      store_stage_half<BN, LDB>(rb, Bs);
    else
      load_stage_scalar<T, BN, LDB>(p, n0, k0, Bs);
    __syncthreads();
    if (ks + 1 < nk) {  // next stage's loads fly while this one computes
      qa.load(p, m0, k0 + BK);
      if constexpr (VEC) rb.load(p, n0, k0 + BK);
    }
    if (p.l2 && tid < BN) nrm += row_sumsq_half<LDB>(Bs + tid * LDB, tid);

    // Per query fragment row: a zeroed partial sum over this stage (hi and lo products),
    // then one fp32 add into the running sum. B fragments are re-read from shared memory
    // per row instead of being held for all rows: fewer registers, no spills.
#pragma unroll
    for (int i = 0; i < MI; ++i) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> part[NI];
#pragma unroll
      for (int j = 0; j < NI; ++j) wmma::fill_fragment(part[j], 0.0f);
#pragma unroll 2
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> ah, al;
        wmma::load_matrix_sync(ah, As_hi + (wm * WTM + i * 16) * LDA + kk, LDA);
        wmma::load_matrix_sync(al, As_lo + (wm * WTM + i * 16) * LDA + kk, LDA);
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
          wmma::load_matrix_sync(b, Bs + (wn * WTN + j * 16) * LDB + kk, LDB);
          wmma::mma_sync(part[j], al, b, part[j]);
          wmma::mma_sync(part[j], ah, b, part[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int t = 0; t < acc[i][j].num_elements; ++t) acc[i][j].x[t] += part[j].x[t];
    }
  }

  __syncthreads();  // A and B are dead: the score tile may overwrite them
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
      wmma::store_matrix_sync(Cs + (wm * WTM + i * 16) * LDC + wn * WTN + j * 16, acc[i][j], LDC,
                              wmma::mem_row_major);
  if (tid < BN) {
    const int n = n0 + tid;
    const float sc = (p.scales != nullptr && n < p.n_rows) ? p.scales[n] : 1.0f;
    row_scale[tid] = sc;
    row_norm[tid] = nrm * sc * sc;
  }
  __syncthreads();
  filter_tile<BM, BN, LDC>(p, Cs, row_norm, row_scale, m0, n0);
}

namespace detail {

template <int BM, int BN>
struct SimtSmem {
  static constexpr int LDS = BK + 1;  // odd stride: row-per-thread and column reads are conflict-free
  static constexpr int LDC = BN + 4;
  static constexpr int kABytes = BM * LDS * 4;
  static constexpr int kBBytes = BN * LDS * 4;
  static constexpr int kCBytes = BM * LDC * 4;
  static constexpr int kRegion = (kABytes + kBBytes > kCBytes ? kABytes + kBBytes : kCBytes);
  static constexpr int kBytes = (kRegion + 127) / 128 * 128 + 2 * BN * 4;
};

}  // namespace detail

// fp32 references: SIMT FMA tiles. Thread (ty, tx) of a 16 x 16 grid computes rows ty + 16 i
// and columns tx + 16 j of the tile.
template <int BM, int BN, bool VEC, int MINB>
__global__ void __launch_bounds__(detail::kThreads, MINB) score_simt_kernel(ScoreParams p) {
  using namespace detail;
  using Smem = SimtSmem<BM, BN>;
  constexpr int LDS = Smem::LDS, LDC = Smem::LDC;
  constexpr int TM = BM / 16, TN = BN / 16;
  constexpr int A_ITERS = BM * (BK / 4) / kThreads;
  using RS = RefStageVec<float, BN>;
  static_assert(BM * (BK / 4) % kThreads == 0, "query stage must split evenly");

  extern __shared__ __align__(128) unsigned char smem[];
  float* As = reinterpret_cast<float*>(smem);
  float* Bs = As + BM * LDS;
  float* Cs = reinterpret_cast<float*>(smem);
  float* row_norm = reinterpret_cast<float*>(smem + (Smem::kRegion + 127) / 128 * 128);
  float* row_scale = row_norm + BN;

  const int tid = int(threadIdx.x), ty = tid / 16, tx = tid % 16;
  const int qt = int(blockIdx.x % unsigned(p.q_tiles));
  const int rt = int(blockIdx.x / unsigned(p.q_tiles));
  const int m0 = qt * BM, n0 = rt * BN;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  float nrm = 0.0f;

  float4 ra[A_ITERS];
  RS rb;
  auto load_a = [&](int k0) {
#pragma unroll
    for (int it = 0; it < A_ITERS; ++it) {
      const int idx = it * kThreads + tid;
      const int row = idx / (BK / 4), vc = idx % (BK / 4);
      ra[it] = __ldg(reinterpret_cast<const float4*>(p.q_f32 + int64_t(m0 + row) * p.dp + k0 + vc * 4));
    }
  };

  const int nk = p.dp / BK;
  load_a(0);
  if constexpr (VEC) rb.load(p, n0, 0);
  for (int ks = 0; ks < nk; ++ks) {
    const int k0 = ks * BK;
    __syncthreads();
#pragma unroll
    for (int it = 0; it < A_ITERS; ++it) {
      const int idx = it * kThreads + tid;
      const int row = idx / (BK / 4), vc = idx % (BK / 4);
      float* dst = As + row * LDS + vc * 4;
      dst[0] = ra[it].x;
      dst[1] = ra[it].y;
      dst[2] = ra[it].z;
      dst[3] = ra[it].w;
    }
    if constexpr (VEC) {
#pragma unroll
      for (int it = 0; it < RS::kIters; ++it) {
        const int row = tid / RS::kVpr + it * RS::kRowStep, vc = tid % RS::kVpr;
        const uint4 v = rb.r[it];
        float* dst = Bs + row * LDS + vc * 4;
        dst[0] = __uint_as_float(v.x);
        dst[1] = __uint_as_float(v.y);
        dst[2] = __uint_as_float(v.z);
        dst[3] = __uint_as_float(v.w);
      }
    } else {
      const float* base = static_cast<const float*>(p.refs);
      for (int idx = tid; idx < BN * BK; idx += kThreads) {
        const int row = idx / BK, c = idx % BK;
        const int n = n0 + row, col = k0 + c;
        Bs[row * LDS + c] = (n < p.n_rows && col < p.d) ? base[int64_t(n) * p.d + col] : 0.0f;
      }
    }
    __syncthreads();
    if (ks + 1 < nk) {
      load_a(k0 + BK);
      if constexpr (VEC) rb.load(p, n0, k0 + BK);
    }
    if (p.l2 && tid < BN) {
      const float* row = Bs + tid * LDS;
      float part = 0.0f;
#pragma unroll 8
      for (int j = 0; j < BK; ++j) part = fmaf(row[j], row[j], part);
      nrm += part;
    }
    // Per-stage partial sums (as in the tensor-core path): FMA chains of 64 instead of D keep
    // the rounding error near the CPU kernel's for large D.
    float part[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) part[i][j] = 0.0f;
#pragma unroll 4
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[(ty + 16 * i) * LDS + kk];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[(tx + 16 * j) * LDS + kk];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) part[i][j] = fmaf(a[i], b[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] += part[i][j];
  }

  __syncthreads();
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) Cs[(ty + 16 * i) * LDC + tx + 16 * j] = acc[i][j];
  if (tid < BN) {
    row_scale[tid] = 1.0f;
    row_norm[tid] = nrm;
  }
  __syncthreads();
  filter_tile<BM, BN, LDC>(p, Cs, row_norm, row_scale, m0, n0);
}

// Launchers (one translation unit per storage type). `tile` 0: small (BM = 16), 1: medium,
// 2: large; `vec`: 16-byte loads allowed (d * element size % 16 == 0, aligned base).
void launch_score_f16(ScoreParams p, int tile, bool vec, cudaStream_t stream);
void launch_score_i8(ScoreParams p, int tile, bool vec, cudaStream_t stream);
void launch_score_f32(ScoreParams p, int tile, bool vec, cudaStream_t stream);

// Rows of query padding the prepared query arrays carry (largest BM).
constexpr int kQueryRowPad = 128;

// Tile choice for a block of nq queries.
inline int tile_for_queries(int nq) { return nq <= 16 ? 0 : (nq <= 64 ? 1 : 2); }

}  // namespace cuda
}  // namespace csi
