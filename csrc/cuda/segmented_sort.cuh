// Segmented descending sort of 64-bit keys (CUB DeviceSegmentedSort::SortKeysDescending).
//   Segment i is keys [begin[i], end[i]); keys outside every segment are neither read nor
//   written; keys_in is not modified; keys_out must not overlap keys_in or the offsets.
//   With temp == nullptr only temp_bytes is computed. May synchronise `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace csi {
namespace cuda {

cudaError_t sort_segments_descending(void* temp, size_t& temp_bytes, const unsigned long long* keys_in,
                                     unsigned long long* keys_out, int64_t num_items, int64_t num_segments,
                                     const int* begin, const int* end, cudaStream_t stream);

}  // namespace cuda
}  // namespace csi
