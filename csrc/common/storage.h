// Storage type of the reference vectors, shared by the CPU and CUDA kernels.
#pragma once

namespace csi {

enum class Storage : int { kF32 = 0, kF16 = 1, kI8 = 2 };

inline int storage_bytes(Storage s) { return s == Storage::kF32 ? 4 : (s == Storage::kF16 ? 2 : 1); }

}  // namespace csi
