// The CUDA implementation of Device, through the runtime shim.
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "fastsafetensors/device.hpp"
#include "fastsafetensors/device_error.hpp"
#include "fastsafetensors/settings.hpp"
#include "fastsafetensors/shim/cudart.hpp"

namespace fst {
namespace {

using shim::cuda_check;

class CudaDevice final : public Device {
 public:
  CudaDevice(const shim::CudaRuntime* rt, int ordinal) : rt_(rt), ordinal_(ordinal) {}

  DLDevice dl_device() const noexcept override { return {kDLCUDA, ordinal_}; }
  std::string name() const override { return "cuda:" + std::to_string(ordinal_) + " via " + rt_->library; }
  void bind_thread() override {
    cuda_check(rt_->SetDevice(ordinal_), "cudaSetDevice(" + std::to_string(ordinal_) + ")");
  }
  // Only for placing the reader's threads: without a bus id they are left where they are.
  std::string pci_bus_id() const override {
    char id[64] = {};
    if (rt_->DeviceGetPCIBusId(id, sizeof id - 1, ordinal_) != shim::cudaSuccess) return "";
    return id;
  }

  // Pinned staging memory: huge-page host memory, touched by the calling thread and registered.
  // Pinning 2 MiB pages costs far less than cudaHostAlloc's 4 KiB ones, and lanes pin their
  // slots in parallel. Slots under 2 MiB (which could share a page with other heap memory), or
  // FASTSAFETENSORS_PIN=alloc, use cudaHostAlloc.
  void* alloc_pinned(size_t size) override {
    if (size < (size_t{2} << 20) ||
        settings::get_choice("FASTSAFETENSORS_PIN", "register", {"register", "alloc"}) == "alloc") {
      void* p = nullptr;
      cuda_check(rt_->HostAlloc(&p, size, shim::cudaHostAllocPortable),
                 "cudaHostAlloc of " + std::to_string(size) + " pinned bytes");
      std::lock_guard<std::mutex> lock(mutex_);
      pinned_[p] = nullptr;
      return p;
    }
    std::shared_ptr<HostBuffer> buf = HostBuffer::allocate(size);
    std::memset(buf->data(), 0, size);  // fault the pages in here, not inside the driver
    cuda_check(rt_->HostRegister(buf->data(), size, shim::cudaHostRegisterPortable),
               "cudaHostRegister of " + std::to_string(size) + " staging bytes");
    std::lock_guard<std::mutex> lock(mutex_);
    pinned_[buf->data()] = buf;
    return buf->data();
  }
  void free_pinned(void* p) noexcept override {
    std::shared_ptr<HostBuffer> buf;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = pinned_.find(p);
      if (it == pinned_.end()) return;
      buf = std::move(it->second);
      pinned_.erase(it);
    }
    if (buf == nullptr) {
      rt_->FreeHost(p);
    } else {
      rt_->HostUnregister(p);
    }
  }
  void* alloc_device(size_t size) override {
    bind_thread();
    void* p = nullptr;
    cuda_check(rt_->Malloc(&p, size), "cudaMalloc of " + std::to_string(size) + " bytes on " + name());
    return p;
  }
  void free_device(void* p) noexcept override { rt_->Free(p); }
  void register_host(void* p, size_t size, bool read_only) override {
    unsigned flags = read_only ? shim::cudaHostRegisterReadOnly : 0u;
    cuda_check(rt_->HostRegister(p, size, flags), "cudaHostRegister of " + std::to_string(size) + " bytes");
  }
  void unregister_host(void* p) noexcept override { rt_->HostUnregister(p); }

  Stream create_stream() override {
    shim::cudaStream_t s = nullptr;
    cuda_check(rt_->StreamCreateWithFlags(&s, shim::cudaStreamNonBlocking), "cudaStreamCreate");
    return s;
  }
  void destroy_stream(Stream s) noexcept override { rt_->StreamDestroy(s); }
  Event create_event() override {
    shim::cudaEvent_t e = nullptr;
    cuda_check(rt_->EventCreateWithFlags(&e, shim::cudaEventDisableTiming), "cudaEventCreate");
    return e;
  }
  void destroy_event(Event e) noexcept override { rt_->EventDestroy(e); }
  void copy_to_device_async(void* dst, const void* src, size_t size, Stream s) override {
    cuda_check(rt_->MemcpyAsync(dst, src, size, shim::cudaMemcpyHostToDevice, s),
               "cudaMemcpyAsync of " + std::to_string(size) + " bytes to the GPU");
  }
  void copy_2d_to_device_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                               size_t height, Stream s) override {
    cuda_check(
        rt_->Memcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, shim::cudaMemcpyHostToDevice, s),
        "cudaMemcpy2DAsync of " + std::to_string(height) + " rows of " + std::to_string(width) + " bytes to the GPU");
  }
  void record_event(Event e, Stream s) override { cuda_check(rt_->EventRecord(e, s), "cudaEventRecord"); }
  void sync_event(Event e) override { cuda_check(rt_->EventSynchronize(e), "a copy to the GPU"); }
  void sync_stream(Stream s) override { cuda_check(rt_->StreamSynchronize(s), "copies to the GPU"); }

 private:
  const shim::CudaRuntime* rt_;
  int ordinal_;
  std::mutex mutex_;
  std::unordered_map<void*, std::shared_ptr<HostBuffer>> pinned_;  // null: from cudaHostAlloc
};

}  // namespace

int cuda_device_count() noexcept {
  const shim::CudaRuntime* rt = shim::cuda_runtime();
  int n = 0;
  if (rt == nullptr || rt->GetDeviceCount(&n) != shim::cudaSuccess) return 0;
  return n;
}

std::shared_ptr<Device> cuda_device(int ordinal) {
  const shim::CudaRuntime* rt = shim::cuda_runtime();
  if (rt == nullptr) throw DeviceError("fastsafetensors: device 'cuda' is unavailable: " + shim::cuda_runtime_error());
  int n = 0;
  cuda_check(rt->GetDeviceCount(&n), "fastsafetensors: device 'cuda' is unavailable: cudaGetDeviceCount");
  if (ordinal < 0 || ordinal >= n) {
    throw DeviceError("fastsafetensors: no CUDA device " + std::to_string(ordinal) + " (this machine has " +
                      std::to_string(n) + ")");
  }
  auto dev = std::make_shared<CudaDevice>(rt, ordinal);
  dev->bind_thread();
  return dev;
}

std::shared_ptr<DeviceBuffer> DeviceBuffer::allocate(std::shared_ptr<Device> device, size_t size) {
  std::shared_ptr<DeviceBuffer> buf(new DeviceBuffer());
  buf->data_ = static_cast<uint8_t*>(device->alloc_device(size == 0 ? 1 : size));
  buf->size_ = size;
  buf->device_ = std::move(device);
  return buf;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) device_->free_device(data_);
}

}  // namespace fst
