#include "fastsafetensors/dtype.hpp"

#include <array>

namespace fst {
namespace {

#define FST_DTYPE_INFO(name, bits, code) DtypeInfo{Dtype::name, #name, bits, code},
constexpr std::array kDtypes{FST_DTYPES(FST_DTYPE_INFO)};
#undef FST_DTYPE_INFO

const DtypeInfo& info(Dtype dtype) noexcept { return kDtypes[static_cast<size_t>(dtype)]; }

}  // namespace

std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
  for (const auto& d : kDtypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

std::string_view dtype_name(Dtype dtype) noexcept { return info(dtype).name; }

unsigned dtype_bits(Dtype dtype) noexcept { return info(dtype).bits; }

const DtypeInfo* dtypes_begin() noexcept { return kDtypes.data(); }

const DtypeInfo* dtypes_end() noexcept { return kDtypes.data() + kDtypes.size(); }

}  // namespace fst
