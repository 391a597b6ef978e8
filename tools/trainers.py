"""Run a recipe through the trainer it is written for, exactly as a user would, plus explicit overrides.

`llamafactory-cli train <recipe.yaml> key=value ...` and `swift sft <recipe.yaml> --key value ...` (ms-swift
reads a YAML given as its first argument; flags after it override the file): the recipe file is never
rewritten, the overrides are visible in the command. Each trainer runs from its own
environment (.venv-llamafactory, .venv-swift), offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from custom_modules.recipe_keys import BLOCK_KEY
from tools.offline import offline_env

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("llamafactory", "swift")
VENVS = {"llamafactory": ".venv-llamafactory", "swift": ".venv-swift"}
VENV_OVERRIDE_VARS = {"llamafactory": "QVR_LLAMAFACTORY_VENV", "swift": "QVR_SWIFT_VENV"}

# What a CPU-only machine needs on top of a GPU recipe (bf16 kernels are missing or slow on CPU).
CPU_OVERRIDES = {
    "llamafactory": {"bf16": False, "fp16": False},
    "swift": {"torch_dtype": "float32", "bf16": False, "fp16": False},
}

# Settings only a GPU machine can honour: Liger's kernels are Triton, absent from a CPU machine. A CPU run switches
# them off where a recipe sets them (the same forward and loss), so the override is always a key the recipe knows.
GPU_ONLY_OFF = {"use_liger_kernel": False}


def gpu_only_overrides(config: dict) -> dict:
    """GPU_ONLY_OFF's keys that the recipe `config` sets."""
    return {key: value for key, value in GPU_ONLY_OFF.items() if key in config}


# ms-swift checks a local model dir against the ModelScope hub (check_model) unless told not to: offline,
# that is four retries against an unreachable host.
OFFLINE_OVERRIDES = {"llamafactory": {}, "swift": {"check_model": False}}


def venv_bin(trainer: str) -> Path:
    return Path(os.environ.get(VENV_OVERRIDE_VARS[trainer], REPO_ROOT / VENVS[trainer])) / "bin"


# glibc's allocator for a training run on the CPU: PyTorch's CPU tensors are plain malloc'd memory, and glibc
# maps every block over its mmap threshold fresh from the kernel and unmaps it on free. A tiny model's logits
# over the 151,936-entry vocabulary (~100 MB a micro-batch, several buffers a step) were zeroed page by page
# each micro-step: half of LLaMA-Factory's step time on two cores was the kernel's. Served from the heap and
# kept there, the same 100-step caption run took 24 s instead of 48 (500 steps: the same held-out score).
CPU_ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def trainer_env(trainer: str, **extra) -> dict:
    """Offline environment for a trainer subprocess, its venv's bin/ first on PATH (torchrun, ninja), with
    CPU_ALLOCATOR_ENV where neither `extra` nor the caller's environment sets those variables.

    DeepSpeed JIT-builds its CPU shm comm op into TORCH_EXTENSIONS_DIR even just to parse a DeepSpeed recipe
    (~1 min on 2 cores). The build is redone whenever the sources or the build command differ from the last
    one, so each venv gets its own directory and every subprocess of a venv the same PATH."""
    env = offline_env(TORCH_EXTENSIONS_DIR=str(REPO_ROOT / ".cache" / "torch_extensions" / trainer), **extra)
    for name, value in CPU_ALLOCATOR_ENV.items():
        env.setdefault(name, value)
    env["PATH"] = f"{venv_bin(trainer)}:{env['PATH']}"
    return env


def _words(value) -> list[str]:
    """A recipe value as command-line words: booleans as true/false, lists item by item."""
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def train_command(trainer: str, recipe: str | os.PathLike, overrides: dict | None = None) -> list[str]:
    """The user-facing command that trains `recipe` with `overrides` (a dict of recipe keys): `swift sft`,
    `llamafactory-cli train`, or `qvr-llamafactory train` for a LLaMA-Factory recipe with our features."""
    overrides = overrides or {}
    if trainer == "llamafactory":
        pairs = [f"{key}={','.join(_words(value))}" for key, value in overrides.items()]
        custom = BLOCK_KEY in (yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) or {})
        return [str(venv_bin(trainer) / ("qvr-llamafactory" if custom else "llamafactory-cli")), "train", str(recipe),
                *pairs]
    if trainer == "swift":
        flags = [part for key, value in overrides.items() for part in (f"--{key}", *_words(value))]
        return [str(venv_bin(trainer) / "swift"), "sft", str(recipe), *flags]
    raise ValueError(f"unknown trainer {trainer!r}; expected one of {TRAINERS}")


def run_logged(command: list[str], log_path: Path, *, env: dict | None = None, cwd: Path = REPO_ROOT,
               timeout: float | None = None) -> float:
    """Run `command` offline with its output in `log_path`; raise with the log's tail if it fails.

    Returns the wall time in seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env or offline_env(), timeout=timeout)
    if result.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:])
        raise RuntimeError(f"command failed (exit {result.returncode}), log {log_path}:\n{tail}")
    return time.monotonic() - started


def loss_history(trainer: str, output_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, training loss) pairs a finished run logged: LLaMA-Factory's trainer_log.jsonl or swift's
    logging.jsonl."""
    output_dir = Path(output_dir)
    log_file = output_dir / ("trainer_log.jsonl" if trainer == "llamafactory" else "logging.jsonl")
    history = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" not in record:
            continue
        if trainer == "llamafactory":
            step = record["current_steps"]
        else:
            step = int(str(record["global_step/max_steps"]).split("/")[0])
        history.append((step, float(record["loss"])))
    return history
