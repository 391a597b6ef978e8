"""What the benchmark runs: each model's task and data shape, the variants (the trainers' examples, the trainers
plainly tuned, our recipes) and the trainer config each one gets."""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import BLOCK_KEY as CUSTOM_KEY, ENV_PREFIX
from tools.model_configs import FAMILY_OF_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]


# model id -> the task its perf recipes train, the pixel limits their converter command and recipe use, the side
# of the images a resizing converter writes (the 2B caption recipe's `--resize 280x280`), and the variants to run
# by default (what one 10-minute device command holds; the 24 GiB variants need no ratio, so they run apart:
# `--variants lf_ours_24gib swift_ours_24gib`).
BENCH_MODELS = {
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


def pop_worker_env(trainer: str, config: dict) -> dict:
    """The environment a variant's worker gets beyond the trainer's: LLaMA-Factory's configs have no ENV block (its
    users set variables in the shell, e.g. PYTORCH_CUDA_ALLOC_CONF), so its variants' `ENV.<NAME>` overrides are
    taken out of the config and set in the worker's environment; ms-swift exports its own ENV block."""
    if trainer != "llamafactory":
        return {}
    return {key: str(value) for key, value in config.pop("ENV", {}).items()}


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

    task = BENCH_MODELS[model_id]
    if shape == "ideal":
        side = IDEAL[task["task"]]["side"]
        return f"ideal {side}x{side}, fixed text"
    resized = f", resized {task['resize']}x{task['resize']}" if task["resize"] else ""
    return f"coco{resized}, {task['task']} text"
