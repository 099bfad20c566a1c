// Whole-file SHA-256 digests, for checking a checkpoint against the digest it was published with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fastsafetensors/read_plan.hpp"

namespace fst {

// Hex SHA-256 of a file, read from disk in one streaming pass.
std::string sha256_of_file(const std::string& path);

// Hex SHA-256 of file `file` of a plan that has just been executed: the bytes its ranges put in
// `dsts` are hashed from memory, and only the bytes no range covered (the header, unselected
// tensors) are read from disk, so no byte of the file is read twice. The current length of the
// file on disk is hashed, so a file that changed size since its header was read does not match.
std::string sha256_of_loaded_file(const std::string& path, uint32_t file, const std::vector<ReadRange>& ranges,
                                  const std::vector<const uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes);

}  // namespace fst
