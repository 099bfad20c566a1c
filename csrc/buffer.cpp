#include "fastsafetensors/buffer.hpp"

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/host_cache.hpp"
#include "fastsafetensors/settings.hpp"

namespace fst {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
// Below this, huge pages would waste more memory than page faults cost.
constexpr size_t kHugeThreshold = kHugePage;
constexpr size_t kSmallAlignment = 64;
std::atomic<size_t> g_live_bytes{0};
std::atomic<HostBuffer::FailHook> g_fail_hook{nullptr};

// Rounds `size` up for allocation; sizes within a few pages of SIZE_MAX would wrap to tiny
// requests that "succeed", so they fail here as the impossible requests they are.
size_t rounded_or_throw(size_t size, size_t step, size_t extra = 0) {
  size_t out = 0;
  if (!detail::checked_add(size, step - 1 + extra, out)) throw std::bad_alloc();
  return detail::align_up(size, step) + extra;
}
}  // namespace

bool huge_pages_by_default() { return settings::get_bool("FASTSAFETENSORS_HUGE_PAGES", false); }

HostBuffer::FailHook HostBuffer::set_fail_hook(FailHook hook) noexcept { return g_fail_hook.exchange(hook); }

std::shared_ptr<HostBuffer> HostBuffer::allocate(size_t size, bool huge_pages) {
  FailHook hook = g_fail_hook.load();
  if (hook != nullptr && hook(size)) throw std::bad_alloc();
  std::shared_ptr<HostBuffer> buf(new HostBuffer());
  size_t want = size == 0 ? 1 : size;
  if (want >= kHugeThreshold) {
    // Over-map by one huge page so the start can be moved to a 2 MiB boundary.
    size_t rounded = rounded_or_throw(want, kHugePage);
    size_t map_size = rounded_or_throw(want, kHugePage, kHugePage);
    void* map = host_cache_take(map_size, huge_pages).base;
    buf->reused_ = map != nullptr;
    if (map == nullptr) map = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) throw std::bad_alloc();
    auto base = reinterpret_cast<uintptr_t>(map);
    auto aligned = detail::align_up(base, kHugePage);
    buf->map_ = map;
    buf->map_size_ = map_size;
    buf->data_ = reinterpret_cast<uint8_t*>(aligned);
    buf->huge_ = huge_pages && ::madvise(buf->data_, rounded, MADV_HUGEPAGE) == 0;
  } else {
    void* p = std::aligned_alloc(kSmallAlignment, rounded_or_throw(want, kSmallAlignment));
    if (p == nullptr) throw std::bad_alloc();
    buf->data_ = static_cast<uint8_t*>(p);
  }
  buf->size_ = size;
  g_live_bytes.fetch_add(size, std::memory_order_relaxed);
  return buf;
}

HostBuffer::~HostBuffer() {
  if (map_ != nullptr) {
    host_cache_give(Mapping{map_, map_size_, huge_});
  } else {
    std::free(data_);
  }
  g_live_bytes.fetch_sub(size_, std::memory_order_relaxed);
}

size_t HostBuffer::live_bytes() noexcept { return g_live_bytes.load(std::memory_order_relaxed); }

}  // namespace fst
