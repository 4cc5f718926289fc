// A process-wide pool of worker threads shared by every top-k call.
//
// Several Python threads may call into the kernels at once (the GIL is released): each call
// becomes a job, the caller works on its own job, and idle workers help the oldest jobs
// first, up to the number of threads that job asked for. After fork() the child gets a new,
// empty pool (the parent's worker threads do not exist there).
#pragma once

#include <cstdint>
#include <functional>

namespace csi {

// Runs fn(i) for i in [0, ntasks) on up to `nthreads` threads (the caller included) and
// returns when all are done. The first exception thrown by a task is rethrown here.
void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn);

}  // namespace csi
