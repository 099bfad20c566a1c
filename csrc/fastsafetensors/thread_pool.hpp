// A persistent pool of worker threads running one parallel loop at a time. Loads reuse it, so
// no load pays for thread start-up.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fst {

class ThreadPool {
 public:
  // Throws ResourceError, with no thread left running, when the OS refuses one of the threads.
  explicit ThreadPool(unsigned threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const noexcept { return static_cast<unsigned>(workers_.size()) + 1; }

  // Runs body(worker, i) for i in [0, tasks) on the workers and the calling thread; `worker`
  // is in [0, size()). The first exception stops handing out tasks and is rethrown here after
  // every running task has finished. Loops from several callers run one after another.
  void parallel_for(size_t tasks, const std::function<void(unsigned worker, size_t task)>& body);

  // Test seam (fault injection): called before each thread start; true makes that start fail as
  // std::thread does when the OS refuses a thread. nullptr removes it.
  using StartHook = bool (*)();
  static void set_start_hook(StartHook hook) noexcept;

 private:
  struct Loop;
  void worker_main(unsigned index);
  void stop_workers() noexcept;
  static void run_tasks(Loop& loop, unsigned worker);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::mutex caller_mutex_;  // serialises loops from different callers
  Loop* loop_ = nullptr;
  size_t generation_ = 0;
  unsigned busy_ = 0;
  bool stopping_ = false;
};

}  // namespace fst
