// The engine's FASTSAFETENSORS_* variables, read with the rules of fastsafetensors/settings.py
// (which declares every variable; tests/test_settings.py feeds both parsers one table of inputs).
// Values are trimmed of ASCII spaces; an unset or blank variable means its default. Anything a
// parser does not accept throws SettingsError naming the variable, the value and what is accepted.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fst {

class SettingsError : public std::invalid_argument {
 public:
  SettingsError(std::string variable, const std::string& message)
      : std::invalid_argument(message), variable_(std::move(variable)) {}
  const std::string& variable() const noexcept { return variable_; }

 private:
  std::string variable_;
};

namespace settings {

// 1/true/yes/on or 0/false/no/off, in any case.
bool parse_bool(const std::string& name, const std::string& value);
// Decimal digits only (no sign), at most `max`.
uint64_t parse_uint(const std::string& name, const std::string& value, uint64_t max);
// A decimal number (digits, optional fraction and exponent; no sign, nan or inf), at most `max`.
double parse_float(const std::string& name, const std::string& value, double max);
// One of `choices` (lower case), in any case; returns it in lower case.
std::string parse_choice(const std::string& name, const std::string& value, const std::vector<std::string>& choices);

// The variable parsed as above, or `fallback` when it is unset or blank.
bool get_bool(const char* name, bool fallback);
uint64_t get_uint(const char* name, uint64_t fallback, uint64_t max);
double get_float(const char* name, double fallback, double max);
std::string get_choice(const char* name, const std::string& fallback, const std::vector<std::string>& choices);

}  // namespace settings
}  // namespace fst
