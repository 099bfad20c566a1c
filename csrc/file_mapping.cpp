#include "fastsafetensors/file_mapping.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fastsafetensors/error.hpp"

namespace fst {

std::shared_ptr<FileMapping> FileMapping::map(const ReadSource& source) {
  std::vector<File> files = open_sources({source}, false);
  std::shared_ptr<FileMapping> m(new FileMapping());
  // A safetensors file is never empty (8 bytes of header length at least), and mmap of 0 fails.
  m->size_ = std::max<uint64_t>(source.expected_size, 1);
  void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, files[0].fd(), 0);
  if (p == MAP_FAILED) {
    int err = errno;
    throw ReadError(source.path, 0, err, false, source.path + ": cannot map the file: " + std::strerror(err));
  }
  m->data_ = static_cast<uint8_t*>(p);
  return m;  // the mapping outlives the descriptor
}

FileMapping::~FileMapping() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace fst
