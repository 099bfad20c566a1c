// Errors the engine raises. Each carries a kind that the bindings map onto the Python exception
// class of the same name (fastsafetensors.errors), so C++ and Python agree on what went wrong.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fst {

// Violations of the safetensors format; names follow the reference reader's errors.
enum class FormatErrorKind {
  HeaderTooSmall,
  HeaderTooLarge,
  InvalidHeaderLength,
  InvalidHeader,
  InvalidHeaderDeserialization,
  InvalidOffset,
  ValidationOverflow,
  MisalignedSlice,
  TensorInvalidInfo,
  MetadataIncompleteBuffer,
  DuplicateTensorName,
};

const char* format_error_name(FormatErrorKind kind) noexcept;

// `path` is empty while the parser sees bytes only; read_header sets it, so the error reaches
// Python with the file it is about.
class FormatError : public std::runtime_error {
 public:
  FormatError(FormatErrorKind kind, const std::string& message, std::string tensor = {}, std::string path = {})
      : std::runtime_error(message), kind_(kind), tensor_(std::move(tensor)), path_(std::move(path)) {}
  FormatErrorKind kind() const noexcept { return kind_; }
  const std::string& tensor() const noexcept { return tensor_; }
  const std::string& path() const noexcept { return path_; }

 private:
  FormatErrorKind kind_;
  std::string tensor_;
  std::string path_;
};

// A failed or short read. `truncated` marks a file that ended before the bytes its header
// promised (it shrank or was replaced after the header was parsed).
class ReadError : public std::runtime_error {
 public:
  ReadError(const std::string& path, uint64_t offset, int err, bool truncated, const std::string& message)
      : std::runtime_error(message), path_(path), offset_(offset), errno_(err), truncated_(truncated) {}
  const std::string& path() const noexcept { return path_; }
  uint64_t offset() const noexcept { return offset_; }
  int error_number() const noexcept { return errno_; }
  bool truncated() const noexcept { return truncated_; }

 private:
  std::string path_;
  uint64_t offset_;
  int errno_;
  bool truncated_;
};

// A path that is not a regular file (a FIFO, a directory, a device, a socket): refused before
// anything is read from it, since reading a FIFO or a device may block forever.
class NotRegularFileError : public ReadError {
 public:
  NotRegularFileError(const std::string& path, const std::string& what)
      : ReadError(path, 0, 0, false, path + ": not a regular file (" + what + ")") {}
};

// A file that is no longer the one its header was read from (replaced by a rename, or rewritten):
// nothing laid out by that header may be read from it.
class FileChangedError : public ReadError {
 public:
  FileChangedError(const std::string& path, const std::string& message) : ReadError(path, 0, 0, true, message) {}
};

// The OS refused a resource the engine needs (a thread: RLIMIT_NPROC, a cgroup's pids limit,
// address space). Nothing was left half-started.
class ResourceError : public std::runtime_error {
 public:
  ResourceError(const std::string& message, int err) : std::runtime_error(message), errno_(err) {}
  int error_number() const noexcept { return errno_; }

 private:
  int errno_;
};

}  // namespace fst
