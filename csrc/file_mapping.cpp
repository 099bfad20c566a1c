#include "fastsafetensors/file_mapping.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fastsafetensors/detail/mapped_file.hpp"
#include "fastsafetensors/error.hpp"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

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

bool FileMapping::populate(const std::string& path, uint64_t offset, uint64_t length) {
  uint64_t ps = detail::page_size();
  uint64_t begin = offset / ps * ps;
  uint64_t end = std::min<uint64_t>(size_, offset + length);
  if (end <= begin) return true;
  while (::madvise(data_ + begin, end - begin, MADV_POPULATE_READ) != 0) {
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == EINVAL) return false;
    int err = errno;  // EFAULT: pages past the end of a file that shrank; EIO: the disk failed
    throw ReadError(path, begin, err, err == EFAULT,
                    path + ": cannot map its pages (" + std::strerror(err) + "): " +
                        (err == EFAULT ? "the file shrank after its header was read" : "read failed"));
  }
  return true;
}

}  // namespace fst
