// The one place the engine reads a file, and the one place it opens one, so tests can inject
// faults (EIO, EINTR, short reads, a file system refusing O_DIRECT) without LD_PRELOAD. Every read
// is a preadv (a plain read is one piece); in normal use the hooks are ::preadv and ::open.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>

namespace fst::io_hooks {

using PreadvFn = ssize_t (*)(int fd, const iovec* iov, int iovcnt, off_t offset);

ssize_t preadv(int fd, const iovec* iov, int iovcnt, off_t offset);
// Replaces the hook; nullptr restores ::preadv. Returns the previous hook.
PreadvFn set_preadv(PreadvFn fn) noexcept;

using OpenFn = int (*)(const char* path, int flags);

int open(const char* path, int flags);
// Replaces the hook; nullptr restores ::open. Returns the previous hook.
OpenFn set_open(OpenFn fn) noexcept;

// Called by every loop that retries a system call interrupted by a signal (EINTR), so that the
// user can still stop a load (Ctrl-C): the check throws to abandon the operation. The Python
// binding installs one that raises Python's pending signal (KeyboardInterrupt) on the main
// thread; without it (fuzzer, sanitizer and C++-only builds) nothing is checked.
using InterruptCheckFn = void (*)();
void set_interrupt_check(InterruptCheckFn fn) noexcept;
void check_interrupt();

}  // namespace fst::io_hooks
