// A whole file mapped private and copy-on-write: tensors viewing it share the page cache's pages
// until they are written to, and no write reaches the file. The mapping is a Buffer, so tensors
// keep it alive as they keep host buffers alive. Pages fault in when first touched: measured,
// that beats populating them up front (MADV_POPULATE_READ), which maps them one by one.
#pragma once

#include <cstdint>
#include <memory>

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

 private:
  FileMapping() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fst
