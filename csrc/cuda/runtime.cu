// Device queries, device memory helpers and the copy-bandwidth probe of the CUDA module.
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_check.cuh"
#include "cuda/device_guard.cuh"
#include "cuda/topk_cuda.h"

namespace csi {
namespace cuda {

namespace {

std::mutex g_error_mutex;
std::string g_last_error;  // why device_count() last returned 0

void set_last_error(std::string msg) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  g_last_error = std::move(msg);
}

}  // namespace

bool CudaError::out_of_memory() const { return code_ == int(cudaErrorMemoryAllocation); }

void throw_cuda_error(cudaError_t err, const char* where, int64_t bytes) {
  (void)cudaGetLastError();  // clear the per-thread error state (non-sticky errors)
  std::string msg = std::string("CUDA error in ") + where + ": " + cudaGetErrorName(err) + ": " +
                    cudaGetErrorString(err);
  if (err == cudaErrorMemoryAllocation && bytes > 0)
    msg = std::string("CUDA out of memory in ") + where + " allocating " + std::to_string(bytes) + " bytes (" +
          std::to_string(bytes >> 20) + " MiB)";
  throw CudaError(msg, int(err), bytes);
}

int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    set_last_error(std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
    return 0;
  }
  set_last_error(n == 0 ? "no CUDA device found" : "");
  return n;
}

std::string last_error() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  return g_last_error;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return v;
}

DeviceInfo device_info(int device) {
  const int count = device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("no CUDA device " + std::to_string(device) + " (" + std::to_string(count) +
                                " present)");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceInfo info;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.total_memory = int64_t(prop.totalGlobalMem);
  info.multiprocessors = prop.multiProcessorCount;
  info.l2_cache_bytes = prop.l2CacheSize;
  info.memory_bus_width = prop.memoryBusWidth;
  info.shared_memory_per_block_optin = int64_t(prop.sharedMemPerBlockOptin);
  info.shared_memory_per_multiprocessor = int64_t(prop.sharedMemPerMultiprocessor);
  info.max_threads_per_multiprocessor = prop.maxThreadsPerMultiProcessor;
  info.pci_bus_id = prop.pciBusID;
  info.pci_device_id = prop.pciDeviceID;
  info.memory_pools_supported = prop.memoryPoolsSupported != 0;
  int clk = 0;
  if (cudaDeviceGetAttribute(&clk, cudaDevAttrMemoryClockRate, device) == cudaSuccess)
    info.memory_clock_khz = clk;
  else
    (void)cudaGetLastError();
  DeviceGuard guard(device);
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  info.free_memory = int64_t(free_b);
  return info;
}

void* device_alloc(int64_t nbytes, int device) {
  if (nbytes <= 0) return nullptr;
  DeviceGuard guard(device);
  void* p = nullptr;
  check(cudaMalloc(&p, size_t(nbytes)), "cudaMalloc (DeviceArray)", nbytes);
  return p;
}

void device_free(void* ptr, int device) noexcept {
  if (ptr == nullptr) return;
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (cudaSetDevice(device) == cudaSuccess) (void)cudaFree(ptr);
  if (prev >= 0) (void)cudaSetDevice(prev);
  (void)cudaGetLastError();  // e.g. cudaErrorCudartUnloading at interpreter exit
}

void copy_to_device(void* dst, const void* src, int64_t nbytes, int device) {
  if (nbytes <= 0) return;
  DeviceGuard guard(device);
  check(cudaMemcpy(dst, src, size_t(nbytes), cudaMemcpyHostToDevice), "cudaMemcpy host to device");
}

void copy_to_host(void* dst, const void* src, int64_t nbytes, int device) {
  if (nbytes <= 0) return;
  DeviceGuard guard(device);
  check(cudaMemcpy(dst, src, size_t(nbytes), cudaMemcpyDeviceToHost), "cudaMemcpy device to host");
}

int pointer_device(const void* ptr) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

double copy_bandwidth(int64_t nbytes, int repeats, int device) {
  if (nbytes < (1 << 20)) throw std::invalid_argument("copy_bandwidth: nbytes must be at least 1 MiB");
  if (repeats < 1) throw std::invalid_argument("copy_bandwidth: repeats must be >= 1");
  nbytes = nbytes / 256 * 256;
  DeviceGuard guard(device);
  struct Resources {
    void* src = nullptr;
    void* dst = nullptr;
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Resources() {
      if (stream) (void)cudaStreamSynchronize(stream);
      if (src) (void)cudaFree(src);
      if (dst) (void)cudaFree(dst);
      if (start) (void)cudaEventDestroy(start);
      if (stop) (void)cudaEventDestroy(stop);
      if (stream) (void)cudaStreamDestroy(stream);
      (void)cudaGetLastError();
    }
  } r;
  check(cudaMalloc(&r.src, size_t(nbytes)), "cudaMalloc (copy_bandwidth)", nbytes);
  check(cudaMalloc(&r.dst, size_t(nbytes)), "cudaMalloc (copy_bandwidth)", nbytes);
  check(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaEventCreate(&r.start), "cudaEventCreate");
  check(cudaEventCreate(&r.stop), "cudaEventCreate");
  // Non-zero contents (zeros can be faster on some memory systems).
  check(cudaMemsetAsync(r.src, 0x5A, size_t(nbytes), r.stream), "cudaMemsetAsync");
  check(cudaMemcpyAsync(r.dst, r.src, size_t(nbytes), cudaMemcpyDeviceToDevice, r.stream), "warm-up copy");
  std::vector<float> ms;
  for (int i = 0; i < repeats; ++i) {
    check(cudaEventRecord(r.start, r.stream), "cudaEventRecord");
    check(cudaMemcpyAsync(r.dst, r.src, size_t(nbytes), cudaMemcpyDeviceToDevice, r.stream), "cudaMemcpyAsync");
    check(cudaEventRecord(r.stop, r.stream), "cudaEventRecord");
    check(cudaEventSynchronize(r.stop), "cudaEventSynchronize");
    float t = 0.0f;
    check(cudaEventElapsedTime(&t, r.start, r.stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const size_t m = ms.size();
  const double med = m % 2 ? double(ms[m / 2]) : 0.5 * (double(ms[m / 2 - 1]) + double(ms[m / 2]));
  if (!(med > 0.0)) throw std::runtime_error("copy_bandwidth: timer resolution too coarse; use more bytes");
  return 2.0 * double(nbytes) / (med * 1e-3);
}

}  // namespace cuda
}  // namespace csi
