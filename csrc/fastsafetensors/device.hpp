// What the GPU reader needs of a device: pinned host memory, device memory, streams, events,
// asynchronous host-to-device copies and page registration. CudaDevice does it through the
// CUDA runtime shim; HostDevice does it with plain memory and a thread per stream, so the whole
// pipeline (slot reuse, ordering, errors, cancellation) is tested on machines without a GPU.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "fastsafetensors/buffer.hpp"
#include "fastsafetensors/dlpack.hpp"

namespace fst {

// The largest pitch a 2D copy takes: cudaDevAttrMaxPitch (cudaDeviceProp::memPitch) of current
// GPUs; callers copy rows further apart one by one.
inline constexpr size_t kMaxCopyPitch = (size_t{1} << 31) - 1;

class Device {
 public:
  using Stream = void*;
  using Event = void*;

  virtual ~Device() = default;
  virtual DLDevice dl_device() const noexcept = 0;
  virtual std::string name() const = 0;
  // Makes the calling thread's device current (every worker calls it before the others).
  virtual void bind_thread() = 0;
  // The PCI bus id of the device ("0000:3b:00.0"), which locates its NUMA node; "" if none.
  virtual std::string pci_bus_id() const = 0;

  virtual void* alloc_pinned(size_t size) = 0;
  virtual void free_pinned(void* p) noexcept = 0;
  virtual void* alloc_device(size_t size) = 0;
  virtual void free_device(void* p) noexcept = 0;
  // Page-locks existing host memory (read_only: pages the process may not write, e.g. a
  // read-only file mapping). Ranges may not overlap a range already registered.
  virtual void register_host(void* p, size_t size, bool read_only) = 0;
  virtual void unregister_host(void* p) noexcept = 0;

  virtual Stream create_stream() = 0;
  virtual void destroy_stream(Stream s) noexcept = 0;
  virtual Event create_event() = 0;
  virtual void destroy_event(Event e) noexcept = 0;
  // Queues a copy of pinned or registered host memory to the device on `s`.
  virtual void copy_to_device_async(void* dst, const void* src, size_t size, Stream s) = 0;
  // Queues `height` rows of `width` bytes, row r from src + r * src_pitch to dst + r * dst_pitch,
  // on `s` as one copy (cudaMemcpy2DAsync). Both pitches are at least `width` and at most
  // kMaxCopyPitch; the rows come from pinned or registered host memory.
  virtual void copy_2d_to_device_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                                       size_t height, Stream s) = 0;
  virtual void record_event(Event e, Stream s) = 0;
  // Waits for the work before the event's last record; throws if any of it failed.
  virtual void sync_event(Event e) = 0;
  virtual void sync_stream(Stream s) = 0;
};

// The CUDA device `ordinal`; throws DeviceError naming what is missing when no CUDA runtime
// loads or no such device exists.
std::shared_ptr<Device> cuda_device(int ordinal);
// Number of CUDA devices, 0 when no runtime loads (never throws).
int cuda_device_count() noexcept;

// Host memory standing in for a GPU. Copies run on one thread per stream after `copy_delay_us`,
// so a reader that reused a staging slot before its copy finished delivers wrong bytes. It also
// checks what CUDA would refuse (copies from unpinned, unregistered memory, overlapping
// registrations) and can fail the n-th copy or allocation on purpose.
class HostDevice final : public Device {
 public:
  explicit HostDevice(unsigned copy_delay_us = 0);
  ~HostDevice() override;

  DLDevice dl_device() const noexcept override { return {kDLCPU, 0}; }
  std::string name() const override { return "host"; }
  void bind_thread() override {}
  // None unless a test gave one (to place the reader as if this were a GPU on that bus).
  std::string pci_bus_id() const override;
  void set_pci_bus_id(const std::string& bus_id);
  void* alloc_pinned(size_t size) override;
  void free_pinned(void* p) noexcept override;
  void* alloc_device(size_t size) override;
  void free_device(void* p) noexcept override;
  void register_host(void* p, size_t size, bool read_only) override;
  void unregister_host(void* p) noexcept override;
  Stream create_stream() override;
  void destroy_stream(Stream s) noexcept override;
  Event create_event() override;
  void destroy_event(Event e) noexcept override;
  void copy_to_device_async(void* dst, const void* src, size_t size, Stream s) override;
  // A row loop on the stream's thread, counted as one copy (delay, fault hooks and memory checks
  // included); refuses pitches CUDA would refuse, when it is queued.
  void copy_2d_to_device_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                               size_t height, Stream s) override;
  void record_event(Event e, Stream s) override;
  void sync_event(Event e) override;
  void sync_stream(Stream s) override;

  // Fault hooks: the n-th copy from now (1 = the next) fails when it runs, as an asynchronous
  // CUDA error would; the n-th pinned allocation fails when asked for. 0 disables.
  void fail_copy_at(uint64_t n) noexcept;
  void fail_pinned_alloc_at(uint64_t n) noexcept;
  uint64_t copies() const noexcept { return copies_.load(); }
  uint64_t registrations() const noexcept { return registrations_.load(); }
  // Pinned + device + registered bytes still held (tests check they all come back).
  size_t live_pinned_bytes() const noexcept;
  size_t live_device_bytes() const noexcept;
  size_t live_registered_bytes() const noexcept;

  struct State;

 private:
  std::unique_ptr<State> state_;
  std::atomic<uint64_t> copies_{0};
  std::atomic<uint64_t> registrations_{0};
};

// Device memory the engine allocated itself, exported as DLPack for consumers that bring no
// allocator; freed when the last tensor viewing it is gone.
class DeviceBuffer final : public Buffer {
 public:
  static std::shared_ptr<DeviceBuffer> allocate(std::shared_ptr<Device> device, size_t size);
  ~DeviceBuffer() override;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  uint8_t* data() noexcept override { return data_; }
  size_t size() const noexcept override { return size_; }
  DLDevice device() const noexcept override { return device_->dl_device(); }

 private:
  DeviceBuffer() = default;
  std::shared_ptr<Device> device_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fst
