// Faults injected into the engine's reads (preadv), opens and host allocations, for tests of error paths that a
// healthy disk never takes. Installed through io_hooks and HostBuffer's fail hook; the normal
// path pays one atomic load per call when no fault is set.
#pragma once

#include <cstdint>
#include <string>

namespace fst::faults {

enum class PreadFault {
  None,
  Eio,    // pread fails with EIO
  Eintr,  // pread is interrupted before reading anything (the caller must retry)
  Short,  // pread returns half the bytes asked for (the caller must continue)
  Eof,    // pread returns 0: the file ends here (the caller must report truncation)
  Slow,   // pread sleeps kSlowMillis first, then reads (a slow disk: tests of mid-load events)
  Flip,   // pread reads, then inverts the first byte it delivered (the file rewritten in place while read)
};

inline constexpr int kSlowMillis = 250;

// Parses "eio", "eintr", "short", "eof", "slow", "flip"; throws std::invalid_argument otherwise.
PreadFault parse_pread_fault(const std::string& name);

// The next `after_calls` preads behave normally, then `count` of them (negative: all) fail as
// `kind`. Replaces any pread fault set before.
void set_pread_fault(PreadFault kind, uint64_t after_calls, int64_t count);
// Host buffer allocations: `after` succeed, then `count` (negative: all) throw bad_alloc.
void set_allocation_fault(uint64_t after, int64_t count);
// Reader thread starts: `after` succeed, then `count` (negative: all) fail as if the OS refused them.
void set_thread_fault(uint64_t after, int64_t count);
// Every open with O_DIRECT fails with EINVAL, as on a file system that does not support it (a FUSE
// or network one; tmpfs too before Linux 6.6).
void set_direct_open_fault();
// Removes every fault and restores the real pread and allocator.
void clear();

uint64_t pread_calls() noexcept;      // preads seen since the last set_pread_fault
uint64_t faults_injected() noexcept;  // pread, open and allocation faults injected since then

}  // namespace fst::faults
