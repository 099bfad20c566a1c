// Overflow-checked 64-bit arithmetic for sizes and offsets that come from untrusted headers.
#pragma once

#include <cstdint>

namespace fst::detail {

inline bool checked_add(uint64_t a, uint64_t b, uint64_t& out) noexcept { return !__builtin_add_overflow(a, b, &out); }

inline bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) noexcept { return !__builtin_mul_overflow(a, b, &out); }

inline uint64_t align_up(uint64_t v, uint64_t alignment) noexcept {
  return (v + alignment - 1) / alignment * alignment;
}

}  // namespace fst::detail
