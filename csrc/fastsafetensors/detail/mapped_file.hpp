// A read-only shared mapping of a whole file: the GPU reader asks it how much of the file is in
// the page cache (mincore) and DMAs straight from its pages once they are registered.
#pragma once

#include <cstdint>
#include <string>

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

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

uint64_t page_size() noexcept;

}  // namespace fst::detail
