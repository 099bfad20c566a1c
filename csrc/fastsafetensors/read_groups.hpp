// The shapes reads take before they reach the disk: long ranges cut into chunks that threads
// share out, and short neighbouring ranges grouped into one vectored read (preadv). Column shards
// are the case in point: each row of a weight holds one short run for every shard, so the runs
// of a shard are scattered through the file but the runs of all shards follow each other, and
// one call can deliver a megabyte of them to their several destinations.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastsafetensors/read_plan.hpp"

namespace fst {

// Splits ranges into chunks of at most `chunk_bytes`, keeping their order.
std::vector<ReadRange> split_ranges(const std::vector<ReadRange>& ranges, uint64_t chunk_bytes);

// One vectored read: the ranges [first, last) of GroupedReads::ranges, which follow each other in
// one file, with gaps of at most the grouping's `max_gap` between them (read into scratch memory).
// Empty ranges among them are skipped.
struct VectorRead {
  size_t first = 0;
  size_t last = 0;
  uint64_t file_offset = 0;  // where the first range starts
  uint64_t span = 0;         // bytes from there to the end of the last range, gaps included
  size_t pieces = 0;         // ranges plus gaps: the iovecs it takes
};

struct GroupedReads {
  // The ranges cut at chunk_bytes and in file order: the caller's own list when it already was
  // (planners list ranges in file order; copying millions of them costs more than reading them),
  // else `reordered`.
  const ReadRange* ranges = nullptr;
  std::vector<ReadRange> reordered;
  std::vector<VectorRead> reads;
  uint64_t gap_bytes = 0;  // read only to keep a read in one call, then dropped
};

// Groups ranges into vectored reads of at most `chunk_bytes` (span) and `max_pieces` iovecs.
// Ranges that overlap in the file stay in different reads. The result may point into `ranges`,
// which must outlive it.
GroupedReads group_reads(const std::vector<ReadRange>& ranges, uint64_t chunk_bytes, uint64_t max_gap,
                         size_t max_pieces = IOV_MAX);

}  // namespace fst
