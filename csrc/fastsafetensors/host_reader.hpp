// Executes read plans into host memory: ranges cut into chunks and grouped into vectored reads
// (read_groups.hpp), read in parallel by a persistent thread pool. Every byte lands or the call
// throws.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsafetensors/cold_reads.hpp"
#include "fastsafetensors/file.hpp"
#include "fastsafetensors/read_groups.hpp"
#include "fastsafetensors/read_plan.hpp"
#include "fastsafetensors/thread_pool.hpp"

namespace fst {

// A file to read, with the size its header was validated against and, when the header was read
// from the file (read_header), that file's identity: a file that no longer has them changed after
// its header was read, and is refused before any byte is read.
struct ReadSource {
  std::string path;
  uint64_t expected_size = 0;
  bool check_identity = false;
  FileIdentity identity;
};

struct ReadOptions {
  uint64_t chunk_bytes = uint64_t{8} << 20;
  bool direct = false;  // O_DIRECT through aligned bounce buffers
  // Gaps up to this size between ranges of one file are read and dropped rather than splitting a
  // vectored read: from the page cache a 4 KiB copy costs less than another system call.
  uint64_t max_gap = 4096;
  // Per destination (or empty): its pages are faulted in already, as in memory from the host
  // cache, so populating them would only walk their page tables.
  std::vector<bool> resident;
  // With batch_bytes > 0 the reads run in batches of about that many bytes, and after_batch (if
  // set) is called on the calling thread after each with the bytes it delivered: a progress bar
  // moves, and the caller can stop the load (by throwing) without waiting for all of it.
  uint64_t batch_bytes = 0;
  std::function<void(uint64_t bytes)> after_batch;
  // Ranges not in the page cache (mincore) are read with their device's cold shape
  // (cold_reads.hpp) on threads of their own, the others as above. Off with direct.
  bool cold_reads = false;
  // The pool's threads each read their own contiguous share of every batch, in file order, through
  // descriptors of their own (ColdShape::streams), rather than the next read in turn.
  bool streams = false;
};

struct ReadStats {
  uint64_t bytes = 0;                    // delivered to the destinations
  uint64_t reads = 0;                    // vectored reads issued
  uint64_t gap_bytes = 0;                // read between ranges and dropped
  uint64_t populated = 0;                // destination bytes faulted in before the copy rather than during it
  uint64_t cold_bytes = 0;               // read with a device's cold shape
  uint64_t residency_steps = 0;          // steps of files asked whether they are in the page cache
  std::vector<ColdDeviceRead> cold;      // how, per device (O_DIRECT asked, used, or why not)
  std::vector<uint64_t> bytes_per_file;  // delivered from each source
};

// Opens every source, refusing (TruncatedFileError, FileChangedError) one whose size or identity is
// not the one its header was read from. Shared by the host and device readers.
std::vector<File> open_sources(const std::vector<ReadSource>& sources, bool direct);
// Throws std::out_of_range unless every range names a source and fits its destination.
void check_ranges(const std::vector<ReadRange>& ranges, size_t sources, const std::vector<uint64_t>& dst_sizes);

class HostReader {
 public:
  explicit HostReader(unsigned threads);
  unsigned threads() const noexcept { return pool_.size(); }
  // Its threads, for the work that follows reads (the strided copies of placement.hpp).
  ThreadPool& pool() noexcept { return pool_; }

  // Reads every range into dsts[range.dst] + range.dst_offset. dst_sizes bound each write.
  ReadStats read(const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
                 const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes,
                 const ReadOptions& options);

 private:
  // Runs `g` on `pool` in the batches `options` asks for; adds what it did to `stats`.
  void run(ThreadPool& pool, const std::vector<File>& files, const GroupedReads& g, const std::vector<uint8_t*>& dsts,
           const ReadOptions& options, ReadStats& stats);
  // Reads `cold` (ranges outside the page cache) with the shape of each one's device.
  void read_cold(const std::vector<ReadSource>& sources, const std::vector<File>& files,
                 const std::vector<ReadRange>& cold, const std::vector<uint8_t*>& dsts, const ReadOptions& options,
                 ReadStats& stats);
  // The cold reads' own threads, as many as the last cold shape asked for.
  std::shared_ptr<ThreadPool> cold_pool(unsigned threads);

  ThreadPool pool_;
  std::mutex cold_mutex_;
  std::shared_ptr<ThreadPool> cold_pool_;
};

}  // namespace fst
