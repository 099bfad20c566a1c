#include "fastsafetensors/detail/mapped_file.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "fastsafetensors/error.hpp"

namespace fst::detail {

uint64_t page_size() noexcept {
  static const uint64_t size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

MappedFile::MappedFile(int fd, uint64_t size, const std::string& path) : size_(size) {
  if (size == 0) return;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    throw ReadError(path, 0, err, false, path + ": cannot map the file: " + std::strerror(err));
  }
  data_ = static_cast<uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

double MappedFile::resident_fraction(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || length == 0) return 1.0;
  std::vector<unsigned char> vec;
  resident_pages(offset, length, vec);
  uint64_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return vec.empty() ? 1.0 : static_cast<double>(resident) / static_cast<double>(vec.size());
}

void MappedFile::resident_pages(uint64_t offset, uint64_t length, std::vector<unsigned char>& pages) const {
  uint64_t ps = page_size();
  uint64_t begin = offset / ps * ps;
  uint64_t end = std::min(size_, offset + length);
  pages.assign(end > begin ? (end - begin + ps - 1) / ps : 0, 0);
  if (pages.empty() || data_ == nullptr) return;
  if (::mincore(data_ + begin, end - begin, pages.data()) != 0) std::fill(pages.begin(), pages.end(), 0);
}

}  // namespace fst::detail
