#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, into .whl/ (ignored by git; carried to the machine by the device
# tool's `carry`): its image has torch but no diffusers and an older transformers, and no network.
# Pure-Python wheels, plus regex built for its Python 3.12 (transformers checks regex's version at import).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 transformers==5.24.0 regex==2026.11.19
ls -l .whl
