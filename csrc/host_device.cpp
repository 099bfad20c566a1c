// HostDevice: the Device interface on plain host memory, for testing the GPU pipeline on CPUs.
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "fastsafetensors/device.hpp"
#include "fastsafetensors/device_error.hpp"

namespace fst {
namespace {

// A stream: queued copies run in order on the stream's own thread.
struct HostStream {
  // `height` rows of `width` bytes, `pitch` apart on each side (a plain copy is one row).
  struct Copy {
    void* dst;
    size_t dst_pitch;
    const void* src;
    size_t src_pitch;
    size_t width;
    size_t height;
    bool fail;

    // Bytes from the first row's start to the last row's end.
    size_t dst_span() const { return height == 0 ? 0 : (height - 1) * dst_pitch + width; }
    size_t src_span() const { return height == 0 ? 0 : (height - 1) * src_pitch + width; }
  };
  std::thread thread;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Copy> queue;
  uint64_t queued = 0;
  uint64_t done = 0;
  std::exception_ptr error;  // first failure since the last sync reported one
  bool stopping = false;
};

struct HostEvent {
  HostStream* stream = nullptr;
  uint64_t ticket = 0;  // the stream's `queued` count when it was recorded
};

// Whether [p, p + size) lies inside one of the ranges of `m` (start -> size).
bool inside(const std::map<uintptr_t, size_t>& m, const void* p, size_t size) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a + size <= it->first + it->second;
}

}  // namespace

struct HostDevice::State {
  unsigned delay_us = 0;
  std::mutex mutex;
  std::string pci_bus_id;
  std::map<uintptr_t, size_t> pinned, device, registered;
  std::atomic<uint64_t> fail_copy{0};    // absolute copy number to fail, 0: none
  std::atomic<uint64_t> fail_pinned{0};  // absolute allocation number to fail
  std::atomic<uint64_t> pinned_allocs{0};

  bool copy_allowed(const HostStream::Copy& c) {
    std::lock_guard<std::mutex> lock(mutex);
    return (inside(pinned, c.src, c.src_span()) || inside(registered, c.src, c.src_span())) &&
           inside(device, c.dst, c.dst_span());
  }

  void run(HostStream* s) {
    std::unique_lock<std::mutex> lock(s->mutex);
    while (true) {
      s->cv.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
      if (s->queue.empty()) return;
      HostStream::Copy c = s->queue.front();
      lock.unlock();
      if (delay_us) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
      std::exception_ptr err;
      if (c.fail) {
        std::string what = c.height == 1 ? "copy" : "2D copy of " + std::to_string(c.height) + " rows";
        err = std::make_exception_ptr(DeviceError("HostDevice: injected failure of an asynchronous " + what));
      } else if (!copy_allowed(c)) {
        err = std::make_exception_ptr(
            DeviceError("HostDevice: asynchronous copy from memory that is not pinned or registered, or into "
                        "memory that is not device memory"));
      } else {
        for (size_t r = 0; r < c.height; ++r) {
          std::memcpy(static_cast<uint8_t*>(c.dst) + r * c.dst_pitch,
                      static_cast<const uint8_t*>(c.src) + r * c.src_pitch, c.width);
        }
      }
      lock.lock();
      if (err && !s->error) s->error = err;
      s->queue.pop_front();
      ++s->done;
      s->cv.notify_all();
    }
  }

  void* alloc(std::map<uintptr_t, size_t>& m, size_t size) {
    void* p = std::aligned_alloc(256, (size + 255) / 256 * 256 + 256);
    if (p == nullptr) throw DeviceError("HostDevice: out of memory");
    std::lock_guard<std::mutex> lock(mutex);
    m[reinterpret_cast<uintptr_t>(p)] = size;
    return p;
  }

  void release(std::map<uintptr_t, size_t>& m, void* p) noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex);
      m.erase(reinterpret_cast<uintptr_t>(p));
    }
    std::free(p);
  }

  static size_t total(std::mutex& mu, const std::map<uintptr_t, size_t>& m) {
    std::lock_guard<std::mutex> lock(mu);
    size_t n = 0;
    for (const auto& kv : m) n += kv.second;
    return n;
  }
};

HostDevice::HostDevice(unsigned copy_delay_us) : state_(std::make_unique<State>()) {
  state_->delay_us = copy_delay_us;
}

HostDevice::~HostDevice() = default;

std::string HostDevice::pci_bus_id() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->pci_bus_id;
}

void HostDevice::set_pci_bus_id(const std::string& bus_id) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->pci_bus_id = bus_id;
}

void* HostDevice::alloc_pinned(size_t size) {
  uint64_t n = ++state_->pinned_allocs;
  if (n == state_->fail_pinned.load()) throw DeviceError("HostDevice: injected failure of a pinned allocation");
  return state_->alloc(state_->pinned, size);
}
void HostDevice::free_pinned(void* p) noexcept { state_->release(state_->pinned, p); }
void* HostDevice::alloc_device(size_t size) { return state_->alloc(state_->device, size); }
void HostDevice::free_device(void* p) noexcept { state_->release(state_->device, p); }

void HostDevice::register_host(void* p, size_t size, bool read_only) {
  auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto it = state_->registered.lower_bound(a);
  bool overlaps = (it != state_->registered.end() && it->first < a + size) ||
                  (it != state_->registered.begin() && std::prev(it)->first + std::prev(it)->second > a);
  if (overlaps) throw DeviceError("HostDevice: cudaHostRegister of a range overlapping one already registered");
  state_->registered[a] = size;
  ++registrations_;
}

void HostDevice::unregister_host(void* p) noexcept {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->registered.erase(reinterpret_cast<uintptr_t>(p));
}

Device::Stream HostDevice::create_stream() {
  auto* s = new HostStream();
  State* st = state_.get();
  s->thread = std::thread([st, s] { st->run(s); });
  return s;
}

void HostDevice::destroy_stream(Stream stream) noexcept {
  auto* s = static_cast<HostStream*>(stream);
  {
    std::lock_guard<std::mutex> lock(s->mutex);
    s->stopping = true;
  }
  s->cv.notify_all();
  s->thread.join();
  delete s;
}

Device::Event HostDevice::create_event() { return new HostEvent(); }
void HostDevice::destroy_event(Event e) noexcept { delete static_cast<HostEvent*>(e); }

void HostDevice::copy_to_device_async(void* dst, const void* src, size_t size, Stream stream) {
  copy_2d_to_device_async(dst, size, src, size, size, 1, stream);
}

void HostDevice::copy_2d_to_device_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                                         size_t height, Stream stream) {
  // What cudaMemcpy2DAsync refuses before queueing anything (cudaErrorInvalidPitchValue/Value).
  if (height > 1 &&
      (width > dst_pitch || width > src_pitch || dst_pitch > kMaxCopyPitch || src_pitch > kMaxCopyPitch)) {
    throw DeviceError("HostDevice: cudaMemcpy2DAsync refuses rows of " + std::to_string(width) +
                      " bytes with pitches " + std::to_string(src_pitch) + " (source) and " +
                      std::to_string(dst_pitch) + " (destination): each must be at least the row and at most " +
                      std::to_string(kMaxCopyPitch));
  }
  auto* s = static_cast<HostStream*>(stream);
  uint64_t n = ++copies_;
  bool fail = n == state_->fail_copy.load();
  std::lock_guard<std::mutex> lock(s->mutex);
  s->queue.push_back({dst, dst_pitch, src, src_pitch, width, height, fail});
  ++s->queued;
  s->cv.notify_all();
}

void HostDevice::record_event(Event event, Stream stream) {
  auto* e = static_cast<HostEvent*>(event);
  auto* s = static_cast<HostStream*>(stream);
  std::lock_guard<std::mutex> lock(s->mutex);
  e->stream = s;
  e->ticket = s->queued;
}

namespace {
void wait_for(HostStream* s, uint64_t ticket) {
  std::unique_lock<std::mutex> lock(s->mutex);
  s->cv.wait(lock, [&] { return s->done >= ticket; });
  if (s->error) {
    std::exception_ptr err = s->error;
    s->error = nullptr;
    std::rethrow_exception(err);
  }
}
}  // namespace

void HostDevice::sync_event(Event event) {
  auto* e = static_cast<HostEvent*>(event);
  if (e->stream != nullptr) wait_for(e->stream, e->ticket);
}

void HostDevice::sync_stream(Stream stream) {
  auto* s = static_cast<HostStream*>(stream);
  uint64_t ticket;
  {
    std::lock_guard<std::mutex> lock(s->mutex);
    ticket = s->queued;
  }
  wait_for(s, ticket);
}

void HostDevice::fail_copy_at(uint64_t n) noexcept { state_->fail_copy = n ? copies_.load() + n : 0; }
void HostDevice::fail_pinned_alloc_at(uint64_t n) noexcept {
  state_->fail_pinned = n ? state_->pinned_allocs.load() + n : 0;
}
size_t HostDevice::live_pinned_bytes() const noexcept { return State::total(state_->mutex, state_->pinned); }
size_t HostDevice::live_device_bytes() const noexcept { return State::total(state_->mutex, state_->device); }
size_t HostDevice::live_registered_bytes() const noexcept { return State::total(state_->mutex, state_->registered); }

}  // namespace fst
