#include "cpu/bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace csi {

double memory_read_bandwidth(int64_t nbytes, int threads, int repeats) {
  if (nbytes < (int64_t(1) << 20)) throw std::invalid_argument("bandwidth probe needs at least 1 MiB");
  threads = std::max(1, threads);
  const int64_t n = nbytes / int64_t(sizeof(float));
  std::unique_ptr<float[]> buf(new float[size_t(n)]);
  const cpu::KernelTable& kt = *cpu::select_kernels("");
  auto slab = [&](int64_t t, int64_t* lo, int64_t* hi) {
    *lo = n * t / threads;
    *hi = n * (t + 1) / threads;
  };
  // First touch from the threads that will read, so pages land near them.
  parallel_for(threads, threads, [&](int64_t t) {
    int64_t lo, hi;
    slab(t, &lo, &hi);
    std::fill(buf.get() + lo, buf.get() + hi, 1.0f);
  });
  double best = 0.0;
  std::atomic<float> sink{0.0f};
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(threads, threads, [&](int64_t t) {
      int64_t lo, hi;
      slab(t, &lo, &hi);
      const float s = kt.stream_sum(buf.get() + lo, hi - lo);
      float cur = sink.load();
      while (!sink.compare_exchange_weak(cur, cur + s)) {
      }
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n) * sizeof(float) / dt);
  }
  if (sink.load() < 0.0f) throw std::logic_error("unreachable");
  return best;
}

}  // namespace csi
