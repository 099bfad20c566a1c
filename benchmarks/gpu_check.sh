#!/bin/bash
# The GPU check, run from the repository root on the GPU machine:
#   bash benchmarks/gpu_check.sh           # build, GPU tests, peers vs ours, 8 GB, warm + cold (~7 min)
#   bash benchmarks/gpu_check.sh --smoke   # build, GPU tests, ours vs instanttensor on 2 GB (~3 min)
# Needs the shared harness copied into .bench/gpu-bench (../shared does not travel) and the peer
# wheels in .whl/ (benchmarks/fetch_gpu_wheels.sh). Results go to $OUT (default ./gpu-out).
# Environment: GB (checkpoint size), BUDGET (harness seconds), CASES (override the case list).
set -u
MODE=full
[ "${1:-}" = "--smoke" ] && MODE=smoke
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

log "build (pip install --no-build-isolation --no-deps .)"
rm -rf build  # setuptools does not track header changes: never reuse old objects
if ! python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/pip.log" 2>&1; then
  tail -40 "$OUT/pip.log"; exit 1
fi
# pytest runs from the repository root, where ./fastsafetensors shadows the installed package:
# give it the extension just built.
SO=$(cd /tmp && python3 -c "import fastsafetensors._cpp as c; print(c.__file__)")
cp "$SO" "$ROOT/fastsafetensors/"
(cd /tmp && python3 - <<'PY') 2>&1 | tee "$OUT/env.txt"
import fastsafetensors, fastsafetensors._src.device_engine as de
from fastsafetensors import _cpp
try:
    dev = de.cuda_device(0)
    print("device:", dev.name)
except Exception as e:
    print("device: unavailable:", e)
print("cuda runtime:", _cpp.testing.cuda_runtime_library() or _cpp.testing.cuda_runtime_error())
print("gds:", _cpp.gds_status())
PY

log "GPU tests"
timeout 240 python3 -m pytest -q -rs -s -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
grep -E "stats:|^gds:" "$OUT/pytest.txt" | cut -c1-300
tail -25 "$OUT/pytest.txt"

HARNESS=$ROOT/.bench/gpu-bench
if [ ! -f "$HARNESS/run.sh" ]; then
  log "no harness in .bench/gpu-bench: copy ../shared/gpu-bench there first"; exit 1
fi
EXT="ext:$ROOT/benchmarks/gpu_ext.py"
if [ "$MODE" = smoke ]; then
  GB=${GB:-2}; BUDGET=${BUDGET:-100}
  CASES=${CASES:-$EXT:load_torch,it_buffered}
else
  GB=${GB:-8}; BUDGET=${BUDGET:-300}
  CASES=${CASES:-$EXT:load_torch,$EXT:load_jax,$EXT:load_sharded_jax,it_buffered,ref_h2d_pinned,fst_nogds,st_load_file,flax,$EXT:load_torch_gds}
fi
log "harness: ${GB} GB, budget ${BUDGET}s, cases $CASES"
export RESULTS=$OUT GB BUDGET CASES WHEELS=$ROOT/.whl CKPT=${CKPT:-/tmp/ckpt-$GB}
timeout 460 bash "$HARNESS/run.sh" > "$OUT/harness.log" 2>&1
grep -v '^{' "$OUT/harness.log" | tail -15

log "profile (one process: first vs later loads, each path, lanes, staging, threads, jax)"
cat "$CKPT"/*.safetensors > /dev/null
timeout 90 python3 "$ROOT/benchmarks/gpu_profile.py" "$CKPT" 2>&1 | grep -v Warning | tee "$OUT/profile.txt"

log "column shards (rows as 2D copies) against row shards of the same bytes"
timeout 120 python3 "$ROOT/benchmarks/column_bench.py" 2>&1 | tee "$OUT/columns.txt"

python3 - "$OUT/results.jsonl" "$OUT/memory.jsonl" <<'PY' | tee "$OUT/table.txt"
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}
print(f"{'case':34} {'mode':5} {'rep':>3} {'s':>7} {'GB/s':>7} {'mism':>4}  note")
for r in rows:
    name = r["case"].split(":")[-1] if r["case"].startswith("ext:") else r["case"]
    note = r.get("error") or r.get("skipped") or ""
    note = " ".join(str(note).split())[-90:]
    print(f"{name:34} {r.get('mode', ''):5} {r.get('rep', ''):>3} {r.get('s', ''):>7} {r.get('GBps', ''):>7} "
          f"{r.get('mismatch', ''):>4}  {note}")
    if "GBps" in r and not r.get("mismatch"):
        k = (name, r.get("mode"))
        best[k] = max(best.get(k, 0), r["GBps"])
print("\nbest GB/s (warm | cold):")
for name in dict.fromkeys(k[0] for k in best):
    print(f"  {name:34} {best.get((name, 'warm'), '-'):>7} | {best.get((name, 'cold'), '-'):>7}")
# Written by benchmarks/gpu_ext.py: peak device memory during the load minus before, minus outputs.
mem = [json.loads(l) for l in open(sys.argv[2]) if l.strip()] if os.path.exists(sys.argv[2]) else []
if mem:
    print("\nGPU memory beyond the outputs, MB per run (outputs GB):")
    for name in dict.fromkeys(m["case"] for m in mem):
        runs = [m for m in mem if m["case"] == name]
        print(f"  {name:34} {' '.join(str(m['beyond_MB']) for m in runs)}  ({runs[0]['out_GB']} GB)")
PY
log "done; results in $OUT"
