// libFuzzer target: the input is a whole safetensors file image. It goes through the header
// parser and, when accepted, the read planner, whose output is checked against the header.
// Any exception other than FormatError, any sanitizer report and any broken invariant is a crash.
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "fastsafetensors/error.hpp"
#include "fastsafetensors/header.hpp"
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
  return 0;
}
