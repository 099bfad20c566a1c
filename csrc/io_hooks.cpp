#include "fastsafetensors/io_hooks.hpp"

#include <fcntl.h>

#include <atomic>

namespace fst::io_hooks {
namespace {
std::atomic<PreadvFn> g_preadv{&::preadv};
// ::open itself is variadic (a mode for O_CREAT), so it cannot be the hook's type.
int plain_open(const char* path, int flags) { return ::open(path, flags); }
std::atomic<OpenFn> g_open{&plain_open};
std::atomic<InterruptCheckFn> g_interrupt_check{nullptr};
}  // namespace

ssize_t preadv(int fd, const iovec* iov, int iovcnt, off_t offset) {
  return g_preadv.load(std::memory_order_relaxed)(fd, iov, iovcnt, offset);
}

PreadvFn set_preadv(PreadvFn fn) noexcept { return g_preadv.exchange(fn ? fn : &::preadv); }

int open(const char* path, int flags) { return g_open.load(std::memory_order_relaxed)(path, flags); }

OpenFn set_open(OpenFn fn) noexcept { return g_open.exchange(fn ? fn : &plain_open); }

void set_interrupt_check(InterruptCheckFn fn) noexcept { g_interrupt_check = fn; }

void check_interrupt() {
  if (InterruptCheckFn fn = g_interrupt_check.load(std::memory_order_relaxed)) fn();
}

}  // namespace fst::io_hooks
