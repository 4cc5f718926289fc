// Score + filter kernels for fp32 references (SIMT fp32 FMAs: exact fp32 arithmetic without
// splitting the references; fp16 storage is the recommended and benchmarked GPU format).
#include "cuda/score_launch.cuh"

namespace csi {
namespace cuda {

void launch_score_f32(ScoreParams p, int tile, bool vec, cudaStream_t stream) {
  using namespace detail;
  if (tile == 0) {
    const int64_t grid = grid_for(p, 16, 128);
    constexpr int smem = SimtSmem<16, 128>::kBytes;
    if (vec)
      launch(score_simt_kernel<16, 128, true, 2>, grid, smem, p, stream, "score kernel (fp32)");
    else
      launch(score_simt_kernel<16, 128, false, 2>, grid, smem, p, stream, "score kernel (fp32)");
  } else {
    const int64_t grid = grid_for(p, 64, 64);
    constexpr int smem = SimtSmem<64, 64>::kBytes;
    if (vec)
      launch(score_simt_kernel<64, 64, true, 2>, grid, smem, p, stream, "score kernel (fp32)");
    else
      launch(score_simt_kernel<64, 64, false, 2>, grid, smem, p, stream, "score kernel (fp32)");
  }
}

}  // namespace cuda
}  // namespace csi
