#include "fastsafetensors/detail/json_cursor.hpp"

namespace fst::detail {

void JsonCursor::fail(const std::string& what) const { throw JsonError{what, pos_}; }

void JsonCursor::skip_whitespace() noexcept {
  while (pos_ < text_.size()) {
    char c = text_[pos_];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    ++pos_;
  }
}

bool JsonCursor::at_end() noexcept {
  skip_whitespace();
  return pos_ == text_.size();
}

void JsonCursor::expect(char c, const char* what) {
  if (!accept(c)) fail(std::string("expected ") + what);
}

bool JsonCursor::accept(char c) {
  skip_whitespace();
  if (peek() != c || pos_ >= text_.size()) return false;
  ++pos_;
  return true;
}

bool JsonCursor::accept_literal(std::string_view word) {
  skip_whitespace();
  if (text_.substr(pos_, word.size()) != word) return false;
  pos_ += word.size();
  return true;
}

uint32_t JsonCursor::read_hex4() {
  if (text_.size() - pos_ < 4) fail("truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    char c = text_[pos_++];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else fail("invalid \\u escape");
  }
  return v;
}

static void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string JsonCursor::read_string() {
  skip_whitespace();
  if (peek() != '"' || pos_ >= text_.size()) fail("expected a string");
  ++pos_;
  std::string out;
  while (true) {
    if (pos_ >= text_.size()) fail("unterminated string");
    char c = text_[pos_++];
    if (c == '"') return out;
    if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
    if (c != '\\') {
      out += c;  // the whole header was checked to be UTF-8 before parsing
      continue;
    }
    if (pos_ >= text_.size()) fail("unterminated escape");
    char e = text_[pos_++];
    switch (e) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        uint32_t cp = read_hex4();
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (text_.substr(pos_, 2) != "\\u") fail("lone surrogate in \\u escape");
          pos_ += 2;
          uint32_t lo = read_hex4();
          if (lo < 0xDC00 || lo > 0xDFFF) fail("lone surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          fail("lone surrogate in \\u escape");
        }
        append_utf8(out, cp);
        break;
      }
      default: fail("invalid escape in string");
    }
  }
}

uint64_t JsonCursor::read_uint() {
  skip_whitespace();
  size_t start = pos_;
  if (peek() == '-') fail("expected a non-negative integer, found a negative number");
  uint64_t v = 0;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    uint64_t digit = static_cast<uint64_t>(text_[pos_] - '0');
    if (v > (UINT64_MAX - digit) / 10) fail("integer does not fit in 64 bits");
    v = v * 10 + digit;
    ++pos_;
  }
  if (pos_ == start) fail("expected a non-negative integer");
  if (pos_ - start > 1 && text_[start] == '0') fail("leading zero in number");
  char next = peek();
  if (next == '.' || next == 'e' || next == 'E') fail("expected an integer, found a fraction or exponent");
  return v;
}

void JsonCursor::skip_number() {
  accept('-');
  size_t digits = pos_;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
  if (pos_ == digits) fail("invalid number");
  if (pos_ - digits > 1 && text_[digits] == '0') fail("leading zero in number");
  if (peek() == '.') {
    ++pos_;
    size_t frac = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    if (pos_ == frac) fail("invalid number");
  }
  if (peek() == 'e' || peek() == 'E') {
    ++pos_;
    if (peek() == '+' || peek() == '-') ++pos_;
    size_t exp = pos_;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
    if (pos_ == exp) fail("invalid number");
  }
}

void JsonCursor::skip_value(int max_depth) {
  if (max_depth <= 0) fail("JSON nested too deeply");
  skip_whitespace();
  char c = peek();
  if (pos_ >= text_.size()) fail("expected a value");
  if (c == '"') {
    read_string();
  } else if (c == '{') {
    ++pos_;
    if (accept('}')) return;
    do {
      read_string();
      expect(':', "':'");
      skip_value(max_depth - 1);
    } while (accept(','));
    expect('}', "',' or '}'");
  } else if (c == '[') {
    ++pos_;
    if (accept(']')) return;
    do {
      skip_value(max_depth - 1);
    } while (accept(','));
    expect(']', "',' or ']'");
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    skip_number();
  } else if (!accept_literal("true") && !accept_literal("false") && !accept_literal("null")) {
    fail("expected a value");
  }
}

}  // namespace fst::detail
