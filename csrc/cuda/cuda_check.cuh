// Error checking for CUDA runtime calls: every call's status is checked and turned into a
// csi::cuda::CudaError carrying the call site (mapped to MemoryError / RuntimeError in Python).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/topk_cuda.h"

namespace csi {
namespace cuda {

// "CUDA error in <where>: <name>: <description>"; out-of-memory errors also name the size.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* where, int64_t bytes = 0);

inline void check(cudaError_t err, const char* where, int64_t bytes = 0) {
  if (err != cudaSuccess) throw_cuda_error(err, where, bytes);
}

// Checks the launch configuration of the kernel just launched (asynchronous faults surface at
// the next synchronising call, which is checked too).
inline void check_launch(const char* where) { check(cudaGetLastError(), where); }

}  // namespace cuda
}  // namespace csi
