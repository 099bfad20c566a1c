// The safetensors dtypes: names, bit widths and how each travels through DLPack.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace fst {

enum class Dtype : uint8_t {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64, C64,
  F4, F6_E2M3, F6_E3M2,
};

// Exact spelling used in headers; nullopt for anything else.
std::optional<Dtype> parse_dtype(std::string_view name) noexcept;
std::string_view dtype_name(Dtype dtype) noexcept;
// Bits per element; packed types (F4, F6_*) are below 8.
unsigned dtype_bits(Dtype dtype) noexcept;

}  // namespace fst
