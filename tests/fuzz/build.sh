#!/usr/bin/env bash
# Builds the libFuzzer target for the header parser and read planner into build/fuzz/.
# Needs clang with compiler-rt (Debian/Ubuntu: apt-get install -y clang).
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX=${CXX:-clang++}
mkdir -p build/fuzz
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Icsrc tests/fuzz/fuzz_header.cpp \
  csrc/header.cpp csrc/json_cursor.cpp csrc/dtype.cpp csrc/read_plan.cpp csrc/read_groups.cpp csrc/file.cpp csrc/io_hooks.cpp \
  -o build/fuzz/fuzz_header
echo "built build/fuzz/fuzz_header"
