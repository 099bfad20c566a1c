// A read-only file descriptor with reads that either deliver every byte asked for or throw.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <string>

namespace fst {

// Which file a descriptor reads: another file renamed over the path, or the same file rewritten
// (size, modification or status-change time), has another identity. The status-change time (ctime)
// catches a writer that resets the modification time with utime(), which itself sets ctime. A rewrite
// in place that keeps the size within one tick of the file system's clock is not seen (docs/security.md).
struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;

  bool operator==(const FileIdentity& o) const noexcept {
    return device == o.device && inode == o.inode && size == o.size && mtime_ns == o.mtime_ns &&
           ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileIdentity& o) const noexcept { return !(*this == o); }
};

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
  // Its identity now (fstat of this descriptor).
  FileIdentity identity() const;
  // Throws FileChangedError unless the file still has the identity `expected` it had when `what`
  // was read from it.
  void check_identity(const FileIdentity& expected) const;

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
