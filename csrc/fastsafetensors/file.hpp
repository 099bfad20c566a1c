// A read-only file descriptor with reads that either deliver every byte asked for or throw.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <string>

namespace fst {

class File {
 public:
  explicit File(const std::string& path, bool direct = false);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  File(File&& other) noexcept;

  int fd() const noexcept { return fd_; }
  const std::string& path() const noexcept { return path_; }
  bool direct() const noexcept { return direct_; }
  // Current size, asked of the kernel each time (the file may change under us).
  uint64_t size() const;

  // Reads up to `length` bytes at `offset`, retrying on EINTR and short counts; returns fewer
  // only at end of file. Throws ReadError on an I/O error.
  uint64_t read_at(void* dst, uint64_t length, uint64_t offset) const;
  // As read_at, but a file that ends early is an error (ReadError with truncated set).
  void read_exact(void* dst, uint64_t length, uint64_t offset) const;
  // Vectored forms (preadv): the bytes from `offset` on fill the pieces in order, so one call
  // delivers runs that belong in many places. The pieces are advanced past what was read.
  uint64_t read_at(iovec* pieces, int count, uint64_t offset) const;
  void read_exact(iovec* pieces, int count, uint64_t offset) const;

  // Kernel readahead hints for the byte range about to be read.
  void advise_sequential(uint64_t offset, uint64_t length) const noexcept;
  // Asks the kernel to start reading the range into the page cache now (asynchronously).
  void prefetch(uint64_t offset, uint64_t length) const noexcept;
  // Drops the file's pages from the page cache (benchmarks use it to measure cold reads).
  void evict_from_page_cache() const noexcept;

 private:
  std::string path_;
  int fd_ = -1;
  bool direct_ = false;
};

}  // namespace fst
