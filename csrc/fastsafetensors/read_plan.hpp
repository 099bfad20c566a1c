// A read plan: which byte ranges of which files land where in which destination buffer.
// Planners (whole files here, shards elsewhere) produce plans; readers execute them.
#pragma once

#include <cstdint>
#include <vector>

#include "fastsafetensors/header.hpp"

namespace fst {

// Each tensor starts 64-byte aligned in memory: XLA on the CPU imports such buffers without a copy.
inline constexpr uint64_t kTensorAlignment = 64;

struct ReadRange {
  uint32_t file = 0;         // index into the plan's file list
  uint32_t dst = 0;          // index into the destination buffers
  uint64_t file_offset = 0;  // absolute offset in the file
  uint64_t length = 0;
  uint64_t dst_offset = 0;
};

struct FilePlan {
  std::vector<uint64_t> tensor_offsets;  // destination offset of each selected tensor
  std::vector<ReadRange> ranges;         // coalesced, in file order
  uint64_t dst_size = 0;
};

// Bytes the ranges read from each of `files` files (index: ReadRange::file). Throws
// std::out_of_range for a range of another file.
std::vector<uint64_t> bytes_per_file(const std::vector<ReadRange>& ranges, size_t files);

// Plans reading the selected tensors (indices into h.tensors; all when empty) of one file into
// one buffer. Tensors adjacent in the file become one range when their destination alignment
// allows it; a gap of at most `max_gap` unselected bytes is read through rather than split.
FilePlan plan_file(const Header& h, uint32_t file, uint32_t dst, const std::vector<uint32_t>& selection,
                   uint64_t alignment = kTensorAlignment, uint64_t max_gap = 0);

// A rectangular slice of a tensor: [start[d], stop[d]) in elements along each dimension.
struct Box {
  std::vector<uint64_t> start;
  std::vector<uint64_t> stop;
};

// Plans reading `box` of tensor `tensor` (an index into h.tensors) into a C-order, contiguous
// destination at dst_offset. The box becomes runs of contiguous bytes: one range for a slice
// along the leading axis, one per row for slices along inner axes. Throws std::invalid_argument
// for a box outside the tensor or one that splits the bytes of a packed dtype.
std::vector<ReadRange> plan_box(const Header& h, uint32_t tensor, const Box& box, uint32_t file, uint32_t dst,
                                uint64_t dst_offset);

// A box of a tensor and the contiguous destination it goes to.
struct BoxTarget {
  Box box;
  uint32_t dst = 0;
  uint64_t dst_offset = 0;
};

// Plans several boxes of one tensor as one list in file order, appended to `out`. The runs of
// column shards interleave in the file (row r of every shard, then row r + 1), so listed this way
// neighbouring runs can share one vectored read although each goes to another shard.
void plan_boxes(const Header& h, uint32_t tensor, const std::vector<BoxTarget>& boxes, uint32_t file,
                std::vector<ReadRange>& out);

}  // namespace fst
