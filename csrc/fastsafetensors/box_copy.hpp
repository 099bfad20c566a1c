// Cutting boxes out of a region already in host memory. Column shards of a tensor are rows of
// small strided runs; reading them run by run costs one pread each, so the loader reads the
// region the shards cover once and cuts every shard out of memory with these copies.
#pragma once

#include <cstdint>
#include <vector>

#include "fastsafetensors/read_plan.hpp"
#include "fastsafetensors/thread_pool.hpp"

namespace fst {

// One box of a C-order region (`src`, `src_shape` elements of `elem_bytes` each) copied into a
// contiguous C-order destination. The box is relative to the region.
struct BoxCopy {
  const uint8_t* src = nullptr;
  std::vector<uint64_t> src_shape;
  Box box;
  uint8_t* dst = nullptr;
  uint64_t elem_bytes = 1;
};

// Bytes of a box of `shape`-relative extents. Throws std::invalid_argument for a box outside `shape`.
uint64_t box_bytes(const std::vector<uint64_t>& shape, const Box& box, uint64_t elem_bytes);

// Runs every copy on `pool`: rows of each box are split into tasks of about `task_bytes`.
void copy_boxes(ThreadPool& pool, const std::vector<BoxCopy>& copies, uint64_t task_bytes = uint64_t{1} << 20);

}  // namespace fst
