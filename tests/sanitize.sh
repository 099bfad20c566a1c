#!/usr/bin/env bash
# Builds the engine with AddressSanitizer and UBSan into a scratch copy of the tree and runs the
# test suite against it: tests/sanitize.sh [pytest args...] (default: the whole tests/ folder).
# Python itself is not instrumented, so libasan is preloaded and leak checking is left off (the
# interpreter's own allocations would drown the report); a UBSan finding stops the run.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
# FST_SANITIZE_DIR=dir keeps the scratch copy there, and reuses its instrumented build next time.
if [[ -n "${FST_SANITIZE_DIR:-}" ]]; then
  work=$FST_SANITIZE_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/fst-sanitize.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
tar -C "$src" --exclude=.git --exclude=build --exclude='*.so' --exclude=.pytest_cache -cf - . | tar -C "$work" -xf -
cd "$work"
FASTSAFETENSORS_SANITIZE=address,undefined python3 setup.py -q build_ext --inplace > build.log 2>&1 || {
  tail -50 build.log; exit 1; }
asan=$(${CXX:-g++} -print-file-name=libasan.so)
ubsan=$(${CXX:-g++} -print-file-name=libubsan.so)
echo "sanitized build in $work; preloading $asan"
export LD_PRELOAD="$asan:$ubsan"
# allocator_may_return_null: impossible sizes must fail as they do under glibc (tests ask for some).
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export FST_SANITIZED=1
python3 -m pytest -q -p no:cacheprovider -x "${@:-tests}"
