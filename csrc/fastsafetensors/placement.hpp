// Placing boxes of tensors into strided destinations: the shards of layout transforms (docs/jax.md).
// A box whose innermost axis lands contiguous in the destination is read straight into it
// (plan_strided); any other (a transpose) is read in small boxes, each into a buffer of the thread
// that copies it into the shard while it is still in cache (read_strided), or from a staging buffer
// (copy_strided); the copies are tiled so that both sides stay in cache.
#pragma once

#include <cstdint>
#include <vector>

#include "fastsafetensors/file.hpp"
#include "fastsafetensors/header.hpp"
#include "fastsafetensors/host_reader.hpp"
#include "fastsafetensors/read_plan.hpp"
#include "fastsafetensors/thread_pool.hpp"

namespace fst {

// Appends, in file order, the ranges reading `box` of tensor `tensor` viewed as `shape` (a C-order
// reshape of its shape: the same element count) into buffer `dst`, element i of the box landing at
// element dst_offset_elems + sum(i[d] * dst_strides[d]) of the destination (in the tensor's
// element size). The innermost stride must be 1 where the box is wider than one element there.
// Throws std::invalid_argument for a view, box or strides that do not fit the tensor.
void plan_strided(const Header& h, uint32_t tensor, const std::vector<uint64_t>& shape, const Box& box, uint32_t file,
                  uint32_t dst, uint64_t dst_offset_elems, const std::vector<uint64_t>& dst_strides,
                  std::vector<ReadRange>& out);

// A C-contiguous block of `shape` elements of `itemsize` bytes at src_offset (bytes) of a staging
// buffer, copied to element i at dst_offset + sum(i[d] * dst_strides[d]) * itemsize bytes.
struct StridedCopy {
  uint64_t src_offset = 0;
  std::vector<uint64_t> shape;
  uint64_t dst_offset = 0;
  std::vector<uint64_t> dst_strides;  // in elements
  unsigned itemsize = 1;
};

// Runs every copy on the pool's threads (split along their leading axes). Throws
// std::invalid_argument, before copying anything, for a copy outside either buffer.
void copy_strided(const uint8_t* src, uint64_t src_size, uint8_t* dst, uint64_t dst_size,
                  const std::vector<StridedCopy>& copies, ThreadPool& pool);

// Reads box k (the ranges whose dst is k, at dst_offset bytes into the box) into a buffer of
// `box_bytes` of one of the pool's threads and copies it into `dst` as copies[k] says (its
// src_offset is into that buffer), the next box read while another thread copies: one pass over
// the bytes, no staging buffer to fill and read back. Ranges of a file that follow with gaps of
// at most `max_gap` bytes go in one vectored read. The ranges are grouped by box, in increasing
// box order. Throws, before reading anything, std::invalid_argument for a copy outside its box or
// destination and std::out_of_range for a range outside its box; ReadError as HostReader::read does.
ReadStats read_strided(const std::vector<File>& files, const std::vector<ReadRange>& ranges,
                       const std::vector<StridedCopy>& copies, uint64_t box_bytes, uint64_t max_gap, uint8_t* dst,
                       uint64_t dst_size, ThreadPool& pool);

// Faults in the bytes `copies` write into `dst` (fresh shard memory), in 2 MiB pieces on the pool:
// one madvise per piece rather than a page fault per 4 KiB inside the tiles. Once per load, over
// every copy of it: a transpose's boxes each span nearly its whole shard, so doing it per
// read_strided call walked the shard again each call. Returns the bytes populated. Throws
// std::invalid_argument for a copy outside `dst` or a box of `box_bytes`.
uint64_t populate_strided(const std::vector<StridedCopy>& copies, uint64_t box_bytes, uint8_t* dst, uint64_t dst_size,
                          ThreadPool& pool);

}  // namespace fst
