// A read-only shared mapping of a whole file: the readers ask it which of the file's pages are in
// the page cache (mincore), and the GPU reader DMAs straight from its pages once they are registered.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fst::detail {

class MappedFile {
 public:
  MappedFile(int fd, uint64_t size, const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const noexcept { return data_; }
  uint64_t size() const noexcept { return size_; }
  // Fraction of the pages of [offset, offset + length) resident in the page cache.
  double resident_fraction(uint64_t offset, uint64_t length) const;
  // One entry per page of [offset, offset + length) (offset rounded down to a page), bit 0 set for
  // a resident page; all clear when mincore fails (the pages are read as if not cached).
  void resident_pages(uint64_t offset, uint64_t length, std::vector<unsigned char>& pages) const;

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

uint64_t page_size() noexcept;

}  // namespace fst::detail
