#include "fastsafetensors/read_plan.hpp"

#include <algorithm>
#include <numeric>
#include <queue>
#include <utility>
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

std::vector<ReadRange> plan_box(const Header& h, uint32_t tensor, const Box& box, uint32_t file,
                                uint32_t dst, uint64_t dst_offset) {
  if (tensor >= h.tensors.size()) throw std::invalid_argument("tensor index out of range");
  const TensorInfo& t = h.tensors[tensor];
  const size_t rank = t.shape.size();
  if (box.start.size() != rank || box.stop.size() != rank) {
    throw std::invalid_argument("box rank differs from the rank of tensor `" + t.name + "`");
  }
  uint64_t numel = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (box.start[d] > box.stop[d] || box.stop[d] > t.shape[d]) {
      throw std::invalid_argument("box outside tensor `" + t.name + "` along dimension " + std::to_string(d));
    }
    numel *= box.stop[d] - box.start[d];  // bounded by the validated tensor size
  }
  std::vector<ReadRange> out;
  if (numel == 0) return out;
  // Innermost dimension the box cuts: everything after it is whole, so each run spans
  // (stop - start) of it times the full rows below.
  size_t cut = 0;
  for (size_t d = rank; d-- > 0;) {
    if (box.start[d] != 0 || box.stop[d] != t.shape[d]) {
      cut = d;
      break;
    }
  }
  uint64_t inner = 1;  // elements per unit step of dimension `cut`
  for (size_t d = cut + 1; d < rank; ++d) inner *= t.shape[d];
  const unsigned bits = dtype_bits(t.dtype);
  uint64_t run_elems = rank == 0 ? 1 : (box.stop[cut] - box.start[cut]) * inner;
  if ((run_elems * bits) % 8 != 0 || (rank > 0 && (box.start[cut] * inner * bits) % 8 != 0)) {
    throw std::invalid_argument("box splits the packed bytes of tensor `" + t.name + "`");
  }
  const uint64_t run_bytes = run_elems * bits / 8;
  // Row-major strides in elements, and an odometer over the dimensions before `cut`.
  std::vector<uint64_t> stride(rank, 1);
  for (size_t d = rank; d-- > 1;) stride[d - 1] = stride[d] * t.shape[d];
  std::vector<uint64_t> idx(box.start.begin(), box.start.end());
  const uint64_t base = h.data_start + t.begin;
  uint64_t at = dst_offset;
  while (true) {
    uint64_t elem = 0;
    for (size_t d = 0; d < rank; ++d) elem += idx[d] * stride[d];
    uint64_t file_offset = base + elem * bits / 8;
    if (!out.empty() && out.back().file_offset + out.back().length == file_offset) {
      out.back().length += run_bytes;  // neighbouring runs touch: one range
    } else {
      out.push_back(ReadRange{file, dst, file_offset, run_bytes, at});
    }
    at += run_bytes;
    size_t d = cut;
    while (d-- > 0) {
      if (++idx[d] < box.stop[d]) break;
      idx[d] = box.start[d];
    }
    if (d == static_cast<size_t>(-1)) break;
  }
  return out;
}

std::vector<ReadRange> plan_boxes(const Header& h, uint32_t tensor, const std::vector<BoxTarget>& boxes,
                                  uint32_t file) {
  std::vector<std::vector<ReadRange>> lists;
  lists.reserve(boxes.size());
  size_t total = 0;
  for (const BoxTarget& b : boxes) {
    lists.push_back(plan_box(h, tensor, b.box, file, b.dst, b.dst_offset));
    total += lists.back().size();
  }
  // Each list is in file order: merge them, smallest next offset first.
  using Head = std::pair<uint64_t, size_t>;  // (file offset, list)
  std::priority_queue<Head, std::vector<Head>, std::greater<Head>> heads;
  std::vector<size_t> next(lists.size(), 0);
  for (size_t i = 0; i < lists.size(); ++i) {
    if (!lists[i].empty()) heads.emplace(lists[i][0].file_offset, i);
  }
  std::vector<ReadRange> out;
  out.reserve(total);
  while (!heads.empty()) {
    size_t i = heads.top().second;
    heads.pop();
    out.push_back(lists[i][next[i]]);
    if (++next[i] < lists[i].size()) heads.emplace(lists[i][next[i]].file_offset, i);
  }
  return out;
}

}  // namespace fst
