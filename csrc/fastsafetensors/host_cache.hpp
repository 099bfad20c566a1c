// Recently freed host mappings, kept for the next large host buffer.
//
// A fresh anonymous mapping costs the kernel a fault and a zeroed page per 4 KiB before the read
// can copy into it; on our VMs that is more than half of a warm load (docs/benchmarks.md). Loads
// that follow one another (the groups of a multi-file load, a server that reloads weights, the
// trials of a benchmark) reuse the pages of buffers freed moments before instead.
//
// A kept mapping is handed to the kernel with MADV_FREE by a background thread: its pages stay
// mapped and are reused without a fault unless memory runs short, in which case the kernel takes
// them back (they then fault in as zero pages, and every byte a reader exposes is written first).
// Mappings are unmapped after a hold time, oldest first beyond a byte limit, and at once when the
// cache is off. FASTSAFETENSORS_HOST_CACHE_MB (0 turns it off; default a quarter of physical
// memory) and FASTSAFETENSORS_HOST_CACHE_SECONDS (default 5, at most 1e6) set the two bounds; they
// are read once, when the cache is first used (host_cache_configure changes them later), and a
// malformed value throws SettingsError from host_cache_take and host_cache_stats.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fst {

struct Mapping {
  void* base = nullptr;
  size_t size = 0;    // a multiple of the page size
  bool huge = false;  // madvise'd for transparent huge pages
};

struct HostCacheStats {
  size_t bytes = 0;  // kept now
  size_t entries = 0;
  size_t lazy_bytes = 0;  // of those, already given to the kernel with MADV_FREE
  uint64_t hits = 0;      // buffers served from the cache
  uint64_t misses = 0;
  size_t limit = 0;
  double hold_seconds = 0;
};

// `size` bytes from the smallest kept mapping that is large enough and of the same kind (the rest
// of it stays kept), or an empty Mapping.
Mapping host_cache_take(size_t size, bool huge);
// Keeps `m` for reuse, or unmaps it when the cache is off or `m` alone exceeds the limit.
void host_cache_give(Mapping m) noexcept;
// Unmaps everything kept.
void host_cache_clear() noexcept;
// limit 0 turns the cache off (and clears it).
void host_cache_configure(size_t limit_bytes, double hold_seconds);
HostCacheStats host_cache_stats();

}  // namespace fst
