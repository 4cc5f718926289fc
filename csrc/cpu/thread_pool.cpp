#include "cpu/thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace csi {
namespace {

struct Job {
  const std::function<void(int64_t)>* fn = nullptr;
  int64_t ntasks = 0;
  std::atomic<int64_t> next{0};
  int64_t done = 0;      // guarded by m
  int helpers_left = 0;  // guarded by the pool mutex
  std::exception_ptr error;
  std::mutex m;
  std::condition_variable cv;

  // Claims and runs tasks until none are left; returns after the last claimed one.
  void work() {
    int64_t finished = 0;
    std::exception_ptr err;
    for (int64_t i = next.fetch_add(1); i < ntasks; i = next.fetch_add(1)) {
      try {
        (*fn)(i);
      } catch (...) {
        if (!err) err = std::current_exception();
      }
      ++finished;
    }
    if (finished == 0 && !err) return;
    std::lock_guard<std::mutex> lock(m);
    if (err && !error) error = err;
    done += finished;
    if (done == ntasks) cv.notify_all();
  }
};

class Pool {
 public:
  void run(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
    if (ntasks <= 0) return;
    if (nthreads <= 1 || ntasks == 1) {
      for (int64_t i = 0; i < ntasks; ++i) fn(i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->ntasks = ntasks;
    const int helpers = int(std::min<int64_t>(nthreads, ntasks)) - 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      grow(helpers);
      job->helpers_left = helpers;
      jobs_.push_back(job);
    }
    cv_.notify_all();
    job->work();
    {
      std::unique_lock<std::mutex> lock(job->m);
      job->cv.wait(lock, [&] { return job->done == job->ntasks; });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = jobs_.begin(); it != jobs_.end(); ++it)
        if (it->get() == job.get()) {
          jobs_.erase(it);
          break;
        }
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void grow(int n) {  // requires mu_
    while (workers_ < n) {
      std::thread(&Pool::loop, this).detach();
      ++workers_;
    }
  }

  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !jobs_.empty(); });
        job = jobs_.front();
        if (--job->helpers_left <= 0 || job->next.load() >= job->ntasks) jobs_.pop_front();
      }
      job->work();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  int workers_ = 0;
};

// Deliberately leaked: worker threads block on the pool forever and must never see it
// destroyed during interpreter shutdown.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_mu;

void reset_after_fork() { g_pool.store(nullptr); }

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lock(g_pool_mu);
  p = g_pool.load();
  if (!p) {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, reset_after_fork); });
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
  pool().run(ntasks, nthreads, fn);
}

}  // namespace csi
