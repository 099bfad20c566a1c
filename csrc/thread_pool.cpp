#include "fastsafetensors/thread_pool.hpp"

#include <atomic>
#include <cerrno>
#include <exception>
#include <string>
#include <system_error>

#include "fastsafetensors/error.hpp"

namespace fst {

struct ThreadPool::Loop {
  const std::function<void(unsigned, size_t)>* body;
  size_t tasks;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
};

namespace {
std::atomic<ThreadPool::StartHook> g_start_hook{nullptr};
}

void ThreadPool::set_start_hook(StartHook hook) noexcept { g_start_hook = hook; }

ThreadPool::ThreadPool(unsigned threads) {
  unsigned extra = threads > 1 ? threads - 1 : 0;
  workers_.reserve(extra);
  try {
    for (unsigned i = 0; i < extra; ++i) {
      StartHook hook = g_start_hook.load();
      if (hook != nullptr && hook()) throw std::system_error(EAGAIN, std::generic_category(), "injected fault");
      workers_.emplace_back([this, i] { worker_main(i + 1); });
    }
  } catch (const std::system_error& e) {
    // A std::thread left joinable would terminate the process: the started ones are joined.
    size_t started = workers_.size();
    stop_workers();
    throw ResourceError("cannot start reader thread " + std::to_string(started + 2) + " of " + std::to_string(threads) +
                            ": " + e.what() + " (use fewer threads, or raise the process's thread limit)",
                        e.code().value());
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::run_tasks(Loop& loop, unsigned worker) {
  while (!loop.failed.load(std::memory_order_relaxed)) {
    size_t i = loop.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= loop.tasks) return;
    try {
      (*loop.body)(worker, i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(loop.error_mutex);
      if (!loop.error) loop.error = std::current_exception();
      loop.failed = true;
    }
  }
}

void ThreadPool::worker_main(unsigned index) {
  size_t seen = 0;
  while (true) {
    Loop* loop;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || (loop_ != nullptr && generation_ != seen); });
      if (stopping_) return;
      seen = generation_;
      loop = loop_;
      ++busy_;
    }
    run_tasks(*loop, index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --busy_;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallel_for(size_t tasks, const std::function<void(unsigned, size_t)>& body) {
  if (tasks == 0) return;
  std::lock_guard<std::mutex> serial(caller_mutex_);
  Loop loop;
  loop.body = &body;
  loop.tasks = tasks;
  if (!workers_.empty() && tasks > 1) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      loop_ = &loop;
      ++generation_;
    }
    wake_.notify_all();
  }
  run_tasks(loop, 0);
  {
    // Workers that joined this loop must leave it before `loop` goes out of scope.
    std::unique_lock<std::mutex> lock(mutex_);
    loop_ = nullptr;
    done_.wait(lock, [&] { return busy_ == 0; });
  }
  if (loop.error) std::rethrow_exception(loop.error);
}

}  // namespace fst
