#include "fastsafetensors/integrity.hpp"

#include <algorithm>
#include <stdexcept>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"
#include "fastsafetensors/sha256.hpp"

namespace fst {
namespace {

constexpr uint64_t kDiskChunk = uint64_t{1} << 20;

// Hashes [offset, offset + length) of `f` from disk; a file that ends early is a ReadError.
void hash_from_disk(const File& f, uint64_t offset, uint64_t length, Sha256& sha, std::vector<uint8_t>& scratch) {
  scratch.resize(static_cast<size_t>(std::min(length, kDiskChunk)));
  for (uint64_t done = 0; done < length;) {
    uint64_t n = std::min<uint64_t>(scratch.size(), length - done);
    f.read_exact(scratch.data(), n, offset + done);
    sha.update(scratch.data(), n);
    done += n;
  }
}

}  // namespace

std::string sha256_of_file(const std::string& path) {
  File f(path);
  Sha256 sha;
  std::vector<uint8_t> scratch;
  hash_from_disk(f, 0, f.size(), sha, scratch);
  return Sha256::hex(sha.finish());
}

std::string sha256_of_loaded_file(const Header& header, const std::string& path, uint32_t file,
                                  const std::vector<ReadRange>& ranges, const std::vector<const uint8_t*>& dsts,
                                  const std::vector<uint64_t>& dst_sizes) {
  if (!header.from_file) throw std::invalid_argument(path + ": header was not read from a file: nothing to verify");
  std::vector<ReadRange> mine;
  for (const ReadRange& r : ranges) {
    if (r.file != file || r.length == 0) continue;
    uint64_t end = 0;
    if (r.dst >= dsts.size() || !detail::checked_add(r.dst_offset, r.length, end) || end > dst_sizes[r.dst]) {
      throw std::out_of_range("read range outside its destination buffer");
    }
    mine.push_back(r);
  }
  std::sort(mine.begin(), mine.end(),
            [](const ReadRange& a, const ReadRange& b) { return a.file_offset < b.file_offset; });
  File f(path);
  f.check_identity(header.identity);
  Sha256 sha;
  sha.update(header.bytes.data(), header.bytes.size());
  std::vector<uint8_t> scratch;
  uint64_t pos = header.bytes.size();
  for (const ReadRange& r : mine) {
    uint64_t end = 0;
    if (r.file_offset < pos || !detail::checked_add(r.file_offset, r.length, end) || end > header.file_size) {
      throw std::invalid_argument(
          "read ranges overlap, or leave the data section of the file: cannot be hashed as one file");
    }
    hash_from_disk(f, pos, r.file_offset - pos, sha, scratch);
    sha.update(dsts[r.dst] + r.dst_offset, r.length);
    pos = end;
  }
  hash_from_disk(f, pos, header.file_size - pos, sha, scratch);
  return Sha256::hex(sha.finish());
}

}  // namespace fst
