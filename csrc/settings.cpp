#include "fastsafetensors/settings.hpp"

#include <locale.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>

namespace fst::settings {
namespace {

constexpr const char* kSpaces = " \t\n\r\f\v";

std::string trimmed_lower(const std::string& value) {
  size_t begin = value.find_first_not_of(kSpaces);
  if (begin == std::string::npos) return {};
  size_t end = value.find_last_not_of(kSpaces);
  std::string out = value.substr(begin, end - begin + 1);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

[[noreturn]] void reject(const std::string& name, const std::string& value, const std::string& expected) {
  throw SettingsError(name, name + "=\"" + value + "\" is not valid: expected " + expected);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Digits from `i` on; returns where they stop.
size_t skip_digits(const std::string& s, size_t i) {
  while (i < s.size() && is_digit(s[i])) ++i;
  return i;
}

// digits[.digits] | .digits, then an optional exponent: the grammar Python's settings accept too.
bool is_decimal(const std::string& s) {
  size_t i = skip_digits(s, 0);
  bool digits = i > 0;
  if (i < s.size() && s[i] == '.') {
    size_t j = skip_digits(s, i + 1);
    digits = digits || j > i + 1;
    i = j;
  }
  if (!digits) return false;
  if (i < s.size() && s[i] == 'e') {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t j = skip_digits(s, i);
    if (j == i) return false;
    i = j;
  }
  return i == s.size();
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

std::optional<std::string> raw(const char* name) {
  const char* env = std::getenv(name);
  if (env == nullptr || trimmed_lower(env).empty()) return std::nullopt;
  return std::string(env);
}

}  // namespace

bool parse_bool(const std::string& name, const std::string& value) {
  std::string v = trimmed_lower(value);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  reject(name, value, "one of 1/0/true/false/yes/no/on/off");
}

uint64_t parse_uint(const std::string& name, const std::string& value, uint64_t max) {
  std::string v = trimmed_lower(value);
  auto bad = [&] { reject(name, value, "a whole number from 0 to " + std::to_string(max)); };
  if (v.empty() || skip_digits(v, 0) != v.size()) bad();
  uint64_t out = 0;
  for (char c : v) {
    auto digit = static_cast<uint64_t>(c - '0');
    if (digit > max || out > (max - digit) / 10) bad();  // out * 10 + digit would pass max (or wrap)
    out = out * 10 + digit;
  }
  return out;
}

double parse_float(const std::string& name, const std::string& value, double max) {
  std::string v = trimmed_lower(value);
  auto bad = [&] { reject(name, value, "a number from 0 to " + format_number(max)); };
  if (!is_decimal(v)) bad();
  // strtod follows LC_NUMERIC, which the host program may have changed: parse in the C locale.
  static const locale_t c_locale = ::newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(0));
  double out = ::strtod_l(v.c_str(), nullptr, c_locale);
  if (!std::isfinite(out) || out > max) bad();
  return out;
}

std::string parse_choice(const std::string& name, const std::string& value, const std::vector<std::string>& choices) {
  std::string v = trimmed_lower(value);
  std::string accepted;
  for (const std::string& c : choices) {
    if (v == c) return c;
    accepted += (accepted.empty() ? "" : "/") + c;
  }
  reject(name, value, "one of " + accepted);
}

bool get_bool(const char* name, bool fallback) {
  std::optional<std::string> v = raw(name);
  return v ? parse_bool(name, *v) : fallback;
}

uint64_t get_uint(const char* name, uint64_t fallback, uint64_t max) {
  std::optional<std::string> v = raw(name);
  return v ? parse_uint(name, *v, max) : fallback;
}

double get_float(const char* name, double fallback, double max) {
  std::optional<std::string> v = raw(name);
  return v ? parse_float(name, *v, max) : fallback;
}

std::string get_choice(const char* name, const std::string& fallback, const std::vector<std::string>& choices) {
  std::optional<std::string> v = raw(name);
  return v ? parse_choice(name, *v, choices) : fallback;
}

}  // namespace fst::settings
