// SHA-256 compression of whole 64-byte blocks, with a version for the x86 SHA extensions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fst::detail {

using Sha256BlocksFn = void (*)(uint32_t state[8], const uint8_t* blocks, size_t count);

// The SHA-NI compression function when this CPU has the SHA extensions, else nullptr.
Sha256BlocksFn sha256_blocks_x86() noexcept;

}  // namespace fst::detail
