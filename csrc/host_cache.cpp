#include "fastsafetensors/host_cache.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "fastsafetensors/settings.hpp"

namespace fst {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kMaxHoldSeconds = 1e6;  // keeps time arithmetic far from overflow
// Memory kept this long is given to the kernel (MADV_FREE). Not at once: a load that follows the
// previous one's free within this time (a server reloading, a benchmark's next trial, a model
// loaded in batches) would wait for the madvise (~50 ms a GB) of the memory it is about to reuse.
constexpr auto kLazyAfter = std::chrono::seconds(1);

struct Entry {
  Mapping m;
  Clock::time_point freed;
  bool lazy = false;  // MADV_FREE done
  bool busy = false;  // the reclaimer is madvising it: nobody may write into it meanwhile
};

size_t default_limit() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  size_t quarter = pages > 0 && page > 0 ? static_cast<size_t>(pages) / 4 * static_cast<size_t>(page) : 0;
  constexpr uint64_t kMaxMiB = SIZE_MAX >> 20;  // MiB that still fit in size_t as bytes
  return static_cast<size_t>(settings::get_uint("FASTSAFETENSORS_HOST_CACHE_MB", quarter >> 20, kMaxMiB)) << 20;
}

double clamped_hold(double seconds) { return std::clamp(seconds, 0.0, kMaxHoldSeconds); }

double default_hold() { return settings::get_float("FASTSAFETENSORS_HOST_CACHE_SECONDS", 5.0, kMaxHoldSeconds); }

void unmap(const std::vector<Mapping>& maps) noexcept {
  for (const Mapping& m : maps) ::munmap(m.base, m.size);
}

class Cache {
 public:
  static Cache& get() {
    // Never destroyed: the reclaimer thread may still be waiting on it while the process exits.
    static Cache* cache = new Cache();
    return *cache;
  }

  Mapping take(size_t size, bool huge) {
    static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    if (size == 0 || size % page != 0) return {};
    std::unique_lock<std::mutex> lock(mu_);
    auto best = entries_.end();
    for (;;) {
      best = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->m.huge != huge || it->m.size < size) continue;
        if (best == entries_.end() || it->m.size < best->m.size) best = it;
      }
      if (best == entries_.end() || !best->busy) break;
      // Writing into it while MADV_FREE runs could lose the writes; the madvise is far shorter
      // than faulting fresh pages in.
      idle_.wait(lock, [this] { return !madvising_; });
    }
    if (best == entries_.end()) {
      ++misses_;
      return {};
    }
    ++hits_;
    bytes_ -= size;
    Mapping out{best->m.base, size, huge};
    if (best->m.size == size) {
      entries_.erase(best);
    } else {  // the tail stays kept: unmapping part of a mapping leaves the rest valid
      best->m.base = static_cast<uint8_t*>(best->m.base) + size;
      best->m.size -= size;
    }
    return out;
  }

  void give(Mapping m) noexcept {
    std::vector<Mapping> drop;
    bool kept = false;
    try {
      std::lock_guard<std::mutex> lock(mu_);
      if (m.size <= limit_) {
        start_reclaimer();
        entries_.push_back(Entry{m, Clock::now()});
        kept = true;
        bytes_ += m.size;
        evict_over_limit(drop);
        wake_.notify_one();
      }
    } catch (...) {  // no thread or no memory for the bookkeeping: what is not kept is unmapped
    }
    if (!kept) ::munmap(m.base, m.size);
    unmap(drop);
  }

  void clear() {
    std::vector<Mapping> drop;
    {
      std::unique_lock<std::mutex> lock(mu_);
      idle_.wait(lock, [this] { return !madvising_; });
      for (const Entry& e : entries_) drop.push_back(e.m);
      entries_.clear();
      bytes_ = 0;
    }
    unmap(drop);
  }

  void configure(size_t limit, double hold) {
    std::vector<Mapping> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = limit;
      hold_ = clamped_hold(hold);
      evict_over_limit(drop);
      wake_.notify_one();
    }
    unmap(drop);
    if (limit == 0) clear();
  }

  HostCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    HostCacheStats s;
    s.bytes = bytes_;
    s.entries = entries_.size();
    for (const Entry& e : entries_) s.lazy_bytes += e.lazy ? e.m.size : 0;
    s.hits = hits_;
    s.misses = misses_;
    s.limit = limit_;
    s.hold_seconds = hold_;
    return s;
  }

 private:
  Cache() : limit_(default_limit()), hold_(default_hold()) {
    // A forked child has the mappings but not the reclaimer thread; the lock is held across
    // fork so that the child never inherits it half-taken.
    ::pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); }, [] { get().after_fork_in_child(); });
  }

  void after_fork_in_child() {
    // The condition variables may count waiters (the parent's reclaimer) that do not exist here:
    // a notify or wait on them could block for good. No other thread runs yet: rebuild them.
    new (&wake_) std::condition_variable();
    new (&idle_) std::condition_variable();
    reclaimer_ = false;
    madvising_ = false;
    for (Entry& e : entries_) e.busy = false;
    mu_.unlock();
  }

  // Oldest first; callers hold mu_ and unmap `drop` after releasing it.
  void evict_over_limit(std::vector<Mapping>& drop) {
    for (auto it = entries_.begin(); bytes_ > limit_ && it != entries_.end();) {
      if (it->busy) {
        ++it;
        continue;
      }
      drop.push_back(it->m);
      bytes_ -= it->m.size;
      it = entries_.erase(it);
    }
  }

  void start_reclaimer() {
    if (reclaimer_) return;
    std::thread([this] { reclaim(); }).detach();
    reclaimer_ = true;
  }

  Clock::duration hold() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(hold_));
  }

  // The reclaimer: gives entries kept kLazyAfter to the kernel with MADV_FREE (outside the lock:
  // it takes ~50 ms a GB), unmaps entries past their hold time, and sleeps until the next is due.
  void reclaim() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      Clock::time_point now = Clock::now();
      auto fresh = std::find_if(entries_.begin(), entries_.end(),
                                [now](const Entry& e) { return !e.lazy && e.freed + kLazyAfter <= now; });
      if (fresh != entries_.end()) {
        fresh->busy = madvising_ = true;
        lock.unlock();
        ::madvise(fresh->m.base, fresh->m.size, MADV_FREE);
        lock.lock();
        fresh->busy = madvising_ = false;
        fresh->lazy = true;
        idle_.notify_all();
        continue;
      }
      std::vector<Mapping> expired;
      Clock::time_point next = Clock::time_point::max();
      for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->freed + hold() <= now) {
          expired.push_back(it->m);
          bytes_ -= it->m.size;
          it = entries_.erase(it);
        } else {
          next = std::min(next, it->lazy ? it->freed + hold() : std::min(it->freed + hold(), it->freed + kLazyAfter));
          ++it;
        }
      }
      if (!expired.empty()) {
        lock.unlock();
        unmap(expired);
        lock.lock();
      } else if (next == Clock::time_point::max()) {
        wake_.wait(lock);
      } else {
        wake_.wait_until(lock, next);
      }
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;  // the reclaimer: a new entry or new bounds
  std::condition_variable idle_;  // take(), clear(): the reclaimer finished an madvise
  std::list<Entry> entries_;      // oldest first; a list, so the reclaimer's entry stays put
  size_t bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  size_t limit_;
  double hold_;
  bool reclaimer_ = false;
  bool madvising_ = false;
};

}  // namespace

Mapping host_cache_take(size_t size, bool huge) {
  try {
    return Cache::get().take(size, huge);
  } catch (const SettingsError&) {  // the cache's variables are malformed: say so, not run without it
    throw;
  } catch (...) {  // a lock that cannot be taken: allocate fresh
    return {};
  }
}

void host_cache_give(Mapping m) noexcept {
  if (m.base == nullptr) return;
  try {
    Cache::get().give(m);
  } catch (...) {  // no cache to be had: the mapping is simply unmapped
    ::munmap(m.base, m.size);
  }
}

void host_cache_clear() noexcept {
  try {
    Cache::get().clear();
  } catch (...) {
  }
}

void host_cache_configure(size_t limit_bytes, double hold_seconds) {
  Cache::get().configure(limit_bytes, hold_seconds);
}

HostCacheStats host_cache_stats() {
  try {
    return Cache::get().stats();
  } catch (const SettingsError&) {  // as in host_cache_take
    throw;
  } catch (...) {
    return {};
  }
}

}  // namespace fst
