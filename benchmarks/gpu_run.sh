#!/usr/bin/env bash
# THE GPU run: every GPU figure of the README in one command, on a lent one-GPU machine without a network.
#
#   bash benchmarks/gpu_run.sh           # GPU machine, at most DEADLINE_S (default 470 s), report in $OUT/report.md
#   bash benchmarks/gpu_run.sh --smoke   # here: the same steps on tiny models (CPU when there is no GPU)
#
# Before: bash benchmarks/fetch_wheels.sh (fills .whl/, carried along). Parts, in priority order, each under its
# own `timeout` and given what is left of the deadline, each keeping its output when a later one fails:
#   0. install the carried wheels into a private folder (the image has torch but no diffusers), check imports
#   a. benchmarks/bench.py --gpu: SDXL 1024 px fp16: FLOPs, per-step overhead, paired timing, memory per phase for
#      every memory option against plain diffusers (~200 s)
#   b. benchmarks/hidiffusion_flops.py gpu: plain vs HiDiffusion at 2048 px, equivalence with the authors' package
#      at 4096/2048 px (~100 s), if the script has the mode
#   c. benchmarks/dit_gpu.py: SD3.5 / FLUX (~100 s), if the script exists
#   v. benchmarks/video.py gpu: I2VGen-XL (AnyV2V) peak memory and seconds per sampling step, 3/2/1 branches per
#      UNet call, against the computed memory plan (~60 s); its output goes into report.md only
#   r. benchmarks/restyle.py gpu: InstantStyle-Plus at 1024 px: the inversion's and the denoising's seconds per
#      step and each phase's peak memory, img2img / restyle / + CSD style guidance / + --memory-budget, beside the
#      computed memory (~180 s); report.md only
#   g. benchmarks/csgo.py gpu: plain SDXL + tile ControlNet vs CSGO at 1024 px: seconds per step (paired,
#      rotated), peak memory, resident parameters (~120 s); report.md only
#   b, c, v, r and g print their results to stdout; each gets --time-limit (a little under its share) and, in the
#   smoke run, --smoke, when it takes them (checked in its --help), and is skipped cleanly otherwise, or when less
#   than MIN_PART_S (20 s) of the deadline is left for it.
# Files in $OUT (flat, at most 8): report.md (everything, assembled after each part), env.txt (machine,
# versions, install log), bench.md (part a's report, rewritten after each of its sections), bench-raw.json,
# bench-log.txt (part a's stderr and its workers' logs), hidiff.txt (+ hidiff.json), dit.txt.
# GPU_RUN_PARTS=bc runs only some parts (GPU_RUN_PARTS=rg: restyle and CSGO alone, as a second call after abcv).
set -uo pipefail  # no -e: a failing part must not end the run
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/out}"
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-470}"
PARTS="${GPU_RUN_PARTS:-abcvrg}"  # which of parts a, b, c, v, r, g run (for trying one alone)
MIN_PART_S="${MIN_PART_S:-20}"  # a part given less of the deadline than this is skipped, not started
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
WORK="${WORKDIR:-/tmp/instantstyle-gpu-run}$([[ $SMOKE == 1 ]] && echo -smoke)"
SITE="$WORK/site"
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/{video,restyle,csgo}.txt  # report.md's parts from an earlier run of this machine
START=$SECONDS
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
declare -A STATUS=()

# Seconds a part may take: its own limit, or what is left of the deadline (at least 1).
limit() {
  local left=$((DEADLINE_S - (SECONDS - START)))
  if ((left < $1)); then echo $((left > 1 ? left : 1)); else echo "$1"; fi
}

# Run a part under `timeout` (the whole process group: workers too), recording how it ended.
run_part() {
  local name=$1 seconds=$2
  shift 2
  local started=$SECONDS rc=0
  timeout -k 10 "$seconds" "$@" || rc=$?
  local took=$((SECONDS - started))
  case $rc in
    0) STATUS[$name]="done in ${took} s" ;;
    124 | 137) STATUS[$name]="TIMED OUT after ${took} s (limit ${seconds} s); its output so far is kept" ;;
    *) STATUS[$name]="FAILED (exit $rc) after ${took} s" ;;
  esac
  echo "[gpu_run] part $name: ${STATUS[$name]}" >&2
}

assemble() {
  {
    echo "# instantstyle GPU run$([[ $SMOKE == 1 ]] && echo ' (smoke: tiny models, not figures)')"
    echo
    echo "Machine and versions:"
    echo
    echo '```'
    sed -n '1,12p' "$OUT/env.txt" 2>/dev/null
    echo '```'
    echo
    for part in install a b c v r g; do
      echo "- part $part: ${STATUS[$part]:-not run}"
    done
    echo
    cat "$OUT/bench.md" 2>/dev/null
    for part in hidiff dit video restyle csgo; do
      local file="$OUT/$part.txt"
      # in report.md only: at most 8 files come back from $OUT
      [[ $part == video || $part == restyle || $part == csgo ]] && file="$WORK/$part.txt"
      if [[ -s "$file" ]]; then
        echo
        echo "## $part"
        echo
        cat "$file"
      fi
    done
  } > "$OUT/report.md"
}

# Whether a benchmark script exists and its --help mentions every mode and flag given (values are not checked:
# words with a slash or digits only).
offers() {
  local script=$1
  shift
  [[ -f "$script" ]] || return 1
  local help
  help=$(timeout 60 "$PY" "$script" --help 2>&1) || return 1
  for word in "$@"; do
    [[ $word == */* || $word =~ ^[0-9.]+$ ]] && continue
    grep -q -- "$word" <<<"$help" || return 1
  done
}

# --- 0. the carried wheels and the environment ---------------------------------------------------------------
install() {
  rm -rf "$SITE"
  mkdir -p "$SITE"
  # The authors' hidiffusion wheel is not installed: part b fetches it from .whl/ into its own fixed copy.
  local wheels=()
  for wheel in .whl/*.whl; do [[ -f $wheel && $(basename "$wheel") != hidiffusion-* ]] && wheels+=("$wheel"); done
  if ((${#wheels[@]} == 0)); then
    echo "no .whl/ wheels: using what is installed"
  elif ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"; then
    echo "pip failed; unpacking the (pure-Python) wheels instead"
    for wheel in "${wheels[@]}"; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
  fi
  export PYTHONPATH="$SITE:$ROOT/src"
  local check='import diffusers, transformers, huggingface_hub, peft, accelerate, torch, instantstyle.core.pipeline
print("imports ok:", "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      "diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "huggingface_hub", huggingface_hub.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)'
  if ! "$PY" -c "$check"; then
    echo "imports failed with the carried huggingface_hub; retrying with the image's own"
    rm -rf "$SITE"/huggingface_hub* "$SITE"/httpx2* "$SITE"/httpcore2* "$SITE"/truststore*
    "$PY" -c "$check" || return 1
  fi
}
{
  echo "started $(date -u +%FT%TZ), smoke=$SMOKE, deadline ${DEADLINE_S} s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys; print('python', sys.version.split()[0])"
  echo "cpus $(nproc); $(free -g | awk '/Mem:/ {print "ram " $2 " GiB"}'); /tmp: $(df -h /tmp | awk 'NR==2 {print $4}') free"
  started=$SECONDS
  if install; then STATUS[install]="done in $((SECONDS - started)) s"; else STATUS[install]="FAILED"; fi
  echo "install: ${STATUS[install]}"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|torchvision|diffusers|transformers|huggingface|accelerate|peft|tokenizers|safetensors|regex|numpy|pillow|psutil|click|httpx) '
} > "$OUT/env.txt" 2>&1
export PYTHONPATH="$SITE:$ROOT/src"
cat "$OUT/env.txt"
assemble
if [[ ${STATUS[install]} == FAILED ]]; then
  echo "[gpu_run] the carried wheels do not import here; see $OUT/env.txt" >&2
  exit 3
fi

# --- a. SDXL: FLOPs, per-step overhead, paired timing, memory per phase ------------------------------------
smoke=()
[[ $SMOKE == 1 ]] && smoke=(--smoke)
if [[ $PARTS == *a* ]]; then
  run_part a "$(limit "${BENCH_S:-240}")" "$PY" benchmarks/bench.py --gpu "${smoke[@]}" --workdir "$WORK/bench" \
    --out "$OUT/bench.md" --json "$OUT/bench-raw.json" 2> "$OUT/bench-log.txt" > /dev/null
  for log in "$WORK"/bench/logs/*.log; do
    [[ -f $log ]] && { echo "=== $(basename "$log") (last 30 lines)"; tail -n 30 "$log"; } >> "$OUT/bench-log.txt"
  done
fi
assemble

# --- b and c: the other engineers' GPU scripts ----------------------------------------------------------------
# extra PART FILE LIMIT SCRIPT [ARGS...]: run a script if it exists, its markdown/JSON (stdout) and its stderr's
# tail into $OUT/FILE; with --smoke only if it takes --smoke; --time-limit (a little under its share) if it takes it.
extra() {
  local part=$1 file=$2 seconds=$3 script=$4
  shift 4
  local args=("$@")
  if [[ ! -f $script ]]; then
    STATUS[$part]="skipped: no $script"
    return
  fi
  if ! offers "$script" "${args[@]}"; then
    STATUS[$part]="skipped: $script does not take: ${args[*]}"
    return
  fi
  if ((seconds < MIN_PART_S)); then
    STATUS[$part]="skipped: only ${seconds} s of the deadline left (DEADLINE_S=${DEADLINE_S}; run it alone: GPU_RUN_PARTS=$part)"
    return
  fi
  if [[ $SMOKE == 1 ]]; then
    if ! offers "$script" --smoke; then
      STATUS[$part]="skipped in the smoke run: $script has no --smoke"
      return
    fi
    args+=(--smoke)
  fi
  offers "$script" --time-limit && args+=(--time-limit "$((seconds > 30 ? seconds - 15 : seconds))")
  run_part "$part" "$seconds" "$PY" "$script" "${args[@]}" > "$WORK/$file.out" 2> "$WORK/$file.err"
  {
    echo "\`$script ${args[*]}\`: ${STATUS[$part]}"
    echo
    if grep -q '^[[{]' <(head -c 1 "$WORK/$file.out"); then  # JSON: fenced
      echo '```json'; cat "$WORK/$file.out"; echo '```'
    else
      cat "$WORK/$file.out"
    fi
    echo
    echo "stderr (last 25 lines):"; echo '```'; tail -n 25 "$WORK/$file.err"; echo '```'
  } > "$OUT/$file.txt"
}

# b. HiDiffusion at 2048 px: plain vs HiDiffusion, then the equivalence with the authors' package at the large sizes
# (`hidiffusion_flops.py gpu`; the JSON after every step of it when the script can).
hidiff=(gpu)
offers benchmarks/hidiffusion_flops.py --json && hidiff+=(--json "$OUT/hidiff.json")
offers benchmarks/hidiffusion_flops.py --workdir && hidiff+=(--workdir "$WORK/hidiff")
offers benchmarks/hidiffusion_flops.py --time-limit || hidiff+=(--size 2048 --steps 20 --repeats 1)
[[ $PARTS == *b* ]] && extra b hidiff "$(limit "${HIDIFF_S:-100}")" benchmarks/hidiffusion_flops.py "${hidiff[@]}"
assemble

# c. SD3.5 and FLUX: plain diffusers vs instantstyle.
[[ $PARTS == *c* ]] && extra c dit "$(limit "${DIT_S:-110}")" benchmarks/dit_gpu.py
assemble

# v. Video: the real-size I2VGen-XL UNet and VAE (random weights), one sampling step per memory plan.
if [[ $PARTS == *v* ]]; then
  extra v video "$(limit "${VIDEO_S:-60}")" benchmarks/video.py gpu
  [[ -f "$OUT/video.txt" ]] && mv "$OUT/video.txt" "$WORK/video.txt"
fi
assemble

# r. Restyle (InstantStyle-Plus): the full-size SDXL, ControlNet, ViT-bigG and CSD (random weights, fp16), the
# inversion's and the denoising's seconds per step and each phase's peak memory, with and without style guidance.
if [[ $PARTS == *r* ]]; then
  extra r restyle "$(limit "${RESTYLE_S:-180}")" benchmarks/restyle.py gpu
  [[ -f "$OUT/restyle.txt" ]] && mv "$OUT/restyle.txt" "$WORK/restyle.txt"
fi
assemble

# g. CSGO: plain SDXL + tile ControlNet against CSGO on the same full-size weights, paired.
if [[ $PARTS == *g* ]]; then
  extra g csgo "$(limit "${CSGO_S:-120}")" benchmarks/csgo.py gpu
  [[ -f "$OUT/csgo.txt" ]] && mv "$OUT/csgo.txt" "$WORK/csgo.txt"
fi
assemble

echo "[gpu_run] finished in $((SECONDS - START)) s; report: $OUT/report.md" >&2
ls -l "$OUT" >&2
