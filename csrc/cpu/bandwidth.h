// Measures this machine's memory read bandwidth with the same SIMD loads the kernels use.
#pragma once

#include <cstdint>

namespace csi {

// Best-of-`repeats` read rate in bytes/s over a buffer of `nbytes` (choose it well above the
// last-level cache) using `threads` threads.
double memory_read_bandwidth(int64_t nbytes, int threads, int repeats);

}  // namespace csi
