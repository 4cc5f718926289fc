#include "cpu/bandwidth.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>

#include "cpu/thread_pool.h"

namespace csi {
namespace {

// Sums 64-bit words with independent accumulators. Integer adds (not float) so any bit pattern
// reads at full speed; the x86-64 baseline vectorises this to 16-byte loads, far more than one
// core's share of DRAM bandwidth, so the result measures memory, not the loop.
uint64_t sum_words(const uint64_t* x, int64_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += x[i];
    a1 += x[i + 1];
    a2 += x[i + 2];
    a3 += x[i + 3];
    a4 += x[i + 4];
    a5 += x[i + 5];
    a6 += x[i + 6];
    a7 += x[i + 7];
  }
  for (; i < n; ++i) a0 += x[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

}  // namespace

double read_rate(const void* data, int64_t nbytes, int threads, int repeats) {
  if (nbytes < int64_t(1) << 20) throw std::invalid_argument("a read-rate measurement needs at least 1 MiB");
  threads = std::max(1, threads);
  const auto* words = static_cast<const uint64_t*>(data);
  const int64_t n = nbytes / 8;
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(threads, threads, [&](int64_t t) {
      const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
      sink.fetch_add(sum_words(words + lo, hi - lo), std::memory_order_relaxed);
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n * 8) / dt);
  }
  if (sink.load() == 0x5eed) best += 0.0;  // keeps the sums observable
  return best;
}

double memory_read_bandwidth(int64_t nbytes, int threads, int repeats) {
  if (nbytes < int64_t(1) << 20) throw std::invalid_argument("bandwidth probe needs at least 1 MiB");
  threads = std::max(1, threads);
  // 2 MiB aligned and advised for huge pages, like numpy's large arrays, so the probe reads
  // memory the way the kernels read user arrays.
  constexpr size_t kAlign = size_t(2) << 20;
  const size_t bytes = (size_t(nbytes) + kAlign - 1) / kAlign * kAlign;
  void* raw = std::aligned_alloc(kAlign, bytes);
  if (!raw) throw std::bad_alloc();
  std::unique_ptr<void, void (*)(void*)> buf(raw, std::free);
#ifdef MADV_HUGEPAGE
  madvise(raw, bytes, MADV_HUGEPAGE);
#endif
  auto* words = static_cast<uint64_t*>(raw);
  const int64_t n = int64_t(bytes / 8);
  // First touch from the threads that will read, so pages land near them. The contents are
  // pseudo-random: pages of identical bytes can be merged or compressed by the host (seen on
  // this project's VMs: a constant-filled buffer "read" at 1.6x the real rate).
  parallel_for(threads, threads, [&](int64_t t) {
    uint64_t state = 0x9E3779B97F4A7C15ull * uint64_t(t + 1);
    for (int64_t i = n * t / threads; i < n * (t + 1) / threads; ++i) {
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);  // splitmix64
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      words[i] = z ^ (z >> 31);
    }
  });
  return read_rate(raw, int64_t(bytes), threads, repeats);
}

}  // namespace csi
