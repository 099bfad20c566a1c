// The one place the engine calls pread, so tests can inject faults (EIO, EINTR, short reads)
// without LD_PRELOAD. In normal use the hook is ::pread.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace fst::io_hooks {

using PreadFn = ssize_t (*)(int fd, void* buf, size_t count, off_t offset);

ssize_t pread(int fd, void* buf, size_t count, off_t offset);
// Replaces the hook; nullptr restores ::pread. Returns the previous hook.
PreadFn set_pread(PreadFn fn) noexcept;

}  // namespace fst::io_hooks
