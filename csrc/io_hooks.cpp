#include "fastsafetensors/io_hooks.hpp"

#include <atomic>

namespace fst::io_hooks {
namespace {
std::atomic<PreadvFn> g_preadv{&::preadv};
std::atomic<InterruptCheckFn> g_interrupt_check{nullptr};
}  // namespace

ssize_t preadv(int fd, const iovec* iov, int iovcnt, off_t offset) {
  return g_preadv.load(std::memory_order_relaxed)(fd, iov, iovcnt, offset);
}

PreadvFn set_preadv(PreadvFn fn) noexcept { return g_preadv.exchange(fn ? fn : &::preadv); }

void set_interrupt_check(InterruptCheckFn fn) noexcept { g_interrupt_check = fn; }

void check_interrupt() {
  if (InterruptCheckFn fn = g_interrupt_check.load(std::memory_order_relaxed)) fn();
}

}  // namespace fst::io_hooks
