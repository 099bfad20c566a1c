// The safetensors header: parsing and every check a strict reader makes, in the reference
// reader's order (see docs/format.md). All size and offset arithmetic is checked.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fastsafetensors/dtype.hpp"
#include "fastsafetensors/file.hpp"

namespace fst {

// Largest JSON header accepted, as in the reference reader.
inline constexpr uint64_t kMaxHeaderLength = 100'000'000;

struct TensorInfo {
  std::string name;
  Dtype dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;

  uint64_t nbytes() const noexcept { return end - begin; }
};

struct Header {
  uint64_t header_length = 0;  // N, the JSON length
  uint64_t data_start = 0;     // 8 + N: where offsets count from
  uint64_t file_size = 0;
  std::vector<TensorInfo> tensors;  // in header order
  bool has_metadata = false;
  std::vector<std::pair<std::string, std::string>> metadata;
  // Set by read_header: the file's first data_start bytes exactly as parsed (the length prefix and
  // the JSON), and the identity of the file they came from. Later reads of the file check the
  // identity; verify hashes these bytes, so the digest covers what was parsed.
  bool from_file = false;
  std::string bytes;
  FileIdentity identity;
};

// Checks 1-3: the 8-byte length prefix against the file size. Returns N.
uint64_t parse_header_length(const uint8_t* prefix, uint64_t available, uint64_t file_size);

// Checks 4-10 on the JSON bytes (the N bytes after the prefix).
Header parse_header(std::string_view json, uint64_t file_size);

// Opens `path`, reads and validates its header. Errors name the file.
Header read_header(const std::string& path);

}  // namespace fst
