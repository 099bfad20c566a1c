// A strict, allocation-light JSON reader for the one schema safetensors headers use. It walks the
// text once and never builds a document tree, so a 100 MB header costs its own size in memory.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fst::detail {

// Thrown for any syntax or schema problem; the header parser turns it into
// InvalidHeaderDeserialization with the byte position.
struct JsonError {
  std::string what;
  size_t position;
  std::string tensor = {};  // the tensor entry being read, when there is one
};

class JsonCursor {
 public:
  explicit JsonCursor(std::string_view text) : text_(text) {}

  void skip_whitespace() noexcept;
  bool at_end() noexcept;
  size_t position() const noexcept { return pos_; }

  // Consumes `c` after optional whitespace, or throws naming `what` was expected.
  void expect(char c, const char* what);
  // Consumes `c` after optional whitespace if it is next.
  bool accept(char c);
  bool accept_literal(std::string_view word);

  std::string read_string();
  // A JSON number that is a non-negative integer representable in 64 bits.
  uint64_t read_uint();
  // Skips any JSON value; nesting deeper than `max_depth` is an error.
  void skip_value(int max_depth);

  [[noreturn]] void fail(const std::string& what) const;

 private:
  char peek() const noexcept { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  uint32_t read_hex4();
  void skip_number();

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace fst::detail
