#include "fastsafetensors/box_copy.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace fst {
namespace {

// A box seen as `rows` contiguous runs of `run_bytes`: every dimension after `cut` is whole.
struct RowLayout {
  size_t cut = 0;
  uint64_t rows = 1;
  uint64_t run_bytes = 0;
  uint64_t inner = 1;                // elements per unit step of dimension `cut`
  std::vector<uint64_t> stride;      // region strides in elements
};

RowLayout row_layout(const BoxCopy& c) {
  const auto& shape = c.src_shape;
  const size_t rank = shape.size();
  RowLayout l;
  for (size_t d = rank; d-- > 0;) {
    if (c.box.start[d] != 0 || c.box.stop[d] != shape[d]) {
      l.cut = d;
      break;
    }
  }
  l.stride.assign(rank, 1);
  for (size_t d = rank; d-- > 1;) l.stride[d - 1] = l.stride[d] * shape[d];
  for (size_t d = l.cut + 1; d < rank; ++d) l.inner *= shape[d];
  for (size_t d = 0; d < l.cut && d < rank; ++d) l.rows *= c.box.stop[d] - c.box.start[d];
  uint64_t run_elems = rank == 0 ? 1 : (c.box.stop[l.cut] - c.box.start[l.cut]) * l.inner;
  l.run_bytes = run_elems * c.elem_bytes;
  return l;
}

void copy_rows(const BoxCopy& c, const RowLayout& l, uint64_t begin, uint64_t end) {
  const size_t rank = c.src_shape.size();
  for (uint64_t row = begin; row < end; ++row) {
    // Decode the row number into indices of the dimensions before `cut` (last varies fastest).
    uint64_t elem = rank == 0 ? 0 : c.box.start[l.cut] * l.inner;
    uint64_t rest = row;
    for (size_t d = l.cut; d-- > 0;) {
      uint64_t extent = c.box.stop[d] - c.box.start[d];
      elem += (c.box.start[d] + rest % extent) * l.stride[d];
      rest /= extent;
    }
    std::memcpy(c.dst + row * l.run_bytes, c.src + elem * c.elem_bytes, l.run_bytes);
  }
}

}  // namespace

uint64_t box_bytes(const std::vector<uint64_t>& shape, const Box& box, uint64_t elem_bytes) {
  if (box.start.size() != shape.size() || box.stop.size() != shape.size()) {
    throw std::invalid_argument("box rank differs from the region rank");
  }
  uint64_t n = elem_bytes;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (box.start[d] > box.stop[d] || box.stop[d] > shape[d]) {
      throw std::invalid_argument("box outside the region along dimension " + std::to_string(d));
    }
    n *= box.stop[d] - box.start[d];
  }
  return n;
}

void copy_boxes(ThreadPool& pool, const std::vector<BoxCopy>& copies, uint64_t task_bytes) {
  struct Task {
    size_t copy;
    uint64_t begin, end;
  };
  std::vector<RowLayout> layouts;
  std::vector<Task> tasks;
  layouts.reserve(copies.size());
  for (size_t i = 0; i < copies.size(); ++i) {
    layouts.push_back(row_layout(copies[i]));
    const RowLayout& l = layouts.back();
    if (l.run_bytes == 0) continue;
    uint64_t per_task = std::max<uint64_t>(1, task_bytes / l.run_bytes);
    for (uint64_t r = 0; r < l.rows; r += per_task) tasks.push_back({i, r, std::min(l.rows, r + per_task)});
  }
  pool.parallel_for(tasks.size(), [&](unsigned, size_t t) {
    const Task& task = tasks[t];
    copy_rows(copies[task.copy], layouts[task.copy], task.begin, task.end);
  });
}

}  // namespace fst
