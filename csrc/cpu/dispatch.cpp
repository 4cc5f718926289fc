// Picks the best kernel variant the running CPU supports (checked once, at first use).
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/kernels.h"

namespace csi {
namespace cpu {
namespace {

struct Support {
  const char* names[3];
  const KernelTable* tables[3];
  int count;
};

Support detect() {
  Support s{};
  __builtin_cpu_init();
  // AVX-512 also needs the OS to save the zmm state; __builtin_cpu_supports checks XCR0.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    s.names[s.count] = "avx512";
    s.tables[s.count++] = kernels_avx512();
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    s.names[s.count] = "avx2";
    s.tables[s.count++] = kernels_avx2();
  }
  s.names[s.count] = "generic";
  s.tables[s.count++] = kernels_generic();
  return s;
}

const Support& support() {
  static const Support s = detect();
  return s;
}

}  // namespace

const char* const* supported_isas(int* count) {
  *count = support().count;
  return support().names;
}

const KernelTable* select_kernels(const char* isa) {
  const Support& s = support();
  if (isa == nullptr || isa[0] == '\0' || std::strcmp(isa, "auto") == 0) return s.tables[0];
  for (int i = 0; i < s.count; ++i)
    if (std::strcmp(isa, s.names[i]) == 0) return s.tables[i];
  if (std::strcmp(isa, "avx512") == 0 || std::strcmp(isa, "avx2") == 0)
    throw std::invalid_argument(std::string("this CPU does not support the '") + isa + "' kernels");
  throw std::invalid_argument(std::string("unknown kernel variant '") + isa +
                              "' (expected auto, avx512, avx2 or generic)");
}

}  // namespace cpu
}  // namespace csi
