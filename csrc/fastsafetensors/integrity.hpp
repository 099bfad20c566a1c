// Whole-file SHA-256 digests, for checking a checkpoint against the digest it was published with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fastsafetensors/header.hpp"
#include "fastsafetensors/read_plan.hpp"

namespace fst {

// Hex SHA-256 of a file, read from disk in one streaming pass.
std::string sha256_of_file(const std::string& path);

// Hex SHA-256 of file `file` of a plan that has just been executed, as the load saw it: the
// header bytes that were parsed (from `header`, which read_header filled), the bytes the ranges put
// in `dsts` (from memory), and only the bytes no range covered (unselected tensors) from disk,
// through a descriptor whose identity must still be the header's (else FileChangedError). So the
// digest binds the layout that was parsed to the tensors that were returned.
std::string sha256_of_loaded_file(const Header& header, const std::string& path, uint32_t file,
                                  const std::vector<ReadRange>& ranges, const std::vector<const uint8_t*>& dsts,
                                  const std::vector<uint64_t>& dst_sizes);

}  // namespace fst
