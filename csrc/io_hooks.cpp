#include "fastsafetensors/io_hooks.hpp"

#include <atomic>

namespace fst::io_hooks {
namespace {
std::atomic<PreadvFn> g_preadv{&::preadv};
}

ssize_t preadv(int fd, const iovec* iov, int iovcnt, off_t offset) {
  return g_preadv.load(std::memory_order_relaxed)(fd, iov, iovcnt, offset);
}

PreadvFn set_preadv(PreadvFn fn) noexcept {
  return g_preadv.exchange(fn ? fn : &::preadv);
}

}  // namespace fst::io_hooks
