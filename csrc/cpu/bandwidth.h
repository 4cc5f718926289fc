// Measures memory read bandwidth: the ceiling a bandwidth-bound scan is compared against.
#pragma once

#include <cstdint>

namespace csi {

// Best-of-`repeats` rate in bytes/s at which `threads` threads read [data, data + nbytes).
double read_rate(const void* data, int64_t nbytes, int threads, int repeats);

// The same over a fresh buffer of `nbytes` (choose it well above the last-level cache).
double memory_read_bandwidth(int64_t nbytes, int threads, int repeats);

}  // namespace csi
