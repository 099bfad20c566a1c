#include "fastsafetensors/read_plan.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "fastsafetensors/detail/checked.hpp"

namespace fst {

std::vector<uint64_t> bytes_per_file(const std::vector<ReadRange>& ranges, size_t files) {
  std::vector<uint64_t> out(files, 0);
  for (const ReadRange& r : ranges) {
    if (r.file >= files) throw std::out_of_range("read range of a file outside the plan's file list");
    out[r.file] += r.length;
  }
  return out;
}

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
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return h.tensors[chosen[a]].begin < h.tensors[chosen[b]].begin; });

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

namespace {

// The runs of contiguous bytes of one box of a tensor, one at a time in file order: an odometer
// over the dimensions before the innermost one the box cuts (everything after it is whole, so a
// run spans (stop - start) of it times the full rows below).
class BoxRuns {
 public:
  BoxRuns(const Header& h, uint32_t tensor, const Box& box, uint32_t file, uint32_t dst, uint64_t dst_offset)
      : box_(box), idx_(box.start) {
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
    for (size_t d = rank; d-- > 0;) {
      if (box.start[d] != 0 || box.stop[d] != t.shape[d]) {
        cut_ = d;
        break;
      }
    }
    uint64_t inner = 1;  // elements per unit step of dimension `cut_`
    for (size_t d = cut_ + 1; d < rank; ++d) inner *= t.shape[d];
    bits_ = dtype_bits(t.dtype);
    uint64_t run_elems = rank == 0 ? 1 : (box.stop[cut_] - box.start[cut_]) * inner;
    if ((run_elems * bits_) % 8 != 0 || (rank > 0 && (box.start[cut_] * inner * bits_) % 8 != 0)) {
      throw std::invalid_argument("box splits the packed bytes of tensor `" + t.name + "`");
    }
    stride_.assign(rank, 1);
    for (size_t d = rank; d-- > 1;) stride_[d - 1] = stride_[d] * t.shape[d];
    base_ = h.data_start + t.begin;
    run_ = ReadRange{file, dst, 0, run_elems * bits_ / 8, dst_offset};
    count_ = numel == 0 ? 0 : numel / run_elems;
    done_ = numel == 0;
    if (!done_) run_.file_offset = offset_here();
  }

  bool done() const noexcept { return done_; }
  uint64_t count() const noexcept { return count_; }  // runs in all
  const ReadRange& run() const noexcept { return run_; }

  void next() {
    run_.dst_offset += run_.length;
    size_t d = cut_;
    while (d-- > 0) {
      if (++idx_[d] < box_.stop[d]) break;
      idx_[d] = box_.start[d];
    }
    done_ = d == static_cast<size_t>(-1);
    if (!done_) run_.file_offset = offset_here();
  }

 private:
  uint64_t offset_here() const noexcept {
    uint64_t elem = 0;
    for (size_t d = 0; d < idx_.size(); ++d) elem += idx_[d] * stride_[d];
    return base_ + elem * bits_ / 8;
  }

  const Box& box_;
  std::vector<uint64_t> idx_;
  std::vector<uint64_t> stride_;
  size_t cut_ = 0;
  unsigned bits_ = 8;
  uint64_t base_ = 0;
  ReadRange run_;
  uint64_t count_ = 0;
  bool done_ = true;
};

// Appends a run, joined with the last one when it continues it in the file and in memory.
void append(std::vector<ReadRange>& out, const ReadRange& r) {
  if (!out.empty()) {
    ReadRange& last = out.back();
    if (last.file == r.file && last.dst == r.dst && last.file_offset + last.length == r.file_offset &&
        last.dst_offset + last.length == r.dst_offset) {
      last.length += r.length;
      return;
    }
  }
  out.push_back(r);
}

}  // namespace

std::vector<ReadRange> plan_box(const Header& h, uint32_t tensor, const Box& box, uint32_t file, uint32_t dst,
                                uint64_t dst_offset) {
  BoxRuns runs(h, tensor, box, file, dst, dst_offset);
  std::vector<ReadRange> out;
  out.reserve(runs.count());
  for (; !runs.done(); runs.next()) append(out, runs.run());
  return out;
}

void plan_boxes(const Header& h, uint32_t tensor, const std::vector<BoxTarget>& boxes, uint32_t file,
                std::vector<ReadRange>& out) {
  std::vector<BoxRuns> runs;
  runs.reserve(boxes.size());
  size_t need = out.size();
  for (const BoxTarget& b : boxes) {
    runs.emplace_back(h, tensor, b.box, file, b.dst, b.dst_offset);
    need += runs.back().count();
  }
  // Callers append tensor after tensor: grow geometrically, as push_back would, but in one step
  // for a tensor of many runs rather than at every doubling on the way.
  if (need > out.capacity()) out.reserve(std::max(need, 2 * out.capacity()));
  // A host has a handful of devices, so the next run is found by looking at every box's.
  while (true) {
    BoxRuns* first = nullptr;
    for (BoxRuns& r : runs) {
      if (!r.done() && (first == nullptr || r.run().file_offset < first->run().file_offset)) first = &r;
    }
    if (first == nullptr) return;
    append(out, first->run());
    first->next();
  }
}

}  // namespace fst
