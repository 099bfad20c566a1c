#include "fastsafetensors/read_groups.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace fst {
namespace {

bool file_order(const ReadRange& a, const ReadRange& b) {
  return a.file != b.file ? a.file < b.file : a.file_offset < b.file_offset;
}

// Planners list ranges tensor by tensor, each tensor's in file order: ordering those runs by where
// they start orders the whole list in O(n) unless runs overlap, which takes a full sort.
void put_in_file_order(std::vector<ReadRange>& ranges) {
  std::vector<std::pair<size_t, size_t>> runs;  // [begin, end) of each sorted run
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i == 0 || file_order(ranges[i], ranges[i - 1])) runs.emplace_back(i, i);
    runs.back().second = i + 1;
  }
  if (runs.size() <= 1) return;
  std::sort(runs.begin(), runs.end(),
            [&](const auto& a, const auto& b) { return file_order(ranges[a.first], ranges[b.first]); });
  for (size_t k = 1; k < runs.size(); ++k) {
    if (file_order(ranges[runs[k].first], ranges[runs[k - 1].second - 1])) {
      std::sort(ranges.begin(), ranges.end(), file_order);  // runs interleave
      return;
    }
  }
  std::vector<ReadRange> ordered;
  ordered.reserve(ranges.size());
  for (const auto& [begin, end] : runs) ordered.insert(ordered.end(), ranges.begin() + begin, ranges.begin() + end);
  ranges = std::move(ordered);
}

// Appends `r` to `v` when it follows within the limits; false leaves `v` as it was.
bool extend(VectorRead& v, const ReadRange& r, size_t index, uint32_t file, uint64_t chunk_bytes, uint64_t max_gap,
            size_t max_pieces) {
  uint64_t end = v.file_offset + v.span;
  if (r.file != file || r.file_offset < end) return false;
  uint64_t gap = r.file_offset - end;
  size_t pieces = v.pieces + 1 + (gap > 0 ? 1 : 0);
  if (gap > max_gap || v.span + gap + r.length > chunk_bytes || pieces > max_pieces) return false;
  v.span += gap + r.length;
  v.pieces = pieces;
  v.last = index + 1;
  return true;
}

}  // namespace

std::vector<ReadRange> split_ranges(const std::vector<ReadRange>& ranges, uint64_t chunk_bytes) {
  if (chunk_bytes == 0) throw std::invalid_argument("chunk size must be positive");
  std::vector<ReadRange> chunks;
  chunks.reserve(ranges.size());
  for (const ReadRange& r : ranges) {
    for (uint64_t done = 0; done < r.length; done += chunk_bytes) {
      uint64_t n = std::min(chunk_bytes, r.length - done);
      chunks.push_back({r.file, r.dst, r.file_offset + done, n, r.dst_offset + done});
    }
  }
  return chunks;
}

GroupedReads group_reads(const std::vector<ReadRange>& ranges, uint64_t chunk_bytes, uint64_t max_gap,
                         size_t max_pieces) {
  if (chunk_bytes == 0) throw std::invalid_argument("chunk size must be positive");
  if (max_pieces < 2) throw std::invalid_argument("a vectored read needs room for two pieces");
  GroupedReads g;
  bool chunked =
      std::all_of(ranges.begin(), ranges.end(), [&](const ReadRange& r) { return r.length <= chunk_bytes; });
  if (chunked && std::is_sorted(ranges.begin(), ranges.end(), file_order)) {
    g.ranges = ranges.data();
  } else {
    g.reordered = split_ranges(ranges, chunk_bytes);
    put_in_file_order(g.reordered);
    g.ranges = g.reordered.data();
  }
  const size_t n = g.ranges == ranges.data() ? ranges.size() : g.reordered.size();
  for (size_t i = 0; i < n; ++i) {
    const ReadRange& r = g.ranges[i];
    if (r.length == 0) continue;  // inside a read too: its pieces skip empty ranges
    if (!g.reads.empty()) {
      VectorRead& v = g.reads.back();
      uint64_t end = v.file_offset + v.span;
      if (extend(v, r, i, g.ranges[v.first].file, chunk_bytes, max_gap, max_pieces)) {
        g.gap_bytes += r.file_offset - end;
        continue;
      }
    }
    g.reads.push_back(VectorRead{i, i + 1, r.file_offset, r.length, 1});
  }
  return g;
}

}  // namespace fst
