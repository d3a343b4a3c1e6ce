#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, into .whl/ (ignored by git; carried to the machine by the device tool's
# `carry`), for benchmarks/gpu_run.sh to install there without a network.
#
# The machine's image (Python 3.12, torch 2.11 + CUDA 13.0, transformers 5.17, huggingface_hub 1.33, accelerate
# 1.15, tokenizers/safetensors/regex as transformers 5.17 needs them, psutil, click) has no diffusers and older
# transformers and huggingface_hub than this project pins (.ci/constraints.txt). All of these are pure-Python
# wheels; huggingface_hub 2.x brings its HTTP client (httpx2, httpcore2, truststore), which the image lacks, and
# diffusers imports requests (with urllib3 and charset-normalizer, its pure-Python build), which it may lack.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 transformers==5.24.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 \
  truststore==0.10.5 peft==0.21.2 requests==2.34.2 urllib3==2.8.0
python3 -m pip download -q --no-deps --only-binary=:all: --platform any --implementation py -d .whl \
  charset-normalizer==3.5.3 hidiffusion==0.1.10  # the authors' HiDiffusion: part b's equivalence (not installed)
ls -l .whl
du -sh .whl
