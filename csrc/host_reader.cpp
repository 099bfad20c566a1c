#include "fastsafetensors/host_reader.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/detail/populate.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"

namespace fst {
namespace {

constexpr uint64_t kDirectAlignment = 4096;

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

// Reads one chunk with O_DIRECT: the aligned span around it goes into `bounce`, then the
// wanted bytes are copied out.
void read_direct(const File& f, const ReadRange& r, uint8_t* dst, uint8_t* bounce) {
  uint64_t start = r.file_offset / kDirectAlignment * kDirectAlignment;
  uint64_t span = detail::align_up(r.file_offset + r.length, kDirectAlignment) - start;
  uint64_t got = f.read_at(bounce, span, start);
  uint64_t skip = r.file_offset - start;
  if (got < skip + r.length) f.read_exact(bounce, span, start);  // throws with the right offset
  std::memcpy(dst, bounce + skip, r.length);
}

}  // namespace

std::vector<File> open_sources(const std::vector<ReadSource>& sources, bool direct) {
  std::vector<File> files;
  files.reserve(sources.size());
  for (const ReadSource& s : sources) {
    files.emplace_back(s.path, direct);
    uint64_t now = files.back().size();
    if (now != s.expected_size) {
      uint64_t at = std::min(now, s.expected_size);
      throw ReadError(s.path, at, 0, true,
                      s.path + ": file is " + std::to_string(now) + " bytes but its header was read from a file of " +
                          std::to_string(s.expected_size) + " bytes: it changed after its header was read (sizes differ from offset " +
                          std::to_string(at) + ")");
    }
    files.back().advise_sequential(0, 0);
  }
  return files;
}

void check_ranges(const std::vector<ReadRange>& ranges, size_t sources, const std::vector<uint64_t>& dst_sizes) {
  for (const ReadRange& r : ranges) {
    uint64_t end = 0;
    if (r.file >= sources || r.dst >= dst_sizes.size() || !detail::checked_add(r.dst_offset, r.length, end) ||
        end > dst_sizes[r.dst]) {
      throw std::out_of_range("read range outside its file list or destination buffer");
    }
  }
}

std::vector<ReadRange> split_ranges(const std::vector<ReadRange>& ranges, uint64_t chunk_bytes) {
  if (chunk_bytes == 0) throw std::invalid_argument("chunk size must be positive");
  std::vector<ReadRange> chunks;
  for (const ReadRange& r : ranges) {
    for (uint64_t done = 0; done < r.length; done += chunk_bytes) {
      uint64_t n = std::min(chunk_bytes, r.length - done);
      chunks.push_back({r.file, r.dst, r.file_offset + done, n, r.dst_offset + done});
    }
  }
  return chunks;
}

HostReader::HostReader(unsigned threads) : pool_(threads == 0 ? 1 : threads) {}

ReadStats HostReader::read(const std::vector<ReadSource>& sources, const std::vector<ReadRange>& ranges,
                           const std::vector<uint8_t*>& dsts, const std::vector<uint64_t>& dst_sizes,
                           const ReadOptions& options) {
  if (dsts.size() != dst_sizes.size()) throw std::invalid_argument("one size per destination");
  check_ranges(ranges, sources.size(), dst_sizes);
  std::vector<File> files = open_sources(sources, options.direct);
  std::vector<ReadRange> chunks = split_ranges(ranges, options.chunk_bytes);
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> bounce;
  if (options.direct) {
    uint64_t size = detail::align_up(options.chunk_bytes, kDirectAlignment) + 2 * kDirectAlignment;
    for (unsigned i = 0; i < pool_.size(); ++i) {
      void* p = std::aligned_alloc(kDirectAlignment, size);
      if (p == nullptr) throw std::bad_alloc();
      bounce.emplace_back(static_cast<uint8_t*>(p));
    }
  }
  pool_.parallel_for(chunks.size(), [&](unsigned worker, size_t i) {
    const ReadRange& c = chunks[i];
    uint8_t* dst = dsts[c.dst] + c.dst_offset;
    if (options.direct) {
      read_direct(files[c.file], c, dst, bounce[worker].get());
    } else {
      detail::populate(dst, c.length);
      files[c.file].read_exact(dst, c.length, c.file_offset);
    }
  });
  ReadStats stats;
  stats.chunks = chunks.size();
  for (const ReadRange& r : ranges) stats.bytes += r.length;
  return stats;
}

}  // namespace fst
