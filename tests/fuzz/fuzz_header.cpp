// libFuzzer target: the input is a whole safetensors file image. It goes through the header
// parser and, when accepted, the read planners (whole tensors, and column halves of tensors) and
// the grouping of their ranges into vectored reads, whose output is checked against the header.
// Any exception other than FormatError, any sanitizer report and any broken invariant is a crash.
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "fastsafetensors/error.hpp"
#include "fastsafetensors/header.hpp"
#include "fastsafetensors/read_groups.hpp"
#include "fastsafetensors/read_plan.hpp"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

// Every planned range lies inside the file's data section and its destination buffer, and each
// selected tensor's bytes are covered by exactly the range that lands at its offset.
void check_plan(const fst::Header& h, const std::vector<uint32_t>& selection, const fst::FilePlan& plan) {
  size_t n = selection.empty() ? h.tensors.size() : selection.size();
  check(plan.tensor_offsets.size() == n);
  for (const fst::ReadRange& r : plan.ranges) {
    check(r.length > 0);
    check(r.file_offset >= h.data_start && r.file_offset <= h.file_size && r.length <= h.file_size - r.file_offset);
    check(r.dst_offset <= plan.dst_size && r.length <= plan.dst_size - r.dst_offset);
  }
  for (size_t k = 0; k < n; ++k) {
    const fst::TensorInfo& t = h.tensors[selection.empty() ? k : selection[k]];
    uint64_t at = plan.tensor_offsets[k];
    check(at % fst::kTensorAlignment == 0);
    check(at <= plan.dst_size && t.nbytes() <= plan.dst_size - at);
    if (t.nbytes() == 0) continue;
    bool covered = false;
    for (const fst::ReadRange& r : plan.ranges) {
      if (r.dst_offset <= at && at - r.dst_offset < r.length) {
        // The range maps file bytes to buffer bytes one to one: the tensor's first byte in the
        // file must land at its planned offset, and the whole tensor must fit in the range.
        check(r.file_offset + (at - r.dst_offset) == h.data_start + t.begin);
        check(t.nbytes() <= r.length - (at - r.dst_offset));
        covered = true;
      }
    }
    check(covered);
  }
}

// Groups follow the ranges in file order, each range in exactly one read, within the limits.
void check_groups(const std::vector<fst::ReadRange>& ranges, uint64_t chunk, uint64_t max_gap, size_t max_pieces) {
  fst::GroupedReads g = fst::group_reads(ranges, chunk, max_gap, max_pieces);
  size_t next = 0;
  uint64_t gaps = 0;
  for (const fst::VectorRead& v : g.reads) {
    check(v.first == next && v.first < v.last && v.span <= chunk && v.pieces <= max_pieces);
    uint64_t at = v.file_offset;
    for (size_t k = v.first; k < v.last; ++k) {
      const fst::ReadRange& r = g.ranges[k];
      if (r.length == 0) continue;
      check(r.file_offset >= at && r.file_offset - at <= max_gap);
      gaps += r.file_offset - at;
      at = r.file_offset + r.length;
    }
    check(at == v.file_offset + v.span);
    next = v.last;
  }
  check(gaps == g.gap_bytes);
}

// The two halves of a tensor's last dimension (column shards): every byte of the tensor once,
// in file order, each half into its own destination.
void check_column_halves(const fst::Header& h, uint32_t index) {
  const fst::TensorInfo& t = h.tensors[index];
  if (t.shape.empty() || t.nbytes() == 0) return;
  std::vector<uint64_t> zero(t.shape.size(), 0), mid = t.shape;
  mid.back() /= 2;
  std::vector<uint64_t> from = zero;
  from.back() = mid.back();
  std::vector<fst::ReadRange> ranges;
  try {
    fst::plan_boxes(h, index, {{fst::Box{zero, mid}, 0, 0}, {fst::Box{from, t.shape}, 1, 0}}, 0, ranges);
  } catch (const std::invalid_argument&) {
    return;  // a half would split the bytes of a packed dtype
  }
  uint64_t total = 0, last = 0;
  for (const fst::ReadRange& r : ranges) {
    check(r.length > 0 && r.file_offset >= last);
    check(r.file_offset >= h.data_start + t.begin && r.file_offset + r.length <= h.data_start + t.end);
    last = r.file_offset + r.length;
    total += r.length;
  }
  check(total == t.nbytes());
  check_groups(ranges, 64, 16, 4);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fst::Header h;
  try {
    uint64_t n = fst::parse_header_length(data, size, size);
    std::string_view image(reinterpret_cast<const char*>(data), size);
    h = fst::parse_header(image.substr(8, n), size);
  } catch (const fst::FormatError&) {
    return 0;  // rejected: the expected outcome for most inputs
  }
  check(h.data_start == 8 + h.header_length && h.data_start <= h.file_size);
  for (const fst::TensorInfo& t : h.tensors) {
    check(t.begin <= t.end && t.end <= h.file_size - h.data_start);
  }
  check_plan(h, {}, fst::plan_file(h, 0, 0, {}));
  // Every other tensor, in reverse order, read through gaps of up to 64 bytes.
  std::vector<uint32_t> some;
  for (size_t i = h.tensors.size(); i-- > 0;) {
    if (i % 2 == 0) some.push_back(static_cast<uint32_t>(i));
  }
  if (!some.empty()) check_plan(h, some, fst::plan_file(h, 0, 0, some, fst::kTensorAlignment, 64));
  check_groups(fst::plan_file(h, 0, 0, {}).ranges, 256, 64, 3);
  for (uint32_t i = 0; i < h.tensors.size() && i < 8; ++i) check_column_halves(h, i);
  return 0;
}
