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

  Sha256() noexcept;
  void update(const void* data, size_t length) noexcept;
  // Pads and returns the digest; the object must not be updated afterwards.
  Digest finish() noexcept;
  static std::string hex(const Digest& digest);

 private:
  void compress(const uint8_t* block) noexcept;

  uint32_t state_[8];
  uint8_t block_[64];
  size_t block_len_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace fst
