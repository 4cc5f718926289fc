// Host interface of the CUDA module (implemented in *.cu, called from bindings_cuda.cpp).
// Plain C++: the bindings are compiled by the host compiler without CUDA headers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/topk_common.h"
#include "cuda/topk_plan.h"

namespace csi {
namespace cuda {

// A CUDA runtime call failed. `code` is the cudaError_t value; `bytes` the allocation size
// for out-of-memory errors (0 otherwise).
class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& what, int code, int64_t bytes) : std::runtime_error(what), code_(code), bytes_(bytes) {}
  int code() const { return code_; }
  bool out_of_memory() const;
  int64_t bytes() const { return bytes_; }

 private:
  int code_;
  int64_t bytes_;
};

// ---- devices ---------------------------------------------------------------------------

// Number of CUDA devices; 0 (never an exception) without a driver or GPU.
int device_count();
// Why device_count() last returned 0 ("" if it did not).
std::string last_error();

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;
  int64_t total_memory = 0;
  int multiprocessors = 0;
  int64_t l2_cache_bytes = 0;
  int memory_bus_width = 0;
  int64_t shared_memory_per_block_optin = 0;
  int64_t shared_memory_per_multiprocessor = 0;
  int max_threads_per_multiprocessor = 0;
  int pci_bus_id = 0;
  int pci_device_id = 0;
  bool memory_pools_supported = false;
  int memory_clock_khz = 0;
  int64_t free_memory = 0;
};
DeviceInfo device_info(int device);

int runtime_version();
int driver_version();  // 0 without a driver

// Median device-to-device copy rate (bytes read + written per second) over `repeats` copies
// of `nbytes` bytes, timed with events.
double copy_bandwidth(int64_t nbytes, int repeats, int device);

// ---- device memory (DeviceArray) -------------------------------------------------------

void* device_alloc(int64_t nbytes, int device);
void device_free(void* ptr, int device) noexcept;
void copy_to_device(void* dst, const void* src, int64_t nbytes, int device);
void copy_to_host(void* dst, const void* src, int64_t nbytes, int device);

// Where a pointer lives: -1 host memory (pageable or pinned), otherwise the device ordinal of
// device or managed memory.
int pointer_device(const void* ptr);

// ---- top-k -----------------------------------------------------------------------------

struct TopkArgs {
  int device = 0;
  const float* queries = nullptr;  // [nq, d] fp32, C order
  bool queries_on_device = false;
  int64_t nq = 0, d = 0;
  const void* refs = nullptr;  // [n, d] in `type`, C order
  bool refs_on_device = false;
  Storage type = Storage::kF32;
  const float* scales = nullptr;  // [n] (int8 only)
  bool scales_on_device = false;
  int64_t n = 0, k = 0;
  bool l2 = false;
  // Producer streams from __cuda_array_interface__ v3 (0: none; 1: legacy default stream;
  // 2: per-thread default stream; else a cudaStream_t). Synchronised before reading.
  uintptr_t sync_streams[3] = {0, 0, 0};
  // Test hooks (0 = automatic): candidate capacity, rows per host slab, rows per chunk,
  // device bytes for the per-query state of one block.
  int64_t cap = 0, slab_rows = 0, max_chunk = 0, budget_bytes = 0;
};

// Exact top-k on the GPU. out_scores/out_index: host arrays [nq, k]. Throws
// std::invalid_argument for bad arguments, topk::NonFiniteError for NaN/Inf scores,
// CudaError for CUDA failures. Thread-safe: every call owns its streams and buffers.
topk::RunStats topk(const TopkArgs& args, float* out_scores, int64_t* out_index);

}  // namespace cuda
}  // namespace csi
