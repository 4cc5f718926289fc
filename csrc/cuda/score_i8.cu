// Score + filter kernels for int8 references with per-row scales (tensor cores; int8 codes
// are exact in fp16, the scale is applied to the fp32 result).
#include "cuda/score_launch.cuh"

namespace csi {
namespace cuda {

void launch_score_i8(ScoreParams p, int tile, bool vec, cudaStream_t stream) {
  detail::launch_mma_tile<int8_t>(p, tile, vec, stream);
}

}  // namespace cuda
}  // namespace csi
