#include "fastsafetensors/io_hooks.hpp"

#include <unistd.h>

#include <atomic>

namespace fst::io_hooks {
namespace {
std::atomic<PreadFn> g_pread{&::pread};
}

ssize_t pread(int fd, void* buf, size_t count, off_t offset) {
  return g_pread.load(std::memory_order_relaxed)(fd, buf, count, offset);
}

PreadFn set_pread(PreadFn fn) noexcept {
  return g_pread.exchange(fn ? fn : &::pread);
}

}  // namespace fst::io_hooks
