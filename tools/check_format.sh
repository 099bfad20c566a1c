#!/usr/bin/env bash
# Lint and format checks: ruff (pyproject's [tool.ruff]) over the Python, clang-format (.clang-format)
# over csrc/ without changing anything. Fails on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s globstar nullglob

ruff check .
clang-format --dry-run -Werror csrc/**/*.cpp csrc/**/*.hpp csrc/**/*.h
