// The one place the engine reads a file, so tests can inject faults (EIO, EINTR, short reads)
// without LD_PRELOAD. Every read is a preadv (a plain read is one piece); in normal use the hook
// is ::preadv.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>

namespace fst::io_hooks {

using PreadvFn = ssize_t (*)(int fd, const iovec* iov, int iovcnt, off_t offset);

ssize_t preadv(int fd, const iovec* iov, int iovcnt, off_t offset);
// Replaces the hook; nullptr restores ::preadv. Returns the previous hook.
PreadvFn set_preadv(PreadvFn fn) noexcept;

}  // namespace fst::io_hooks
