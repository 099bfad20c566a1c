// Memory that loaded tensors live in. Buffers are shared: every exported tensor holds a
// reference, so a buffer is freed when the last tensor (or loader) using it is gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "fastsafetensors/dlpack.hpp"

namespace fst {

class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual uint8_t* data() noexcept = 0;
  virtual size_t size() const noexcept = 0;
  virtual DLDevice device() const noexcept = 0;
};

// Whether large host buffers ask for huge pages (FASTSAFETENSORS_HUGE_PAGES=1): page faults
// dominate an eager load, and which pages fault in faster depends on where the memory comes from.
// Measured on the project's VMs (docs/benchmarks.md): huge pages this process freed moments ago
// fault back in at ~8 GB/s, but fresh huge pages at ~0.5 GB/s against ~2 GB/s a thread for fresh
// 4 KiB pages. Most processes load once, so 4 KiB pages are the default and processes that load
// again and again can opt in. Read at each call; a value that is not a boolean throws SettingsError.
bool huge_pages_by_default();

// Host memory owned by the engine, 64-byte aligned; large buffers are mmap'd on a 2 MiB boundary
// so that huge pages can back them, and their mappings go to the host cache when freed.
class HostBuffer final : public Buffer {
 public:
  static std::shared_ptr<HostBuffer> allocate(size_t size, bool huge_pages = huge_pages_by_default());
  ~HostBuffer() override;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  uint8_t* data() noexcept override { return data_; }
  size_t size() const noexcept override { return size_; }
  DLDevice device() const noexcept override { return {kDLCPU, 0}; }
  bool huge_pages() const noexcept { return huge_; }
  // Whether the memory came from the host cache (host_cache.hpp): its pages are most likely
  // faulted in already.
  bool reused() const noexcept { return reused_; }
  // Bytes of host buffers alive in this process (tests check that they come back).
  static size_t live_bytes() noexcept;

  // Test hook, asked before each allocation: returning true makes it fail with bad_alloc, as
  // an exhausted machine would. nullptr removes it; returns the previous hook.
  using FailHook = bool (*)(size_t size);
  static FailHook set_fail_hook(FailHook hook) noexcept;

 private:
  HostBuffer() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;  // the mapping behind data_, or null for small heap allocations
  size_t map_size_ = 0;
  bool huge_ = false;
  bool reused_ = false;
};

}  // namespace fst
