#include "fastsafetensors/fault_injection.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cerrno>
#include <stdexcept>
#include <vector>

#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/io_hooks.hpp"
#include "fastsafetensors/thread_pool.hpp"

namespace fst::faults {
namespace {

// One countdown: `skip` calls pass, then `left` calls fail (a negative `left` never runs out).
struct Countdown {
  std::atomic<uint64_t> seen{0};
  std::atomic<uint64_t> skip{0};
  std::atomic<int64_t> left{0};

  void reset(uint64_t after, int64_t count) {
    seen = 0;
    skip = after;
    left = count;
  }
  // True when this call is one that fails. Safe from many reader threads at once.
  bool fire() noexcept {
    if (seen.fetch_add(1) < skip) return false;
    int64_t n = left.load();
    while (n != 0) {
      if (n < 0) return true;
      if (left.compare_exchange_weak(n, n - 1)) return true;
    }
    return false;
  }
};

std::atomic<PreadFault> g_kind{PreadFault::None};
Countdown g_pread;
Countdown g_alloc;
Countdown g_threads;
std::atomic<uint64_t> g_injected{0};

// Half of the bytes the pieces ask for, as the first pieces (the last one cut short).
int halve(const iovec* iov, int iovcnt, iovec* out) {
  size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  size_t want = total > 1 ? total / 2 : total;
  int n = 0;
  for (; n < iovcnt && want > 0; ++n) {
    out[n] = iov[n];
    out[n].iov_len = std::min(out[n].iov_len, want);
    want -= out[n].iov_len;
  }
  return n;
}

ssize_t faulty_preadv(int fd, const iovec* iov, int iovcnt, off_t offset) {
  PreadFault kind = g_kind.load();
  if (kind == PreadFault::None || !g_pread.fire()) return ::preadv(fd, iov, iovcnt, offset);
  ++g_injected;
  switch (kind) {
    case PreadFault::Eio: errno = EIO; return -1;
    case PreadFault::Eintr: errno = EINTR; return -1;
    case PreadFault::Short: {
      std::vector<iovec> half(static_cast<size_t>(iovcnt));
      return ::preadv(fd, half.data(), halve(iov, iovcnt, half.data()), offset);
    }
    case PreadFault::Eof: return 0;
    case PreadFault::Slow:
      std::this_thread::sleep_for(std::chrono::milliseconds(kSlowMillis));
      return ::preadv(fd, iov, iovcnt, offset);
    case PreadFault::Flip: {
      ssize_t n = ::preadv(fd, iov, iovcnt, offset);
      for (int i = 0; n > 0 && i < iovcnt; ++i) {  // the first non-empty piece got at least one byte
        if (iov[i].iov_len == 0) continue;
        static_cast<uint8_t*>(iov[i].iov_base)[0] ^= 0xFF;
        break;
      }
      return n;
    }
    case PreadFault::None: break;
  }
  return ::preadv(fd, iov, iovcnt, offset);
}

int refusing_direct_open(const char* path, int flags) {
  if ((flags & O_DIRECT) == 0) return ::open(path, flags);
  ++g_injected;
  errno = EINVAL;
  return -1;
}

bool failing_allocation(size_t) {
  if (!g_alloc.fire()) return false;
  ++g_injected;
  return true;
}

bool failing_thread_start() {
  if (!g_threads.fire()) return false;
  ++g_injected;
  return true;
}

}  // namespace

PreadFault parse_pread_fault(const std::string& name) {
  if (name == "eio") return PreadFault::Eio;
  if (name == "eintr") return PreadFault::Eintr;
  if (name == "short") return PreadFault::Short;
  if (name == "eof") return PreadFault::Eof;
  if (name == "slow") return PreadFault::Slow;
  if (name == "flip") return PreadFault::Flip;
  throw std::invalid_argument("unknown pread fault '" + name + "' (expected eio, eintr, short, eof, slow or flip)");
}

void set_pread_fault(PreadFault kind, uint64_t after_calls, int64_t count) {
  g_kind = PreadFault::None;  // quiet while the countdown is reset
  g_pread.reset(after_calls, count);
  g_injected = 0;
  g_kind = kind;
  io_hooks::set_preadv(kind == PreadFault::None ? nullptr : &faulty_preadv);
}

void set_direct_open_fault() { io_hooks::set_open(&refusing_direct_open); }

void set_allocation_fault(uint64_t after, int64_t count) {
  g_alloc.reset(after, count);
  HostBuffer::set_fail_hook(&failing_allocation);
}

void set_thread_fault(uint64_t after, int64_t count) {
  g_threads.reset(after, count);
  ThreadPool::set_start_hook(&failing_thread_start);
}

void clear() {
  io_hooks::set_preadv(nullptr);
  io_hooks::set_open(nullptr);
  HostBuffer::set_fail_hook(nullptr);
  ThreadPool::set_start_hook(nullptr);
  g_kind = PreadFault::None;
  g_pread.reset(0, 0);
  g_alloc.reset(0, 0);
  g_threads.reset(0, 0);
}

uint64_t pread_calls() noexcept { return g_pread.seen.load(); }
uint64_t faults_injected() noexcept { return g_injected.load(); }

}  // namespace fst::faults
