// SHA-256 (FIPS 180-4), written for the engine so integrity checks need no extra library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace fst {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  // Uses the CPU's SHA extensions when it has them, unless `portable` (tests compare both).
  explicit Sha256(bool portable = false) noexcept;
  void update(const void* data, size_t length) noexcept;
  // Pads and returns the digest; the object must not be updated afterwards.
  Digest finish() noexcept;
  static std::string hex(const Digest& digest);
  // "sha-ni" or "portable": what a default Sha256 uses on this machine.
  static const char* implementation() noexcept;

 private:
  using BlocksFn = void (*)(uint32_t state[8], const uint8_t* blocks, size_t count);

  BlocksFn blocks_;
  uint32_t state_[8];
  uint8_t block_[64];
  size_t block_len_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace fst
