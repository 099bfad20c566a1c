#include "fastsafetensors/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "fastsafetensors/error.hpp"
#include "fastsafetensors/io_hooks.hpp"

namespace fst {

namespace {
[[noreturn]] void throw_errno(const std::string& path, uint64_t offset, int err, const char* what) {
  throw ReadError(path, offset, err, false,
                  path + ": " + what + " at offset " + std::to_string(offset) + ": " + std::strerror(err));
}
}  // namespace

namespace {
const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}
}  // namespace

File::File(const std::string& path, bool direct) : path_(path), direct_(direct) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever.
  int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK;
#ifdef O_DIRECT
  if (direct) flags |= O_DIRECT;
#endif
  while ((fd_ = io_hooks::open(path.c_str(), flags)) < 0 && errno == EINTR) io_hooks::check_interrupt();
  if (fd_ < 0) {
    int err = errno;
    throw ReadError(path, 0, err, false, path + ": cannot open: " + std::strerror(err));
  }
  struct stat st;
  int err = ::fstat(fd_, &st) != 0 ? errno : 0;
  if (err != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);  // the destructor does not run for a constructor that throws
    fd_ = -1;
    if (err != 0) throw_errno(path, 0, err, "cannot stat");
    throw NotRegularFileError(path, file_kind(st.st_mode));
  }
  // A regular file never blocks, but O_NONBLOCK is not meant for it: reads behave as usual without it.
  ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
}

File::File(File&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_), direct_(other.direct_) {
  other.fd_ = -1;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t File::size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw_errno(path_, 0, errno, "cannot stat");
  return static_cast<uint64_t>(st.st_size);
}

FileIdentity File::identity() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw_errno(path_, 0, errno, "cannot stat");
  return FileIdentity{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                      static_cast<uint64_t>(st.st_size),
                      static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
                      static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec};
}

void File::check_identity(const FileIdentity& expected) const {
  FileIdentity now = identity();
  if (now == expected) return;
  std::string how = now.inode != expected.inode || now.device != expected.device ? "another file is at its path"
                    : now.size != expected.size ? "its size went from " + std::to_string(expected.size) + " to " +
                                                      std::to_string(now.size) + " bytes"
                    : now.mtime_ns != expected.mtime_ns ? "its modification time changed"
                                                        : "its status-change time changed: rewritten, or its mode "
                                                          "or links changed";
  throw FileChangedError(path_, path_ + ": file was replaced or modified after its header was read (" + how + ")");
}

uint64_t File::read_at(iovec* pieces, int count, uint64_t offset) const {
  uint64_t done = 0;
  while (count > 0) {
    if (pieces->iov_len == 0) {
      ++pieces, --count;
      continue;
    }
    ssize_t n = io_hooks::preadv(fd_, pieces, std::min(count, IOV_MAX), static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) {
        io_hooks::check_interrupt();
        continue;
      }
      throw_errno(path_, offset + done, errno, "read failed");
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
    // Step past what arrived: whole pieces, then into the one it stopped in.
    for (auto left = static_cast<size_t>(n); left > 0;) {
      size_t take = std::min(left, pieces->iov_len);
      pieces->iov_base = static_cast<uint8_t*>(pieces->iov_base) + take;
      pieces->iov_len -= take;
      left -= take;
      if (pieces->iov_len == 0) ++pieces, --count;
    }
  }
  return done;
}

void File::read_exact(iovec* pieces, int count, uint64_t offset) const {
  uint64_t length = 0;
  for (int i = 0; i < count; ++i) length += pieces[i].iov_len;
  uint64_t got = read_at(pieces, count, offset);
  if (got != length) {
    throw ReadError(path_, offset + got, 0, true,
                    path_ + ": file ended at offset " + std::to_string(offset + got) + " while reading " +
                        std::to_string(length) + " bytes at offset " + std::to_string(offset) +
                        " (it was truncated or replaced after its header was read)");
  }
}

uint64_t File::read_at(void* dst, uint64_t length, uint64_t offset) const {
  iovec one{dst, length};
  return read_at(&one, 1, offset);
}

void File::read_exact(void* dst, uint64_t length, uint64_t offset) const {
  iovec one{dst, length};
  read_exact(&one, 1, offset);
}

void File::advise_sequential(uint64_t offset, uint64_t length) const noexcept {
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_SEQUENTIAL);
}

void File::prefetch(uint64_t offset, uint64_t length) const noexcept {
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_WILLNEED);
}

void File::evict_from_page_cache() const noexcept { ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED); }

}  // namespace fst
