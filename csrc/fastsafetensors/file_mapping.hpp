// A whole file mapped private and copy-on-write: tensors viewing it share the page cache's pages
// until they are written to, and no write reaches the file. The mapping is a Buffer, so tensors
// keep it alive as they keep host buffers alive.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/host_reader.hpp"

namespace fst {

class FileMapping final : public Buffer {
 public:
  // Maps `source`, refusing (as a read would) a file that is no longer the one its header was
  // read from.
  static std::shared_ptr<FileMapping> map(const ReadSource& source);
  ~FileMapping() override;
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  uint8_t* data() noexcept override { return data_; }
  size_t size() const noexcept override { return size_; }
  DLDevice device() const noexcept override { return {kDLCPU, 0}; }

  // Maps the page cache's pages of [offset, offset + length) now, readable and still shared
  // (MADV_POPULATE_READ), so the first touches of the tensors do not fault one by one. Returns
  // false where the kernel cannot (before Linux 5.14): the pages then fault in when touched.
  // A file that shrank under the mapping, or a failing disk, throws ReadError naming `path`.
  bool populate(const std::string& path, uint64_t offset, uint64_t length);

 private:
  FileMapping() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fst
