#include "fastsafetensors/thread_pool.hpp"

#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "fastsafetensors/error.hpp"

namespace fst {

namespace {
std::atomic<ThreadPool::StartHook> g_start_hook{nullptr};
}

void ThreadPool::set_start_hook(StartHook hook) noexcept { g_start_hook = hook; }

struct ThreadPool::Loop {
  const std::function<void(unsigned, size_t)>* body;
  size_t tasks;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;

  void run_tasks(unsigned worker) {
    while (!failed.load(std::memory_order_relaxed)) {
      size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= tasks) return;
      try {
        (*body)(worker, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  }
};

struct ThreadPool::Workers {
  const pid_t pid = ::getpid();  // the process these threads run in
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable wake;
  std::condition_variable done;
  std::mutex caller_mutex;  // serialises loops from different callers
  Loop* loop = nullptr;
  size_t generation = 0;
  unsigned busy = 0;
  bool stopping = false;

  explicit Workers(unsigned total) {
    unsigned extra = total > 1 ? total - 1 : 0;
    threads.reserve(extra);
    try {
      for (unsigned i = 0; i < extra; ++i) {
        StartHook hook = g_start_hook.load();
        if (hook != nullptr && hook()) throw std::system_error(EAGAIN, std::generic_category(), "injected fault");
        threads.emplace_back([this, i] { main(i + 1); });
      }
    } catch (const std::system_error& e) {
      // A std::thread left joinable would terminate the process: the started ones are joined.
      size_t started = threads.size();
      stop();
      throw ResourceError("cannot start reader thread " + std::to_string(started + 2) + " of " +
                              std::to_string(total) + ": " + e.what() +
                              " (use fewer threads, or raise the process's thread limit)",
                          e.code().value());
    }
  }

  ~Workers() { stop(); }

  void stop() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    wake.notify_all();
    for (auto& t : threads) t.join();
    threads.clear();
  }

  void main(unsigned index) {
    size_t seen = 0;
    while (true) {
      Loop* current;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return stopping || (loop != nullptr && generation != seen); });
        if (stopping) return;
        seen = generation;
        current = loop;
        ++busy;
      }
      current->run_tasks(index);
      {
        std::lock_guard<std::mutex> lock(mutex);
        --busy;
      }
      done.notify_all();
    }
  }

  void run(Loop& l) {
    std::lock_guard<std::mutex> serial(caller_mutex);
    if (!threads.empty() && l.tasks > 1) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        loop = &l;
        ++generation;
      }
      wake.notify_all();
    }
    l.run_tasks(0);
    // Workers that joined this loop must leave it before `l` goes out of scope.
    std::unique_lock<std::mutex> lock(mutex);
    loop = nullptr;
    done.wait(lock, [&] { return busy == 0; });
  }
};

ThreadPool::ThreadPool(unsigned threads) : threads_(threads == 0 ? 1 : threads), workers_(new Workers(threads_)) {}

ThreadPool::~ThreadPool() {
  Workers* w = workers_.load();
  if (w->pid == ::getpid()) delete w;  // a forked child's copy is abandoned, as in workers()
}

ThreadPool::Workers* ThreadPool::workers() {
  Workers* w = workers_.load(std::memory_order_acquire);
  if (w->pid == ::getpid()) return w;
  // A forked child: the parent's threads do not exist here, and its mutexes may be held by
  // threads that will never release them (a load running at fork time). They are abandoned,
  // leaked on purpose since joining or destroying them is undefined, and this process starts
  // workers of its own. Of two threads of the child racing here, one installs its workers.
  auto fresh = std::make_unique<Workers>(threads_);
  if (workers_.compare_exchange_strong(w, fresh.get(), std::memory_order_acq_rel)) return fresh.release();
  return w;
}

void ThreadPool::parallel_for(size_t tasks, const std::function<void(unsigned, size_t)>& body) {
  if (tasks == 0) return;
  Loop loop;
  loop.body = &body;
  loop.tasks = tasks;
  workers()->run(loop);
  if (loop.error) std::rethrow_exception(loop.error);
}

}  // namespace fst
