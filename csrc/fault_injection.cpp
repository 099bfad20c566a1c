#include "fastsafetensors/fault_injection.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <stdexcept>

#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/io_hooks.hpp"

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
std::atomic<uint64_t> g_injected{0};

ssize_t faulty_pread(int fd, void* buf, size_t count, off_t offset) {
  PreadFault kind = g_kind.load();
  if (kind == PreadFault::None || !g_pread.fire()) return ::pread(fd, buf, count, offset);
  ++g_injected;
  switch (kind) {
    case PreadFault::Eio: errno = EIO; return -1;
    case PreadFault::Eintr: errno = EINTR; return -1;
    case PreadFault::Short: return ::pread(fd, buf, count > 1 ? count / 2 : count, offset);
    case PreadFault::Eof: return 0;
    case PreadFault::None: break;
  }
  return ::pread(fd, buf, count, offset);
}

bool failing_allocation(size_t) {
  if (!g_alloc.fire()) return false;
  ++g_injected;
  return true;
}

}  // namespace

PreadFault parse_pread_fault(const std::string& name) {
  if (name == "eio") return PreadFault::Eio;
  if (name == "eintr") return PreadFault::Eintr;
  if (name == "short") return PreadFault::Short;
  if (name == "eof") return PreadFault::Eof;
  throw std::invalid_argument("unknown pread fault '" + name + "' (expected eio, eintr, short or eof)");
}

void set_pread_fault(PreadFault kind, uint64_t after_calls, int64_t count) {
  g_kind = PreadFault::None;  // quiet while the countdown is reset
  g_pread.reset(after_calls, count);
  g_injected = 0;
  g_kind = kind;
  io_hooks::set_pread(kind == PreadFault::None ? nullptr : &faulty_pread);
}

void set_allocation_fault(uint64_t after, int64_t count) {
  g_alloc.reset(after, count);
  HostBuffer::set_fail_hook(&failing_allocation);
}

void clear() {
  io_hooks::set_pread(nullptr);
  HostBuffer::set_fail_hook(nullptr);
  g_kind = PreadFault::None;
  g_pread.reset(0, 0);
  g_alloc.reset(0, 0);
}

uint64_t pread_calls() noexcept { return g_pread.seen.load(); }
uint64_t faults_injected() noexcept { return g_injected.load(); }

}  // namespace fst::faults
