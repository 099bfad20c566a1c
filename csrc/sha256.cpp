#include "fastsafetensors/sha256.hpp"

#include "fastsafetensors/detail/sha256_blocks.hpp"

#include <algorithm>
#include <cstring>

namespace fst {
namespace {

// First 32 bits of the fractional parts of the square roots of the first 8 primes (5.3.3).
constexpr uint32_t kInitial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

inline uint32_t rotr(uint32_t x, unsigned n) noexcept { return (x >> n) | (x << (32 - n)); }

inline uint32_t load_be32(const uint8_t* p) noexcept {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// One block, as FIPS 180-4 6.2.2 describes it.
void compress(uint32_t state[8], const uint8_t* block) noexcept {
  // Message schedule (step 1).
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) w[t] = load_be32(block + 4 * t);
  for (int t = 16; t < 64; ++t) {
    uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
  for (int t = 0; t < 64; ++t) {
    uint32_t big_s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = h + big_s1 + ch + detail::kSha256Round[t] + w[t];
    uint32_t big_s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = big_s0 + maj;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
  state[5] += f;
  state[6] += g;
  state[7] += h;
}

void blocks_portable(uint32_t state[8], const uint8_t* p, size_t count) noexcept {
  for (; count > 0; --count, p += 64) compress(state, p);
}

}  // namespace

Sha256::Sha256(bool portable) noexcept {
  detail::Sha256BlocksFn fast = portable ? nullptr : detail::sha256_blocks_x86();
  blocks_ = fast != nullptr ? fast : &blocks_portable;
  std::memcpy(state_, kInitial, sizeof(state_));
}

const char* Sha256::implementation() noexcept {
  return detail::sha256_blocks_x86() != nullptr ? "sha-ni" : "portable";
}

void Sha256::update(const void* data, size_t length) noexcept {
  const auto* p = static_cast<const uint8_t*>(data);
  total_bytes_ += length;
  if (block_len_ > 0) {
    size_t take = std::min(length, sizeof(block_) - block_len_);
    std::memcpy(block_ + block_len_, p, take);
    block_len_ += take;
    p += take;
    length -= take;
    if (block_len_ < sizeof(block_)) return;
    blocks_(state_, block_, 1);
    block_len_ = 0;
  }
  size_t whole = length / 64;
  if (whole > 0) blocks_(state_, p, whole);
  p += whole * 64;
  length -= whole * 64;
  std::memcpy(block_, p, length);
  block_len_ = length;
}

Sha256::Digest Sha256::finish() noexcept {
  // Padding (5.1.1): a 1 bit, zeros to 56 mod 64 bytes, then the message length in bits.
  uint64_t bits = total_bytes_ * 8;
  block_[block_len_++] = 0x80;
  if (block_len_ > 56) {
    std::memset(block_ + block_len_, 0, 64 - block_len_);
    blocks_(state_, block_, 1);
    block_len_ = 0;
  }
  std::memset(block_ + block_len_, 0, 56 - block_len_);
  for (int i = 0; i < 8; ++i) block_[56 + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
  blocks_(state_, block_, 1);
  Digest out;
  for (int i = 0; i < 8; ++i) {
    for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<uint8_t>(state_[i] >> (24 - 8 * k));
  }
  return out;
}

std::string Sha256::hex(const Digest& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(64);
  for (uint8_t b : digest) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

}  // namespace fst
