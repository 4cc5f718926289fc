// Score + filter kernels for fp16 references (tensor cores).
#include "cuda/score_launch.cuh"

namespace csi {
namespace cuda {

void launch_score_f16(ScoreParams p, int tile, bool vec, cudaStream_t stream) {
  detail::launch_mma_tile<__half>(p, tile, vec, stream);
}

}  // namespace cuda
}  // namespace csi
