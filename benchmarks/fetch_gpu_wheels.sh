#!/bin/bash
# Downloads the peer loaders' wheels (for the GPU machines' Python 3.12, x86-64) into .whl/,
# where benchmarks/gpu_check.sh finds them. Run where PyPI is reachable; the GPU machine has no network.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  -d .whl fastsafetensors==0.5.0 instanttensor==0.2.2 runai-model-streamer==0.16.1
ls -l .whl
