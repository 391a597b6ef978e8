"""Training speed benchmark: seed loop vs the trainers' own example settings vs our recipes, in one job.

On the GPU machine, with full-size model configs and random weights (tools/random_checkpoint.py, no download),
data shaped like users' data (tools/bench_data.py: COCO's mix of image sizes, the task's range of text lengths;
`--data ideal` for the fixed-square best case, labelled so) and each variant run in its own process, it measures
steady-state samples/s, tokens/s, the padded share of the batches, peak GiB and MFU over >= 20 micro-steps after
warm-up, and prints one table with ratios to the seed loop, the faster trainer example and the faster plainly
tuned trainer.

    tools/prepare_gpu_wheels.sh                  # here: the wheels the GPU machine lacks, into .whl/
    python3 -m tools.bench_train run --model qwen2_5_vl_7b --out $OUT --wheels .whl     # there (make bench-gpu)
    python -m tools.bench_train report OUT/bench_*.json --docs docs    # docs/performance.json + the table

Variants (VARIANTS): `seed` (plain transformers loop, batch 2, gradient checkpointing), `lf_default` and
`swift_default` (LLaMA-Factory's and ms-swift's shipped Qwen2.5-VL LoRA example values), `lf_plain` and
`swift_plain` (the trainers plainly tuned: our fast recipe without our features (the `qwenvl_recipes` block; in
ms-swift the plugin, its callbacks and QVR_* settings), i.e. batch 16, no
gradient checkpointing, Liger, the same LoRA, only the trainer's own options), `lf_ours`, `swift_ours`,
`lf_ours_24gib`, `swift_ours_24gib` (recipes/perf/...). A variant name may carry overrides for a
tuning sweep: `lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false`; a dotted key sets a nested one
(`lf_ours:qwenvl_recipes.speedups.compile_language=true`, `swift_ours:ENV.QVR_SPEEDUPS_COMPILE_LANGUAGE=true`).

The trainers run through their own CLI entry points in the worker process (`llamafactory-cli train` runs
`run_exp` in-process on one GPU; `swift sft` re-executes `swift/cli/sft.py`, whose `sft_main` the worker
calls directly, its plugins named in the recipe), or `qvr-llamafactory` for recipes with a `qwenvl_recipes` block,
with a callback that times each micro-step (CUDA events: the host is never synchronised with the GPU inside the
run, which would take away the overlap the trainers have) and counts its tokens and image patches. The data holds
one epoch of every variant's micro-steps (rows_needed). `--profile N` traces N micro-steps after the measured window
(torch.profiler; tools/gpu_gaps.py reports where the GPU waited).

MFU: tools/mfu.py, the one formula (a frozen vision tower counts forward only). N_lm counts the LM's
non-embedding weights, N_vis the vision tower (encoder + merger); how each part is trained is read from the
model's trainable parameters.

A second `run` with `--append` into the same --out adds its variants to that job's records (ratios over all),
so long runs of some variants (`--steps 200`) and short runs of others share one table.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import BLOCK_KEY as CUSTOM_KEY, ENV_PREFIX
from tools.bench_data import write_bench_data
from tools.mfu import mfu, step_flops, training_mode
from tools.model_configs import FAMILY_OF_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
RECORD_KEYS = ("model", "trainer", "variant", "samples_per_s", "tokens_per_s", "peak_gib", "mfu", "device", "date",
               "data")
VARIANT_KINDS = ("seed_loop", "trainer_default", "trainer_tuned", "ours", "ours_24gib")

# --------------------------------------------------------------------------------------------------------------
# Counting, tables (pure; unit-tested on CPU)


def count_params(model) -> tuple[int, int]:
    """(N_lm, N_vis) of a Qwen VL model, peft-wrapped or not: N_lm is the LM's non-embedding weights (input
    embedding and output projection excluded, tools/mfu.py), N_vis the vision tower's
    (encoder + merger); LoRA weights are not counted."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    n_lm = n_vis = 0
    for name, param in model.named_parameters():
        if "lora_" in name or id(param) in embeddings:
            continue
        if ".visual." in f".{name}":
            n_vis += param.numel()
        else:
            n_lm += param.numel()
    return n_lm, n_vis


def batch_count_values(inputs: dict) -> tuple:
    """batch_counts() without reading GPU tensors back: tokens and patches may be 0-d tensors, so counting does
    not synchronise the host with the GPU."""
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and mask.shape == input_ids.shape:
        tokens = (mask != 0).sum()  # LLaMA-Factory's packed masks hold segment ids, so count non-zeros
    else:
        tokens = input_ids.numel()
    grid = inputs.get("image_grid_thw")
    patches = grid.prod(-1).sum() if grid is not None else 0
    samples = int(grid.shape[0]) if grid is not None else int(input_ids.shape[0])
    return samples, tokens, patches, input_ids.numel()


def batch_counts(inputs: dict) -> tuple[int, int, int, int]:
    """(samples, tokens, patches, positions) of one collated batch: real tokens (padding excluded), ViT patches,
    one sample per image (every benchmark sample has exactly one), and the batch's token positions (padding
    included)."""
    return tuple(int(v) for v in batch_count_values(inputs))


def summarise(step_ends: list[float], counts: list[tuple[int, int, int, int]], warmup: int) -> dict:
    """Steady-state rates from micro-step end times (seconds) and per-micro-step (samples, tokens, patches,
    positions): the window runs from the end of micro-step `warmup` to the end of the last one. `padding_share` is
    the share of the window's token positions that were padding."""
    if len(step_ends) != len(counts):
        raise ValueError(f"{len(step_ends)} step times but {len(counts)} step counts")
    if len(step_ends) - warmup < 1 or warmup < 1:
        raise ValueError(f"need at least one micro-step after {warmup} warm-up steps (>= 1), got {len(step_ends)}")
    seconds = step_ends[-1] - step_ends[warmup - 1]
    window = counts[warmup:]
    samples, tokens, patches, positions = (sum(c[i] for c in window) for i in range(4))
    return {"steps": len(window), "seconds": seconds, "samples": samples, "tokens": tokens, "patches": patches,
            "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "padding_share": 1 - tokens / positions if positions else 0.0}


RATIOS = {"ratio_vs_seed": "seed_loop", "ratio_vs_best_default": "trainer_default",
          "ratio_vs_best_tuned": "trainer_tuned"}


def add_ratios(records: list[dict]) -> list[dict]:
    """Each record of one model run gets its samples/s over the seed loop's, the faster trainer example's and the
    faster plainly tuned trainer's (None where that baseline is absent or failed)."""
    def best(kind):
        rates = [r["samples_per_s"] for r in records if r["variant"] == kind and r.get("samples_per_s")]
        return max(rates) if rates else None

    for key, kind in RATIOS.items():
        base = best(kind)
        for r in records:
            rate = r.get("samples_per_s")
            r[key] = rate / base if rate and base else None
    return records


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(records: list[dict]) -> str:
    """Markdown table: model, trainer, settings, samples/s, tokens/s, GiB, MFU, ratios (error text if failed)."""
    lines = ["| model | data | trainer | variant | settings | steps | samples/s | tokens/s | padding | peak GiB | "
             "MFU | x seed | x best example | x best tuned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['model']} | {r.get('data', '')} | {r['trainer']} | {r['variant']} | {r.get('settings', '')} |"
        if r.get("error"):
            lines.append(f"{head} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        padding = r.get("padding_share")
        lines.append(
            f"{head} {r.get('steps', '')} | {_fmt(r['samples_per_s'], '.2f')} | {_fmt(r['tokens_per_s'], '.0f')} | "
            f"{_fmt(padding * 100 if padding is not None else None, '.0f')}% | {_fmt(r['peak_gib'], '.1f')} | "
            f"{_fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f')}% | "
            + " | ".join(_fmt(r.get(key), '.2f') for key in RATIOS) + " |")
    return "\n".join(lines)


def check_record(record: dict) -> None:
    """Raise ValueError unless `record` follows the docs/performance.json schema."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}: {record}")
    if record["variant"] not in VARIANT_KINDS:
        raise ValueError(f"variant {record['variant']!r} is not one of {VARIANT_KINDS}")
    if not record.get("error") and not 0 < record["mfu"] < 1:
        raise ValueError(f"mfu must be a fraction, got {record['mfu']}")


# --------------------------------------------------------------------------------------------------------------
# Task shapes and variants

# model id -> the task its perf recipes train, the pixel limits their converter command and recipe use, the side
# of the images a resizing converter writes (the 2B caption recipe's `--resize 280x280`), and the variants to run
# by default (what one 10-minute device command holds; the 24 GiB variants need no ratio, so they run apart:
# `--variants lf_ours_24gib swift_ours_24gib`).
TASKS = {
    "qwen2_vl_2b": dict(task="caption", pixels=(3136, 78400), resize=280,
                        variants=["seed", "lf_ours", "swift_ours"]),
    "qwen2_5_vl_7b": dict(task="grounding", pixels=(3136, 200704), resize=None,
                          variants=["lf_default", "swift_default", "lf_plain", "swift_plain", "lf_ours",
                                    "swift_ours"]),
    "qwen3_vl_8b": dict(task="grounding", pixels=(4096, 200704), resize=None,
                        variants=["lf_plain", "swift_plain", "lf_ours", "swift_ours"]),
}
LF_TEMPLATE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl_nothink"}

# LLaMA-Factory's examples/train_lora/qwen2_5vl_lora_sft.yaml (v0.9.5) training values.
LF_EXAMPLE = dict(stage="sft", do_train=True, finetuning_type="lora", lora_rank=8, lora_target="all",
                  image_max_pixels=262144, trust_remote_code=True, cutoff_len=2048, overwrite_cache=True,
                  preprocessing_num_workers=16, dataloader_num_workers=4, per_device_train_batch_size=1,
                  gradient_accumulation_steps=8, learning_rate=1.0e-4, lr_scheduler_type="cosine",
                  warmup_ratio=0.1, bf16=True)
# ms-swift's examples/train/multimodal/caption.sh values (accumulation 8, to match LLaMA-Factory's example).
SWIFT_EXAMPLE = dict(tuner_type="lora", torch_dtype="bfloat16", per_device_train_batch_size=1, learning_rate=1e-4,
                     lora_rank=8, lora_alpha=32, target_modules=["all-linear"], freeze_vit=True,
                     gradient_accumulation_steps=8, max_length=2048, warmup_ratio=0.05, dataloader_num_workers=4)

# name -> (variant kind, trainer, recipe path template or example dict, settings text)
VARIANTS = {
    "seed": ("seed_loop", "transformers", None, "plain loop, batch 2, grad ckpt, LoRA r64 LM"),
    "lf_default": ("trainer_default", "llamafactory", LF_EXAMPLE, "example: batch 1 x accum 8, r8 all, grad ckpt"),
    "swift_default": ("trainer_default", "ms-swift", SWIFT_EXAMPLE, "example: batch 1 x accum 8, r8 all-linear, "
                                                                    "grad ckpt"),
    "lf_plain": ("trainer_tuned", "llamafactory", "recipes/perf/llamafactory/{model}_lora_fast.yaml",
                 "plainly tuned: the fast recipe without qwenvl_recipes"),
    "swift_plain": ("trainer_tuned", "ms-swift", "recipes/perf/swift/{model}_lora_fast.yaml",
                    "plainly tuned: the fast recipe without qwenvl_recipes"),
    "lf_ours": ("ours", "llamafactory", "recipes/perf/llamafactory/{model}_lora_fast.yaml", None),
    "swift_ours": ("ours", "ms-swift", "recipes/perf/swift/{model}_lora_fast.yaml", None),
    "lf_ours_24gib": ("ours_24gib", "llamafactory", "recipes/perf/llamafactory/{model}_lora_24gib.yaml", None),
    "swift_ours_24gib": ("ours_24gib", "ms-swift", "recipes/perf/swift/{model}_lora_24gib.yaml", None),
}
SETTING_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
                "disable_gradient_checkpointing", "enable_liger_kernel", "use_liger_kernel", "lora_rank",
                "dataloader_num_workers", "torch_compile", "logging_nan_inf_filter", "qwenvl_recipes")


def without_our_features(config: dict) -> dict:
    """A recipe with only the trainer's own options: no `qwenvl_recipes` block (LLaMA-Factory); no plugin, no
    callbacks of ours and no QVR_* settings (ms-swift)."""
    config = {k: v for k, v in config.items() if k != CUSTOM_KEY}
    if "external_plugins" in config:
        plugins = [p for p in config.pop("external_plugins") if Path(p).name != "swift_plugin.py"]
        config.update({"external_plugins": plugins} if plugins else {})
    callbacks = [c for c in config.pop("callbacks", []) if c not in FEATURE_CALLBACKS.values()]
    config.update({"callbacks": callbacks} if callbacks else {})
    if "ENV" in config:
        config["ENV"] = {k: v for k, v in config["ENV"].items() if not k.startswith(ENV_PREFIX)}
    return config


def parse_variant(spec: str) -> tuple[str, dict]:
    """'lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false' -> ('lf_ours', {...: 12, ...: False});
    a dotted key names a nested setting (`qwenvl_recipes.speedups.compile_language=true`)."""
    name, _, rest = spec.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} in {spec!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def settings_text(config: dict) -> str:
    return ", ".join(f"{k}={config[k]}" for k in SETTING_KEYS if k in config)


def micro_steps(warmup: int, steps: int, accum: int, profile: int = 0) -> tuple[int, int, int]:
    """(warm-up micro-steps, micro-steps through the end of the measured window, optimizer steps to run): whole
    optimizer steps on both sides of the window, with at least `warmup` micro-steps before it, `steps` inside it
    and `profile` (traced, not measured) after it."""
    warm = math.ceil(warmup / accum) * accum
    window = warm + math.ceil(steps / accum) * accum
    return warm, window, (window + math.ceil(profile / accum) * accum) // accum


def trainer_config(name: str, overrides: dict, model_id: str, ckpt: Path, data: Path, work: Path,
                   warmup: int, steps: int, cpu: bool, profile: int = 0) -> tuple[dict, int, int]:
    """The trainer's config for one variant, pointed at the random checkpoint and benchmark data, its number of
    warm-up micro-steps and the micro-step that ends the measured window (micro_steps)."""
    kind, trainer, source, _ = VARIANTS[name]
    family = FAMILY_OF_MODEL[model_id]
    if isinstance(source, dict):
        config = dict(source)
        if trainer == "llamafactory":
            config["template"] = LF_TEMPLATE[family]
    else:
        path = REPO_ROOT / source.format(model=model_id)
        config = yaml.safe_load(path.read_text())
        if kind == "trainer_tuned":
            config = without_our_features(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    accum = int(config.get("gradient_accumulation_steps", 1))
    warm, window, max_steps = micro_steps(warmup, steps, accum, profile)
    out = str(work / "out" / name)
    # Bench-only settings outside the measured window: no saving, no per-step logging sync, and a preprocessing
    # pool of the host's cores (LLaMA-Factory reads and sizes every COCO-sized image while it tokenizes: a
    # 200-step run's 3,280 rows took over three minutes on 4 processes).
    common = dict(output_dir=out, max_steps=max_steps, logging_steps=max_steps, save_strategy="no",
                  report_to="none")
    workers = min(16, os.cpu_count() or 1)
    if trainer == "llamafactory":
        config.update(common, model_name_or_path=str(ckpt), dataset_dir=str(data), dataset="bench_train",
                      overwrite_output_dir=True, plot_loss=False, overwrite_cache=True,
                      preprocessing_num_workers=workers)
        if cpu:
            config.update(bf16=False, enable_liger_kernel=False, use_liger_kernel=False)
    else:
        config.update(common, model=str(ckpt), model_type=family, template=family, check_model=False,
                      dataset=[str(data / "bench_train.jsonl")], add_version=False, split_dataset_ratio=0.0,
                      dataset_num_proc=workers)
        if cpu:
            config.update(torch_dtype="float32", use_liger_kernel=False)
    return config, warm, window


# --------------------------------------------------------------------------------------------------------------
# Worker side (runs in a trainer's environment, one variant per process)


class Meter:
    """Micro-step end times and (samples, tokens, patches, positions) counts, plus the model facts the record needs:
    parameter counts and how the LM and the vision blocks are trained (tools.mfu.training_mode).

    Nothing here synchronises the host with the GPU inside the run (a sync would let the GPU idle while the host
    prepares the next step, which the trainers otherwise overlap): on a GPU each micro-step's end is a CUDA event
    and the counts stay on the device until `record()`. With `window` set, micro-steps after it are not measured;
    `profile` micro-steps after the window are traced with torch.profiler into `trace_path` (chrome trace, gzip)."""

    def __init__(self, window: int | None = None, profile: int = 0, trace_path: str | None = None):
        self.step_ends, self.counts = [], []
        self.n_lm = self.n_vis = self.n_trainable = self.n_with_grad = self.modes = None
        self.window, self.profile, self.trace_path, self.profiler = window, profile, trace_path, None

    def count(self, model, inputs):
        self.counts.append(batch_count_values(inputs))
        if self.n_lm is None:
            self.n_lm, self.n_vis = count_params(model)
            named = list(model.named_parameters())
            self.modes = {"lm": training_mode(named, ".language_model."),
                          "vision": training_mode(named, ".visual.blocks.")}

    def check_grads(self, model):
        """After the first backward: how many trainable tensors got a gradient (catches checkpointing that
        silently cuts LoRA out of the graph)."""
        if self.n_trainable is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            self.n_trainable = sum(p.numel() for p in trainable)
            self.n_with_grad = sum(p.numel() for p in trainable if p.grad is not None)

    def step_end(self):
        import torch

        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.step_ends.append(event)
        else:
            self.step_ends.append(time.perf_counter())
        done = len(self.step_ends)
        if self.profile and done == self.window:
            self.profiler = torch.profiler.profile(activities=profiler_activities())
            self.profiler.start()
        elif self.profiler is not None and done == self.window + self.profile:
            self.profiler.stop()
            write_trace(self.profiler, Path(self.trace_path))
            self.profiler = None

    def step_seconds(self) -> list[float]:
        """Micro-step end times in seconds (on a GPU: from the first event, after waiting for the last)."""
        import torch

        ends = self.step_ends[:self.window]
        if ends and not isinstance(ends[0], float):
            torch.cuda.synchronize()
            return [ends[0].elapsed_time(e) / 1e3 for e in ends]
        return ends

    def record(self, warmup: int) -> dict:
        import torch

        counts = [tuple(int(v) for v in c) for c in self.counts[:self.window]]
        rates = summarise(self.step_seconds(), counts, warmup)
        cuda = torch.cuda.is_available()
        flops = step_flops(self.n_lm, self.n_vis, rates["tokens"], rates["patches"], **self.modes)
        return dict(rates, n_lm=self.n_lm, n_vis=self.n_vis, n_trainable=self.n_trainable,
                    n_trainable_with_grad=self.n_with_grad, trained=self.modes, mfu=mfu(flops, rates["seconds"]),
                    peak_gib=torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
                    peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
                    device=torch.cuda.get_device_name(0) if cuda else "cpu",
                    tokens_per_sample=rates["tokens"] / max(rates["samples"], 1),
                    patches_per_sample=rates["patches"] / max(rates["samples"], 1))


def profiler_activities():
    import torch
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def write_trace(profiler, path: Path) -> None:
    """The profiler's chrome trace, gzipped, and the GPU idle-gap report of tools.gpu_gaps beside it (.txt)."""
    import gzip

    from converters.files import atomic_open, write_text_atomic
    from tools.gpu_gaps import analyse, format_report

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        profiler.export_chrome_trace(str(raw))
        data = raw.read_bytes()
    with atomic_open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as gz:
        gz.write(data)
    trace = json.loads(data)
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)
    try:
        gaps = format_report(analyse(trace))
    except ValueError as error:  # a CPU run has no kernels
        gaps = str(error)
    write_text_atomic(path.with_suffix("").with_suffix(".txt"), f"{gaps}\n\n{table}\n")


def install_meter(meter: Meter, on_train_end) -> None:
    """Make every transformers Trainer built from now on feed `meter` (both trainers subclass it), and call
    `on_train_end()` when its training loop ends."""
    from transformers import Trainer, TrainerCallback

    class StepTimer(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_train_end(self, args, state, control, **kwargs):
            on_train_end()

    original_init = Trainer.__init__

    @functools.wraps(original_init)  # ms-swift inspects the signature (tokenizer vs processing_class)
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())
        training_step = self.training_step

        def counted_training_step(model, inputs, *rest, **kw):
            meter.count(model, inputs)
            loss = training_step(model, inputs, *rest, **kw)
            meter.check_grads(model)
            return loss

        self.training_step = counted_training_step

    Trainer.__init__ = init


def run_trainer(trainer: str, config_path: Path) -> None:
    """Run the recipe as its header's Run line does, in this process: `qvr-llamafactory train` for a LLaMA-Factory
    recipe with a `qwenvl_recipes` block, else `llamafactory-cli train`; `swift sft` (a swift recipe names its
    plugins itself, in external_plugins)."""
    if trainer == "llamafactory" and CUSTOM_KEY in yaml.safe_load(config_path.read_text()):
        from custom_modules.integrations.llamafactory_cli import main as qvr_llamafactory

        qvr_llamafactory(["train", str(config_path)])
    elif trainer == "llamafactory":
        from llamafactory.cli import main as lf_main

        sys.argv = ["llamafactory-cli", "train", str(config_path)]
        lf_main()
    else:
        from swift.cli.main import parse_yaml_args
        from swift.pipelines import sft_main

        argv = [str(config_path)]
        parse_yaml_args(argv)
        sft_main(argv)


# The seed recipe's adapter: LoRA r64 on the language model's seven projections.
SEED_LORA = dict(r=64, lora_alpha=16, lora_dropout=0.05,
                 target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def encode_batch(processor, rows: list[dict], device: str):
    """(model inputs, labels) of benchmark rows, as a plain loop builds them: the chat template, the processor,
    padding masked out of the labels."""
    from PIL import Image

    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"},
                                      {"type": "text", "text": r["messages"][0]["content"][len("<image>"):]}]},
         {"role": "assistant", "content": [{"type": "text", "text": r["messages"][1]["content"]}]}],
        tokenize=False) for r in rows]
    images = [Image.open(r["images"][0]).convert("RGB") for r in rows]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(device)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.tokenizer.pad_token_id, -100)
    return inputs, labels


def seed_loop(ckpt: Path, data: Path, meter: Meter, total_steps: int, batch_size: int = 2, cpu: bool = False):
    """The seed-style plain transformers loop: LoRA r64/alpha16/dropout0.05 on the LM's linear layers, gradient
    checkpointing, AdamW, the processor called on each batch in the loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = "cpu" if cpu else "cuda"
    dtype = torch.float32 if cpu else torch.bfloat16
    processor = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa").to(device)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(**SEED_LORA))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = json.loads((data / "bench_train.json").read_text())
    for step in range(total_steps):
        batch = [rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)]
        inputs, labels = encode_batch(processor, batch, device)
        meter.count(model, inputs)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        meter.check_grads(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end()


def worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    meter = Meter(spec["window"], spec["profile"], spec["trace"])

    def write_record():
        Path(spec["record"]).write_text(json.dumps(meter.record(spec["warmup"])))

    if spec["trainer"] == "transformers":
        seed_loop(Path(spec["ckpt"]), Path(spec["data"]), meter, spec["window"] + spec["profile"], cpu=spec["cpu"])
        write_record()
        return

    def record_and_exit():
        # The figures are complete when the loop ends; saving the adapter and the trainers' teardown (over a
        # minute for LLaMA-Factory with persistent loader workers on the GPU machine) are not part of the benchmark.
        write_record()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    install_meter(meter, record_and_exit)
    run_trainer(spec["trainer"], Path(spec["config"]))
    raise RuntimeError(f"{spec['trainer']} returned without ending its training loop")


# --------------------------------------------------------------------------------------------------------------
# Orchestrator (any Python with yaml, numpy, PIL; starts one worker process per variant)


def trainer_env(pythonpath: str | None) -> dict:
    from tools.offline import offline_env

    env = offline_env(PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def run_variant(spec_name: str, args, ckpt: Path, data: Path, work: Path, log) -> dict:
    name, overrides = parse_variant(spec_name)
    kind, trainer, _, settings = VARIANTS[name]
    record = {"model": args.model, "trainer": trainer, "variant": kind, "name": spec_name,
              "date": datetime.now(timezone.utc).date().isoformat()}
    spec = {"trainer": trainer, "ckpt": str(ckpt), "data": str(data), "cpu": args.cpu,
            "record": str(work / f"record_{name}.json"), "profile": args.profile,
            "trace": str(Path(args.out) / f"trace_{re.sub(r'[^A-Za-z0-9_.-]', '-', spec_name)}.json.gz")}
    if trainer == "transformers":
        spec["warmup"], spec["window"] = args.warmup, args.warmup + args.steps
        python, path = args.lf_python, args.lf_path
    else:
        config, spec["warmup"], spec["window"] = trainer_config(name, overrides, args.model, ckpt, data, work,
                                                                args.warmup, args.steps, args.cpu, args.profile)
        config_path = work / f"config_{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        spec["config"] = str(config_path)
        settings = settings or ""
        settings = "; ".join(filter(None, [settings, settings_text(config)]))
        python, path = (args.lf_python, args.lf_path) if trainer == "llamafactory" else (args.swift_python,
                                                                                         args.swift_path)
    record["settings"] = settings
    spec_path = work / f"spec_{name}.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["record"]).unlink(missing_ok=True)
    log.write(f"\n===== {spec_name} ({trainer}) =====\n")
    log.flush()
    start = time.time()
    env = trainer_env(path)
    if trainer == "llamafactory":
        # LLaMA-Factory sizes every image while it tokenizes, in `preprocessing_num_workers` processes that each
        # keep torch's full thread pool: a 640x480 image took 75 ms with the pool and 7 ms with one thread on two
        # cores, and 3,280 rows ran at 8-10 rows/s on 16 processes of a 16-core host. One thread each, as torch's
        # own data loader workers have (ms-swift processes images there).
        env.setdefault("OMP_NUM_THREADS", "1")
    # The worker leaves with os._exit once its figures are written, so it removes no temporary files: it gets a
    # temporary folder of its own (a short path, since multiprocessing puts sockets there), removed here; compiled
    # kernels stay in the usual shared cache.
    env["TMPDIR"] = tmp = tempfile.mkdtemp(prefix="qvr-bench-")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR",
                   os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
    try:
        proc = subprocess.run([python, "-m", "tools.bench_train", "worker", str(spec_path)], cwd=REPO_ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
        failed = proc.returncode != 0 or not Path(spec["record"]).exists()
        error = f"exit {proc.returncode}" if failed else None
    except subprocess.TimeoutExpired:
        failed, error = True, f"timeout after {args.timeout}s"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record["wall_s"] = round(time.time() - start, 1)
    if failed:
        return dict(record, error=error, samples_per_s=None, tokens_per_s=None, peak_gib=None, mfu=None,
                    device=None)
    return dict(record, **json.loads(Path(spec["record"]).read_text()))


def install_wheels(wheels: Path, site_root: Path) -> tuple[str, str]:
    """pip-install the carried wheel sets of tools/prepare_gpu_wheels.sh (common, lf, swift) into
    site_root/site-<set>; return the PYTHONPATH prefixes of the LLaMA-Factory and ms-swift environments."""
    for name in ("common", "lf", "swift"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site_root / f"site-{name}"),
                        *map(str, sorted((wheels / name).glob("*.whl")))], check=True)
    common = str(site_root / "site-common")
    return (os.pathsep.join([str(site_root / "site-lf"), common]),
            os.pathsep.join([str(site_root / "site-swift"), common]))


def rows_needed(variants: list[str], args) -> int:
    """Benchmark rows for one epoch to hold every variant's micro-steps: a trainer starting a new epoch inside the
    window restarts its loader (each worker collates a first batch while the GPU waits), which real datasets of
    thousands of samples do rarely."""
    rows = 128
    for spec in variants:
        name, overrides = parse_variant(spec)
        if VARIANTS[name][1] == "transformers":
            rows = max(rows, 2 * (args.warmup + args.steps + args.profile))
            continue
        config, _, _ = trainer_config(name, overrides, args.model, Path("ckpt"), Path("data"), Path("work"),
                                      args.warmup, args.steps, args.cpu, args.profile)
        rows = max(rows, int(config["per_device_train_batch_size"]) * int(config.get("gradient_accumulation_steps", 1))
                   * config["max_steps"])
    return rows


def data_label(model_id: str, shape: str) -> str:
    """What the figures of a run were measured on, as the records and tables say it."""
    from tools.bench_data import IDEAL

    task = TASKS[model_id]
    if shape == "ideal":
        side = IDEAL[task["task"]]["side"]
        return f"ideal {side}x{side}, fixed text"
    resized = f", resized {task['resize']}x{task['resize']}" if task["resize"] else ""
    return f"coco{resized}, {task['task']} text"


def prepare(args, work: Path, rows: int) -> tuple[Path, Path]:
    """Build (or reuse) the random checkpoint in the LLaMA-Factory environment and write the task's data."""
    ckpt = Path(args.ckpt or work / "ckpt" / args.model)
    command = [args.lf_python, "-m", "tools.random_checkpoint", "--model", args.model, "--out", str(ckpt)]
    if args.cpu:
        command += ["--tiny", "--device", "cpu"]
    subprocess.run(command, cwd=REPO_ROOT, env=trainer_env(args.lf_path), check=True)
    task = TASKS[args.model]
    data = write_bench_data(work / "data" / f"{args.data}_{rows}", task["task"], rows, FAMILY_OF_MODEL[args.model],
                            *task["pixels"], shape=args.data, resize=task["resize"])
    return ckpt, data


def run(args) -> list[dict]:
    out = Path(args.out)
    work = Path(args.work) / args.model
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    variants = args.variants or TASKS[args.model]["variants"]
    rows = max(rows_needed(variants, args), args.rows or 0)  # also fails on a bad variant before the long work
    records_path = out / f"bench_{args.model}.json"
    records = json.loads(records_path.read_text()) if args.append and records_path.exists() else []
    if args.wheels:
        args.lf_path, args.swift_path = install_wheels(Path(args.wheels), Path(args.work))
    with open(out / f"bench_{args.model}.log", "a") as log:
        t0 = time.time()
        ckpt, data = prepare(args, work, rows)
        print(f"checkpoint + {rows} rows of data ready in {time.time() - t0:.0f}s: {ckpt}", flush=True)
        for spec in variants:
            record = dict(run_variant(spec, args, ckpt, data, work, log), data=data_label(args.model, args.data))
            records.append(record)
            add_ratios(records)
            records_path.write_text(json.dumps(records, indent=1))
            print(f"{spec}: " + (record.get("error") or f"{record['samples_per_s']:.2f} samples/s, "
                  f"{record['peak_gib']:.1f} GiB, MFU {record['mfu']:.1%}, {record['tokens_per_sample']:.0f} "
                  f"tok/sample, padding {record['padding_share']:.0%}, {record['steps']} steps, "
                  f"grads {record['n_trainable_with_grad']}/{record['n_trainable']}") +
                  f" ({record['wall_s']}s)", flush=True)
    table = format_table(records)
    (out / f"bench_{args.model}.md").write_text(table + "\n")
    print(table)
    return records


def report(args) -> None:
    """Merge per-model record files into docs/performance.json and the table of docs/performance.md."""
    records = [r for path in args.records for r in json.loads(Path(path).read_text())]
    for r in records:
        check_record(r)
    measured = [r for r in records if not r.get("error")]  # failures stay in the printed table only
    docs = Path(args.docs)
    (docs / "performance.json").write_text(json.dumps(measured, indent=1) + "\n")
    print(format_table(records))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="benchmark one model's variants in one job (on the GPU machine)")
    p.add_argument("--model", required=True, choices=sorted(TASKS))
    p.add_argument("--out", required=True, help="folder for bench_<model>.{json,md,log}")
    p.add_argument("--work", default="/tmp/qvr-bench", help="scratch folder: checkpoint, data, trainer outputs")
    p.add_argument("--ckpt", help="random checkpoint folder (default WORK/<model>/ckpt/<model>)")
    p.add_argument("--variants", nargs="+", help="VARIANTS names, each with optional :key=value,key=value "
                                                 "overrides (default: the model's set in TASKS)")
    p.add_argument("--data", choices=("coco", "ideal"), default="coco",
                   help="coco: COCO's image-size mix and the task's text lengths (default); ideal: fixed squares and "
                        "fixed texts, the best case, labelled so (tools/bench_data.py)")
    p.add_argument("--append", action="store_true",
                   help="add to OUT/bench_<model>.json of an earlier run of this job instead of starting it anew")
    p.add_argument("--rows", type=int, help="benchmark rows to write, when more than the variants need (default: one "
                                            "epoch of the longest variant): the same data for runs that --append")
    p.add_argument("--steps", type=int, default=20, help="measured micro-steps (>= 20 for reported figures)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up micro-steps before the window")
    p.add_argument("--timeout", type=int, default=150, help="seconds allowed per variant")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="trace N micro-steps after the measured window with torch.profiler: OUT/trace_<variant>"
                        ".json.gz and .txt (GPU idle gaps, tools.gpu_gaps; host operator table)")
    p.add_argument("--lf-python", default=sys.executable, help="python of the LLaMA-Factory environment")
    p.add_argument("--lf-path", help="PYTHONPATH prefix of the LLaMA-Factory environment (e.g. /tmp/site-lf)")
    p.add_argument("--swift-python", default=sys.executable, help="python of the ms-swift environment")
    p.add_argument("--swift-path", help="PYTHONPATH prefix of the ms-swift environment")
    p.add_argument("--wheels", help="folder written by tools/prepare_gpu_wheels.sh: install its sets under WORK and "
                                    "use them as --lf-path / --swift-path")
    p.add_argument("--cpu", action="store_true", help="tiny model on CPU (tests the pipeline, not speed)")
    w = sub.add_parser("worker", help="internal: run one variant from its spec file")
    w.add_argument("spec")
    r = sub.add_parser("report", help="write docs/performance.json from bench_<model>.json files")
    r.add_argument("records", nargs="+")
    r.add_argument("--docs", default=str(REPO_ROOT / "docs"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "worker":
        worker(Path(args.spec))
    else:
        report(args)


if __name__ == "__main__":
    main()
