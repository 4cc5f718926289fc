// Makes a device current for a scope and restores the caller's current device afterwards
// (the current device is per host thread, so this is safe under concurrency).
#pragma once

#include <cuda_runtime.h>

#include "cuda/cuda_check.cuh"

namespace csi {
namespace cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) {
      (void)cudaGetLastError();
      prev_ = -1;
    }
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (prev_ >= 0) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

}  // namespace cuda
}  // namespace csi
