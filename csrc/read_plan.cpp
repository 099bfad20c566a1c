#include "fastsafetensors/read_plan.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "fastsafetensors/detail/checked.hpp"

namespace fst {

FilePlan plan_file(const Header& h, uint32_t file, uint32_t dst, const std::vector<uint32_t>& selection,
                   uint64_t alignment, uint64_t max_gap) {
  std::vector<uint32_t> chosen = selection;
  if (chosen.empty()) {
    chosen.resize(h.tensors.size());
    std::iota(chosen.begin(), chosen.end(), 0u);
  }
  for (uint32_t i : chosen) {
    if (i >= h.tensors.size()) throw std::out_of_range("tensor index out of range in read plan");
  }
  // Walk the tensors in file order; the output keeps the caller's order.
  std::vector<size_t> order(chosen.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return h.tensors[chosen[a]].begin < h.tensors[chosen[b]].begin;
  });

  FilePlan plan;
  plan.tensor_offsets.assign(chosen.size(), 0);
  ReadRange* open = nullptr;  // the range the next tensor may extend
  for (size_t k : order) {
    const TensorInfo& t = h.tensors[chosen[k]];
    if (t.nbytes() == 0) {
      // Nothing to read; point at an aligned spot inside (or just past) the buffer.
      plan.tensor_offsets[k] = detail::align_up(plan.dst_size, alignment);
      continue;
    }
    uint64_t file_begin = h.data_start + t.begin;
    if (open != nullptr) {
      uint64_t open_end = open->file_offset + open->length;
      uint64_t gap = file_begin - open_end;
      uint64_t at = open->dst_offset + open->length + gap;
      if (file_begin >= open_end && gap <= max_gap && at % alignment == 0) {
        open->length += gap + t.nbytes();
        plan.tensor_offsets[k] = at;
        plan.dst_size = at + t.nbytes();
        continue;
      }
    }
    uint64_t at = detail::align_up(plan.dst_size, alignment);
    plan.ranges.push_back(ReadRange{file, dst, file_begin, t.nbytes(), at});
    open = &plan.ranges.back();
    plan.tensor_offsets[k] = at;
    plan.dst_size = at + t.nbytes();
  }
  // Zero-size tensors may point one alignment step past the data; keep that inside the buffer.
  for (uint64_t off : plan.tensor_offsets) plan.dst_size = std::max(plan.dst_size, off);
  return plan;
}

}  // namespace fst
