// Kernel launch helpers shared by the per-storage-type translation units.
#pragma once

#include <climits>
#include <stdexcept>

#include "cuda/cuda_check.cuh"
#include "cuda/score_kernels.cuh"

namespace csi {
namespace cuda {
namespace detail {

inline int64_t grid_for(ScoreParams& p, int bm, int bn) {
  p.q_tiles = (p.nq + bm - 1) / bm;
  const int64_t grid = int64_t(p.q_tiles) * ((int64_t(p.n_rows) + bn - 1) / bn);
  if (grid < 1 || grid > INT_MAX) throw std::logic_error("score kernel: grid size out of range");
  return grid;
}

template <typename Kernel>
inline void launch(Kernel kernel, int64_t grid, int smem, const ScoreParams& p, cudaStream_t stream,
                   const char* where) {
  // Above 48 KiB a kernel must opt in to more dynamic shared memory (per device, cheap).
  if (smem > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), where);
  kernel<<<unsigned(grid), kThreads, size_t(smem), stream>>>(p);
  check_launch(where);
}

template <typename T, int BM, int BN, int WM, int WN, int MINB>
void launch_mma(ScoreParams p, bool vec, cudaStream_t stream) {
  const int64_t grid = grid_for(p, BM, BN);
  constexpr int smem = MmaSmem<BM, BN>::kBytes;
  if (vec)
    launch(score_mma_kernel<T, BM, BN, WM, WN, true, MINB>, grid, smem, p, stream, "score kernel (tensor cores)");
  else
    launch(score_mma_kernel<T, BM, BN, WM, WN, false, MINB>, grid, smem, p, stream, "score kernel (tensor cores)");
}

template <typename T>
void launch_mma_tile(const ScoreParams& p, int tile, bool vec, cudaStream_t stream) {
  switch (tile) {
    case 0:
      launch_mma<T, 16, 256, 1, 8, 2>(p, vec, stream);
      break;
    case 1:
      launch_mma<T, 64, 128, 2, 4, 1>(p, vec, stream);
      break;
    default:
      launch_mma<T, 128, 128, 2, 4, 1>(p, vec, stream);
      break;
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace csi
