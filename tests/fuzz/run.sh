#!/usr/bin/env bash
# Bounded fuzz run: tests/fuzz/run.sh [seconds=60] [extra libFuzzer flags...]
# Starts from the seed corpus (tests/fuzz/corpus, left untouched); new inputs go to a scratch
# folder. A crash leaves crash-* in build/fuzz/ and a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
bash tests/fuzz/build.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp tests/fuzz/corpus/* "$work/"
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build/fuzz/fuzz_header "$work" -dict=tests/fuzz/header.dict -max_len=4096 -rss_limit_mb=2048 \
  -timeout=10 -max_total_time="$seconds" -artifact_prefix=build/fuzz/ -print_final_stats=1 "$@"
