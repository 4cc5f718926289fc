// The merge step's segmented sort (CUB), in its own translation unit: CUB's kernels are
// large to compile, and setup.py builds this file without the spill warnings it enables for
// our kernels (CUB's tuned policies spill a few bytes on some architectures by design).
#include <cub/device/device_segmented_sort.cuh>

#include "cuda/segmented_sort.cuh"

namespace csi {
namespace cuda {

cudaError_t sort_segments_descending(void* temp, size_t& temp_bytes, const unsigned long long* keys_in,
                                     unsigned long long* keys_out, int64_t num_items, int64_t num_segments,
                                     const int* begin, const int* end, cudaStream_t stream) {
  return cub::DeviceSegmentedSort::SortKeysDescending(temp, temp_bytes, keys_in, keys_out, num_items, num_segments,
                                                      begin, end, stream);
}

}  // namespace cuda
}  // namespace csi
