// The safetensors dtypes: names, bit widths and how each travels through DLPack.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "fastsafetensors/dlpack.hpp"

namespace fst {

// The one table of dtypes: X(header spelling, bits per element, DLPack type code of a native
// export). kRawBytes: no code every consumer shares (fp8, fp4, fp6), so the bytes travel as
// uint8 and each framework views them as its own type. Python builds its tables from this one
// (_cpp.dtype_table(), fastsafetensors/_src/dtypes.py); adding a dtype is a row here and a member of
// st_types.DType (a test checks that the two agree).
constexpr int kRawBytes = -1;
// A table, laid out by hand:
// clang-format off
#define FST_DTYPES(X)                                                                                          \
  X(BOOL, 8, kDLBool) X(U8, 8, kDLUInt) X(I8, 8, kDLInt) X(F8_E5M2, 8, kRawBytes) X(F8_E4M3, 8, kRawBytes)  \
  X(F8_E8M0, 8, kRawBytes) X(F8_E4M3FNUZ, 8, kRawBytes) X(F8_E5M2FNUZ, 8, kRawBytes) X(I16, 16, kDLInt)      \
  X(U16, 16, kDLUInt) X(F16, 16, kDLFloat) X(BF16, 16, kDLBfloat) X(I32, 32, kDLInt) X(U32, 32, kDLUInt)     \
  X(F32, 32, kDLFloat) X(I64, 64, kDLInt) X(U64, 64, kDLUInt) X(F64, 64, kDLFloat) X(C64, 64, kDLComplex)   \
  X(F4, 4, kRawBytes) X(F6_E2M3, 6, kRawBytes) X(F6_E3M2, 6, kRawBytes)
// clang-format on

#define FST_DTYPE_ENUM(name, bits, code) name,
enum class Dtype : uint8_t { FST_DTYPES(FST_DTYPE_ENUM) };
#undef FST_DTYPE_ENUM

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;
  unsigned bits;
  int dlpack_code;  // kRawBytes where the dtype travels as bytes
};

// Exact spelling used in headers; nullopt for anything else.
std::optional<Dtype> parse_dtype(std::string_view name) noexcept;
std::string_view dtype_name(Dtype dtype) noexcept;
// Bits per element; packed types (F4, F6_*) are below 8.
unsigned dtype_bits(Dtype dtype) noexcept;
// Every dtype, in enum order.
const DtypeInfo* dtypes_begin() noexcept;
const DtypeInfo* dtypes_end() noexcept;

}  // namespace fst
