#include "fastsafetensors/header.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <unordered_set>

#include "fastsafetensors/detail/checked.hpp"
#include "fastsafetensors/detail/json_cursor.hpp"
#include "fastsafetensors/error.hpp"
#include "fastsafetensors/file.hpp"

namespace fst {

using detail::JsonCursor;
using detail::JsonError;

const char* format_error_name(FormatErrorKind kind) noexcept {
  switch (kind) {
    case FormatErrorKind::HeaderTooSmall: return "HeaderTooSmall";
    case FormatErrorKind::HeaderTooLarge: return "HeaderTooLarge";
    case FormatErrorKind::InvalidHeaderLength: return "InvalidHeaderLength";
    case FormatErrorKind::InvalidHeader: return "InvalidHeader";
    case FormatErrorKind::InvalidHeaderDeserialization: return "InvalidHeaderDeserialization";
    case FormatErrorKind::InvalidOffset: return "InvalidOffset";
    case FormatErrorKind::ValidationOverflow: return "ValidationOverflow";
    case FormatErrorKind::MisalignedSlice: return "MisalignedSlice";
    case FormatErrorKind::TensorInvalidInfo: return "TensorInvalidInfo";
    case FormatErrorKind::MetadataIncompleteBuffer: return "MetadataIncompleteBuffer";
    case FormatErrorKind::DuplicateTensorName: return "DuplicateTensorName";
  }
  return "FormatError";
}

namespace {

// Extra fields in a tensor entry are ignored, but still bounded in depth.
constexpr int kMaxSkipDepth = 64;
// More dimensions than any framework uses; the bound keeps a shape's memory near its JSON size.
constexpr size_t kMaxRank = 1024;

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Position of the first byte that is not valid UTF-8, or npos.
size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else return i;
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Reads an array of integers, stopping early once it holds more than `max_count` (the caller
// reports that), so a hostile array cannot grow a vector to several times the header's size.
std::vector<uint64_t> read_uint_array(JsonCursor& in, size_t max_count) {
  std::vector<uint64_t> out;
  in.expect('[', "'['");
  if (in.accept(']')) return out;
  do {
    out.push_back(in.read_uint());
    if (out.size() > max_count) return out;
  } while (in.accept(','));
  in.expect(']', "',' or ']'");
  return out;
}

TensorInfo read_tensor_entry(JsonCursor& in, std::string name) {
  TensorInfo t;
  t.name = std::move(name);
  bool have_dtype = false, have_shape = false, have_offsets = false;
  in.expect('{', "a tensor entry object");
  if (!in.accept('}')) {
    do {
      std::string field = in.read_string();
      in.expect(':', "':'");
      bool* seen = nullptr;
      if (field == "dtype") {
        seen = &have_dtype;
        std::string dtype = in.read_string();
        auto parsed = parse_dtype(dtype);
        if (!parsed) in.fail("unknown dtype \"" + dtype + "\"");
        t.dtype = *parsed;
      } else if (field == "shape") {
        seen = &have_shape;
        t.shape = read_uint_array(in, kMaxRank);
        if (t.shape.size() > kMaxRank) {
          in.fail("shape of tensor `" + t.name + "` has more than " + std::to_string(kMaxRank) + " dimensions");
        }
      } else if (field == "data_offsets") {
        seen = &have_offsets;
        auto offsets = read_uint_array(in, 2);
        if (offsets.size() != 2) in.fail("data_offsets must hold 2 integers");
        t.begin = offsets[0];
        t.end = offsets[1];
      } else {
        in.skip_value(kMaxSkipDepth);
        continue;
      }
      if (*seen) in.fail("duplicate field `" + field + "`");
      *seen = true;
    } while (in.accept(','));
    in.expect('}', "',' or '}'");
  }
  if (!have_dtype) in.fail("missing field `dtype`");
  if (!have_shape) in.fail("missing field `shape`");
  if (!have_offsets) in.fail("missing field `data_offsets`");
  return t;
}

void read_metadata(JsonCursor& in, Header& h) {
  h.has_metadata = true;
  if (in.accept_literal("null")) return;
  in.expect('{', "__metadata__ to be an object of strings");
  if (in.accept('}')) return;
  std::unordered_set<std::string> seen;
  do {
    std::string key = in.read_string();
    in.expect(':', "':'");
    std::string value = in.read_string();
    if (!seen.insert(key).second) in.fail("duplicate __metadata__ key `" + key + "`");
    h.metadata.emplace_back(std::move(key), std::move(value));
  } while (in.accept(','));
  in.expect('}', "',' or '}'");
}

void parse_json(std::string_view json, Header& h) {
  JsonCursor in(json);
  std::unordered_set<std::string> owned_names;
  in.expect('{', "a JSON object");
  if (!in.accept('}')) {
    do {
      std::string key = in.read_string();
      in.expect(':', "':'");
      if (key == "__metadata__") {
        if (h.has_metadata) in.fail("duplicate key `__metadata__`");
        read_metadata(in, h);
        continue;
      }
      if (!owned_names.insert(key).second) {
        throw FormatError(FormatErrorKind::DuplicateTensorName, "duplicate tensor name `" + key + "` in header", key);
      }
      try {
        h.tensors.push_back(read_tensor_entry(in, key));
      } catch (JsonError& e) {
        e.tensor = key;  // every problem inside an entry names its tensor
        throw;
      }
    } while (in.accept(','));
    in.expect('}', "',' or '}'");
  }
  if (!in.at_end()) in.fail("trailing characters after the JSON object");
}

void validate_layout(Header& h) {
  std::vector<size_t> order(h.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto &x = h.tensors[a], &y = h.tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t expected_begin = 0;
  for (size_t i : order) {
    const TensorInfo& t = h.tensors[i];
    if (t.begin != expected_begin || t.end < t.begin) {
      throw FormatError(FormatErrorKind::InvalidOffset, "invalid offset for tensor `" + t.name + "`", t.name);
    }
    expected_begin = t.end;
    uint64_t numel = 1, bits = 0;
    for (uint64_t d : t.shape) {
      if (!detail::checked_mul(numel, d, numel)) {
        throw FormatError(FormatErrorKind::ValidationOverflow, "shape of tensor `" + t.name + "` overflows 64 bits",
                          t.name);
      }
    }
    if (!detail::checked_mul(numel, dtype_bits(t.dtype), bits)) {
      throw FormatError(FormatErrorKind::ValidationOverflow, "size of tensor `" + t.name + "` overflows 64 bits",
                        t.name);
    }
    if (bits % 8 != 0) {
      throw FormatError(FormatErrorKind::MisalignedSlice, "packed tensor `" + t.name + "` does not fill whole bytes",
                        t.name);
    }
    if (bits / 8 != t.nbytes()) {
      throw FormatError(FormatErrorKind::TensorInvalidInfo,
                        "invalid shape, data type, or offset for tensor `" + t.name + "`", t.name);
    }
  }
  uint64_t covered = 0;
  bool overflow = !detail::checked_add(h.data_start, expected_begin, covered);
  if (overflow || covered > h.file_size) {
    throw FormatError(FormatErrorKind::MetadataIncompleteBuffer,
                      "truncated: the file has " + std::to_string(h.file_size) + " bytes, its header needs " +
                          (overflow ? std::string("more than 2^64") : std::to_string(covered)) +
                          " (incomplete metadata, file not fully covered: tensors end at byte " +
                          std::to_string(expected_begin) + " of a data section of " +
                          std::to_string(h.file_size - h.data_start) + " bytes)");
  }
  if (covered < h.file_size) {
    throw FormatError(FormatErrorKind::MetadataIncompleteBuffer,
                      "incomplete metadata, file not fully covered: " + std::to_string(h.file_size - covered) +
                          " bytes after the last tensor belong to no tensor");
  }
}

}  // namespace

uint64_t parse_header_length(const uint8_t* prefix, uint64_t available, uint64_t file_size) {
  if (available < 8 || file_size < 8) {
    throw FormatError(FormatErrorKind::HeaderTooSmall,
                      "header too small: the file has " + std::to_string(file_size) + " bytes");
  }
  uint64_t n = read_le64(prefix);
  if (n > kMaxHeaderLength) {
    // The value is not printed: from a file that is not safetensors it is the file's first 8 bytes.
    throw FormatError(FormatErrorKind::HeaderTooLarge,
                      "not a safetensors file (header too large: its first 8 bytes, read as the header length, "
                      "exceed the limit of " +
                          std::to_string(kMaxHeaderLength) + " bytes)");
  }
  uint64_t end = 0;
  if (!detail::checked_add(n, 8, end) || end > file_size) {
    throw FormatError(FormatErrorKind::InvalidHeaderLength,
                      "truncated, or not a safetensors file (invalid header length: the header needs " +
                          std::to_string(n) + " bytes after its 8-byte length, the file has " +
                          std::to_string(file_size) + " bytes in all)");
  }
  return n;
}

Header parse_header(std::string_view json, uint64_t file_size) {
  Header h;
  h.header_length = json.size();
  h.data_start = 8 + json.size();
  h.file_size = file_size;
  size_t bad = find_invalid_utf8(json);
  if (bad != std::string_view::npos) {
    throw FormatError(FormatErrorKind::InvalidHeader, "invalid UTF-8 in header at byte " + std::to_string(bad + 8));
  }
  try {
    parse_json(json, h);
  } catch (const JsonError& e) {
    std::string where = e.tensor.empty() ? std::string() : " in tensor `" + e.tensor + "`";
    throw FormatError(FormatErrorKind::InvalidHeaderDeserialization,
                      "invalid JSON in header: " + e.what + where + " at byte " + std::to_string(e.position + 8),
                      e.tensor);
  }
  validate_layout(h);
  return h;
}

Header read_header(const std::string& path) {
  File file(path);
  FileIdentity identity = file.identity();
  uint64_t size = identity.size;
  uint8_t prefix[8] = {};
  uint64_t got = file.read_at(prefix, size < 8 ? size : 8, 0);
  try {
    uint64_t n = parse_header_length(prefix, got, size);
    // Prefix and JSON in one string that the header keeps: no copy, and no more memory at peak.
    std::string bytes(8 + n, '\0');
    std::memcpy(bytes.data(), prefix, 8);
    file.read_exact(bytes.data() + 8, n, 8);
    Header h = parse_header(std::string_view(bytes).substr(8), size);
    h.from_file = true;
    h.bytes = std::move(bytes);
    h.identity = identity;
    return h;
  } catch (const FormatError& e) {
    throw FormatError(e.kind(), path + ": " + e.what(), e.tensor(), path);
  }
}

}  // namespace fst
