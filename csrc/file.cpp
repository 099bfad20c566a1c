#include "fastsafetensors/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fastsafetensors/error.hpp"
#include "fastsafetensors/io_hooks.hpp"

namespace fst {

namespace {
[[noreturn]] void throw_errno(const std::string& path, uint64_t offset, int err, const char* what) {
  throw ReadError(path, offset, err, false,
                  path + ": " + what + " at offset " + std::to_string(offset) + ": " +
                      std::strerror(err));
}
}  // namespace

File::File(const std::string& path, bool direct) : path_(path), direct_(direct) {
  int flags = O_RDONLY | O_CLOEXEC;
#ifdef O_DIRECT
  if (direct) flags |= O_DIRECT;
#endif
  do {
    fd_ = ::open(path.c_str(), flags);
  } while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) {
    int err = errno;
    throw ReadError(path, 0, err, false, path + ": cannot open: " + std::strerror(err));
  }
}

File::File(File&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), direct_(other.direct_) {
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

uint64_t File::read_at(void* dst, uint64_t length, uint64_t offset) const {
  auto* out = static_cast<uint8_t*>(dst);
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = io_hooks::pread(fd_, out + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(path_, offset + done, errno, "read failed");
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return done;
}

void File::read_exact(void* dst, uint64_t length, uint64_t offset) const {
  uint64_t got = read_at(dst, length, offset);
  if (got != length) {
    throw ReadError(path_, offset + got, 0, true,
                    path_ + ": file ended at offset " + std::to_string(offset + got) +
                        " while reading " + std::to_string(length) + " bytes at offset " +
                        std::to_string(offset) + " (it was truncated or replaced after its header was read)");
  }
}

void File::advise_sequential(uint64_t offset, uint64_t length) const noexcept {
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_SEQUENTIAL);
}

void File::prefetch(uint64_t offset, uint64_t length) const noexcept {
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_WILLNEED);
}

void File::evict_from_page_cache() const noexcept {
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);
}

}  // namespace fst
