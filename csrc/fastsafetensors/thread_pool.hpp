// A persistent pool of worker threads running one parallel loop at a time. Loads reuse it, so
// no load pays for thread start-up.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>

namespace fst {

class ThreadPool {
 public:
  // Throws ResourceError, with no thread left running, when the OS refuses one of the threads.
  explicit ThreadPool(unsigned threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const noexcept { return threads_; }

  // Runs body(worker, i) for i in [0, tasks) on the workers and the calling thread; `worker`
  // is in [0, size()). The first exception stops handing out tasks and is rethrown here after
  // every running task has finished. Loops from several callers run one after another.
  // Safe in a forked child whatever the parent's threads were doing at fork(): the child starts
  // workers of its own (and may throw ResourceError doing so).
  void parallel_for(size_t tasks, const std::function<void(unsigned worker, size_t task)>& body);

  // Test seam (fault injection): called before each thread start; true makes that start fail as
  // std::thread does when the OS refuses a thread. nullptr removes it.
  using StartHook = bool (*)();
  static void set_start_hook(StartHook hook) noexcept;

 private:
  struct Loop;
  struct Workers;  // the threads of one process, with the mutexes and condition variables they use
  Workers* workers();

  unsigned threads_;
  std::atomic<Workers*> workers_;
};

}  // namespace fst
