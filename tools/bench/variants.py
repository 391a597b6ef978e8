"""What the benchmark runs: each recipe family's benchmark (a model, its task and data shape), the variants (the
seed's own loop, the trainers' examples, the trainers plainly tuned, Unsloth, our recipes) and the config each one
gets."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import BLOCK_KEY as CUSTOM_KEY, ENV_PREFIX
from custom_modules.model_configs import FAMILY_OF_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
LF_TEMPLATE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl_nothink"}


@dataclass(frozen=True)
class Variant:
    """kind: records.VARIANT_KINDS; trainer: "llamafactory", "ms-swift", "unsloth" or "transformers" (a seed's plain
    loop, tools/bench/worker.py); source: a recipe path or a dict of settings (a trainer example's, Unsloth's or
    a seed loop's, whose `recipe` names the recipe the loop takes the family's settings from); settings: what the
    table says besides the config's own settings; overrides: applied to the config before the command line's."""

    kind: str
    trainer: str
    source: str | dict
    settings: str | None = None
    overrides: dict = field(default_factory=dict)


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
# Unsloth's Qwen2.5-VL / Qwen3-VL vision notebooks (FastVisionModel + UnslothVisionDataCollator + trl's
# SFTTrainer): batch 2 x accumulation 4, its own offloading gradient checkpointing, 8-bit AdamW, LoRA on the LM's
# attention and MLP (vision frozen) at the rank and alpha of our recipes, bf16 weights (16-bit LoRA, as ours).
UNSLOTH_NOTEBOOK = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4,
                        use_gradient_checkpointing="unsloth", optim="adamw_8bit", learning_rate=2e-4, warmup_steps=5,
                        weight_decay=0.001, lr_scheduler_type="linear", lora_rank=64, lora_alpha=16, lora_dropout=0.0,
                        dataloader_num_workers=0, max_seq_length=2048)
UNSLOTH_TUNED = dict(UNSLOTH_NOTEBOOK, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                     use_gradient_checkpointing=False, dataloader_num_workers=8)
# The seed recipes' adapter: LoRA r64 on the language model's seven projections.
SEED_LORA = dict(r=64, lora_alpha=16, lora_dropout=0.05,
                 target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
SEED_LM_LOOP = dict(loop="lm", per_device_train_batch_size=2, gradient_checkpointing=True, learning_rate=1e-4,
                    lora=SEED_LORA)
# What a competent user changes in a family's recipe for speed on one 80 GB GPU, the trainer's own options only.
TUNED = {"llamafactory": dict(per_device_train_batch_size=16, gradient_accumulation_steps=1,
                              gradient_checkpointing=False, disable_gradient_checkpointing=True, use_liger_kernel=True,
                              dataloader_num_workers=8),
         "ms-swift": dict(per_device_train_batch_size=16, gradient_accumulation_steps=1, gradient_checkpointing=False,
                          use_liger_kernel=True, dataloader_num_workers=8)}
# LLaMA-Factory's own FP8 option (accelerate's recipe through torchao, carried as the `fp8` wheel set): opt-in,
# numerics change.
FP8 = dict(fp8=True, fp8_backend="torchao")


def perf_variants(model: str, with_24gib: bool = False) -> dict[str, Variant]:
    """The grounding / caption benchmark of the perf recipes, recipes/perf/<trainer>/<model>_lora_fast.yaml."""
    lf, swift = (f"recipes/perf/{d}/{model}_lora_fast.yaml" for d in ("llamafactory", "swift"))
    variants = {
        "seed": Variant("seed_loop", "transformers", SEED_LM_LOOP, "plain loop, batch 2, grad ckpt, LoRA r64 LM"),
        "lf_default": Variant("trainer_default", "llamafactory", LF_EXAMPLE,
                              "example: batch 1 x accum 8, r8 all, grad ckpt"),
        "swift_default": Variant("trainer_default", "ms-swift", SWIFT_EXAMPLE,
                                 "example: batch 1 x accum 8, r8 all-linear, grad ckpt"),
        "lf_plain": Variant("trainer_tuned", "llamafactory", lf,
                            "plainly tuned: the fast recipe without qwenvl_recipes"),
        "swift_plain": Variant("trainer_tuned", "ms-swift", swift, "plainly tuned: the fast recipe without our plugin"),
        "unsloth_default": Variant("unsloth", "unsloth", UNSLOTH_NOTEBOOK,
                                   "Unsloth notebook: batch 2 x accum 4, its grad ckpt, adamw_8bit, r64 LM"),
        "unsloth_tuned": Variant("unsloth", "unsloth", UNSLOTH_TUNED,
                                 "Unsloth tuned: batch 16, no grad ckpt, 8 loader workers, adamw_8bit, r64 LM"),
        "lf_ours": Variant("ours", "llamafactory", lf),
        "swift_ours": Variant("ours", "ms-swift", swift),
        "lf_ours_fp8": Variant("ours", "llamafactory", lf, "the fast recipe with LLaMA-Factory's fp8 (torchao)", FP8),
    }
    if with_24gib:
        variants.update(
            lf_ours_24gib=Variant("ours_24gib", "llamafactory", f"recipes/perf/llamafactory/{model}_lora_24gib.yaml"),
            swift_ours_24gib=Variant("ours_24gib", "ms-swift", f"recipes/perf/swift/{model}_lora_24gib.yaml"))
    return variants


FORGERY_MODES = {"t1": "t1_vit_lora_head", "t2": "t2_lm_supervised", "t3": "t3_hybrid", "t4": "t4_frozen_head",
                 "t5": "t5_frozen_head_hybrid", "head_pretrain": "head_pretrain"}


def forgery_variants(model: str) -> dict[str, Variant]:
    """The forgery recipes (recipes/forgery/<trainer>/<model>_<mode>.yaml), the seed study's own loop for T1 and
    T3 (a plain PyTorch loop over the recipe's settings: batch 4, gradient checkpointing, the mode's LoRA and
    head) and the plainly tuned trainer: what a trainer alone does with the converter's rows, i.e. the T2 recipe
    (LoRA on the LM attention, the answer word as the target) without our block, batch tuned."""
    recipe = {(trainer, mode): f"recipes/forgery/{folder}/{model}_{stem}.yaml" for mode, stem in FORGERY_MODES.items()
              for trainer, folder in (("llamafactory", "llamafactory"), ("ms-swift", "swift"))}
    variants = {f"seed_{mode}": Variant("seed_loop", "transformers",
                                        dict(loop="forgery", per_device_train_batch_size=4, gradient_checkpointing=True,
                                             learning_rate=2e-4, recipe=recipe["llamafactory", mode]),
                                        f"seed loop: {mode.upper()}, batch 4, grad ckpt")
                for mode in ("t1", "t3")}
    variants["lf_plain"] = Variant("trainer_tuned", "llamafactory", recipe["llamafactory", "t2"],
                                   "plainly tuned: the T2 recipe without qwenvl_recipes", TUNED["llamafactory"])
    variants["swift_plain"] = Variant("trainer_tuned", "ms-swift", recipe["ms-swift", "t2"],
                                      "plainly tuned: the T2 recipe without our plugin", TUNED["ms-swift"])
    for mode in FORGERY_MODES:
        for trainer, prefix in (("llamafactory", "lf"), ("ms-swift", "swift")):
            variants[f"{prefix}_{mode}"] = Variant("ours", trainer, recipe[trainer, mode], f"forgery {mode.upper()}")
    return variants


def lora_recipe_variants(lf: str, swift: str, seed_loop: dict, seed_settings: str) -> dict[str, Variant]:
    """A family of plain LoRA recipes (no block of ours): the seed's loop, the recipes plainly tuned (batch 16, no
    gradient checkpointing, Liger) and the recipes as committed."""
    return {"seed": Variant("seed_loop", "transformers", seed_loop, seed_settings),
            "lf_plain": Variant("trainer_tuned", "llamafactory", lf, "plainly tuned: the recipe, batch tuned",
                                TUNED["llamafactory"]),
            "swift_plain": Variant("trainer_tuned", "ms-swift", swift, "plainly tuned: the recipe, batch tuned",
                                   TUNED["ms-swift"]),
            "lf_ours": Variant("ours", "llamafactory", lf, "the recipe as committed"),
            "swift_ours": Variant("ours", "ms-swift", swift, "the recipe as committed")}


def microscopy_variants(stem: str, tuned_batch: int, fast_stem: str | None = None) -> dict[str, Variant]:
    """recipes/microscopy/<trainer>/<stem>.yaml (and the fast recipes, <fast_stem>.yaml, as `lf_fast` /
    `swift_fast`); the seed's loop: the same LoRA (r64, alpha 128) and batch 2 in a plain loop with gradient
    checkpointing. A sample holds two images of up to 768 visual tokens each, so the tuned micro-batch is what the
    model's activations leave room for on 80 GB (an estimate from the grounding runs' memory: override it to
    sweep)."""
    seed = dict(SEED_LM_LOOP, learning_rate=2e-4, lora=dict(SEED_LM_LOOP["lora"], lora_alpha=128))
    variants = lora_recipe_variants(f"recipes/microscopy/llamafactory/{stem}.yaml",
                                    f"recipes/microscopy/swift/{stem}.yaml", seed,
                                    "plain loop, batch 2, grad ckpt, LoRA r64 LM")
    for name in ("lf_plain", "swift_plain"):
        plain = variants[name]
        variants[name] = Variant(plain.kind, plain.trainer, plain.source, plain.settings,
                                 dict(plain.overrides, per_device_train_batch_size=tuned_batch))
    if fast_stem:
        variants.update(
            lf_fast=Variant("ours", "llamafactory", f"recipes/microscopy/llamafactory/{fast_stem}.yaml",
                            "the fast recipe"),
            swift_fast=Variant("ours", "ms-swift", f"recipes/microscopy/swift/{fast_stem}.yaml", "the fast recipe"))
    return variants


def report_variants(model: str, tuned_batch: int, fast: bool = False) -> dict[str, Variant]:
    """The custom vision encoder's two stages (recipes/report/<trainer>/<model>_raddino_stage{1,2}.yaml) and the
    seed's plain loop of stage 2. No trainer trains the encoder without our block, so the family's tuned
    baseline is stage 2 with the trainer's own options tuned: no gradient checkpointing, Liger, the micro-batch
    an 80 GB GPU holds for ~1,500-token samples (batch 16 ran out of memory on Qwen3-VL-4B in both trainers).
    With `fast`, stage 2's fast recipes (<model>_raddino_stage2_fast.yaml) as `lf_stage2_fast` / `swift_stage2_fast`."""
    stage = {(trainer, s): f"recipes/report/{folder}/{model}_raddino_stage{s}.yaml" for s in (1, 2)
             for trainer, folder in (("llamafactory", "llamafactory"), ("ms-swift", "swift"))}
    variants = {"seed": Variant("seed_loop", "transformers",
                                dict(loop="vision_encoder", per_device_train_batch_size=4, gradient_checkpointing=True,
                                     learning_rate=1e-4, recipe=stage["llamafactory", 2]),
                                "plain loop: stage 2, batch 4, grad ckpt")}
    for trainer, prefix in (("llamafactory", "lf"), ("ms-swift", "swift")):
        variants[f"{prefix}_stage1"] = Variant("ours", trainer, stage[trainer, 1], "stage 1 (merger)")
        variants[f"{prefix}_stage2"] = Variant("ours", trainer, stage[trainer, 2], "stage 2 (merger + LM LoRA)")
        variants[f"{prefix}_stage2_tuned"] = Variant("ours", trainer, stage[trainer, 2], "stage 2, batch tuned",
                                                     dict(TUNED[trainer], per_device_train_batch_size=tuned_batch))
        if fast:
            fast_recipe = stage[trainer, 2].replace(".yaml", "_fast.yaml")
            variants[f"{prefix}_stage2_fast"] = Variant("ours", trainer, fast_recipe, "stage 2, the fast recipe")
    return variants


@dataclass(frozen=True)
class Bench:
    """One table: `model` (tools.model_configs id) on `task` data (tools/bench_data.py), the pixel limits the
    family's converter command and recipes use, `resize` (the side a resizing converter wrote), the variants and
    the ones run by default (what one 10-minute device command holds), and `images_per_sample`."""

    model: str
    task: str
    pixels: tuple[int, int]
    variants: dict[str, Variant]
    default: tuple[str, ...]
    resize: int | None = None
    images_per_sample: int = 1


BENCH_LIST = [
    Bench("qwen2_vl_2b", "caption", (3136, 78400), perf_variants("qwen2_vl_2b"), ("seed", "lf_ours", "swift_ours"),
          resize=280),
    # The 24 GiB variants need no ratio, so they run apart: `--variants lf_ours_24gib swift_ours_24gib`.
    Bench("qwen2_5_vl_7b", "grounding", (3136, 200704), perf_variants("qwen2_5_vl_7b", with_24gib=True),
          ("lf_default", "swift_default", "lf_plain", "swift_plain", "lf_ours", "swift_ours")),
    Bench("qwen3_vl_8b", "grounding", (4096, 200704), perf_variants("qwen3_vl_8b"),
          ("lf_plain", "swift_plain", "lf_ours", "swift_ours")),
    # Qwen3-VL-2B / 4B have no grounding recipe of their own: the 8B fast recipe, pointed at their checkpoint.
    *(Bench(model, "grounding", (4096, 200704), perf_variants("qwen3_vl_8b"),
            ("seed", "lf_plain", "swift_plain", "lf_ours", "swift_ours")) for model in ("qwen3_vl_2b", "qwen3_vl_4b")),
    Bench("qwen2_5_vl_7b", "forgery", (200704, 200704), forgery_variants("qwen2_5_vl_7b"),
          ("seed_t1", "seed_t3", "lf_plain", "swift_plain", "lf_t1", "swift_t1", "lf_t3", "swift_t3",
           "lf_head_pretrain", "swift_head_pretrain")),
    # The memory-lean recipes as committed (lf_ours, swift_ours) run by name: seven variants overrun a command.
    Bench("qwen3_vl_2b", "microscopy", (4096, 786432),
          microscopy_variants("qwen3_vl_2b_lora", 8, "qwen3_vl_2b_lora_fast"),
          ("seed", "lf_plain", "swift_plain", "lf_fast", "swift_fast"), images_per_sample=2),
    # The 8B recipes train on 4 GPUs with DeepSpeed ZeRO-2; one GPU runs them without it (trainer_config).
    Bench("qwen3_vl_8b", "microscopy", (4096, 786432), microscopy_variants("qwen3_vl_8b_lora_zero2", tuned_batch=2),
          ("seed", "lf_plain", "swift_plain", "lf_ours", "swift_ours"), images_per_sample=2),
    # Qwen3-VL-4B: stage 2 as committed, plainly tuned and fast (the stage-1 rows run by name).
    Bench("qwen3_vl_4b", "report", (4096, 200704), report_variants("qwen3_vl_4b", 4, fast=True),
          ("seed", "lf_stage2", "swift_stage2", "lf_stage2_tuned", "swift_stage2_tuned", "lf_stage2_fast",
           "swift_stage2_fast")),
    Bench("qwen3_vl_8b", "report", (4096, 200704), report_variants("qwen3_vl_8b", 2),
          ("seed", "lf_stage1", "swift_stage1", "lf_stage2", "swift_stage2", "lf_stage2_tuned", "swift_stage2_tuned")),
]
BENCHES = {(b.model, b.task): b for b in BENCH_LIST}
SETTING_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
                "disable_gradient_checkpointing", "use_gradient_checkpointing", "enable_liger_kernel",
                "use_liger_kernel", "lora_rank", "dataloader_num_workers", "torch_compile", "logging_nan_inf_filter",
                "optim", "fp8", "qwenvl_recipes")


def bench_of(model: str, task: str | None = None) -> Bench:
    """The benchmark of `model` on `task`; without a task, the model's first one (its perf recipes' task)."""
    tasks = [b.task for b in BENCH_LIST if b.model == model]
    if not tasks:
        raise ValueError(f"no benchmark of {model!r}; models: {', '.join(sorted({b.model for b in BENCH_LIST}))}")
    task = task or tasks[0]
    if (model, task) not in BENCHES:
        raise ValueError(f"no {task!r} benchmark of {model}; its tasks: {', '.join(tasks)}")
    return BENCHES[model, task]


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


def parse_variant(spec: str, bench: Bench) -> tuple[str, dict]:
    """'lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false' -> ('lf_ours', {...: 12, ...: False});
    a dotted key names a nested setting (`qwenvl_recipes.speedups.compile_language=true`); a value may be a YAML
    flow list (`callbacks=[forgery,speedups]`), whose commas do not end the override."""
    name, _, rest = spec.partition(":")
    if name not in bench.variants:
        raise ValueError(f"unknown variant {name!r} of the {bench.model} {bench.task} benchmark; expected one of "
                         f"{', '.join(bench.variants)}")
    overrides = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", rest)):
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


def set_key(config: dict, key: str, value) -> None:
    """Set a dotted key (`qwenvl_recipes.speedups.compile_language`) in a nested config."""
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value


# The bench's stand-ins for what a family's recipes read beside the data (tools/bench/orchestrator.py writes them
# under WORK): a random detection head for the frozen-head forgery modes, a random ViT-B/14 for the encoder.
FORGERY_HEAD = "forgery_head"
ENCODER = "encoder"
# The tiny Qwen2.5-VL's two ViT blocks stand in for the full model's head blocks 7/15/23/31 on CPU.
TINY_VIT_BLOCKS = (0, 1)


def bench_inputs(config: dict, trainer: str, work: Path, cpu: bool) -> None:
    """Point a family recipe's other inputs at the bench's: the forgery head of T4/T5 at a random one, no
    evaluation file (the benchmark times training only), the encoder at a random ViT and no stage-1 merger (a
    fresh one, same speed); one GPU without DeepSpeed. On CPU, the tiny model's ViT blocks."""
    config.pop("deepspeed", None)
    in_block = trainer != "ms-swift"  # LLaMA-Factory recipes and the seed loops carry the qwenvl_recipes block
    block = config.get(CUSTOM_KEY, {})
    env = config.get("ENV", {})
    forgery = block.get("forgery", {}) if in_block else {
        k[len("QVR_FORGERY_"):].lower(): v for k, v in env.items() if k.startswith("QVR_FORGERY_")}
    encoder = block.get("vision_encoder", {}) if in_block else {
        k[len("QVR_VISION_ENCODER_"):].lower(): v for k, v in env.items() if k.startswith("QVR_VISION_ENCODER_")}
    values = {}
    if "eval_file" in forgery:
        values["forgery", "eval_file"] = None
    if "head_checkpoint" in forgery:
        values["forgery", "head_checkpoint"] = str(work / FORGERY_HEAD)
    if cpu and "head_blocks" in forgery:
        values["forgery", "head_blocks"] = list(TINY_VIT_BLOCKS)
    if "encoder_path" in encoder:
        values["vision_encoder", "encoder_path"] = str(work / ENCODER)
    if "merger_path" in encoder:
        values["vision_encoder", "merger_path"] = None
    for (feature, key), value in values.items():
        if in_block:
            block[feature][key] = value
        else:  # read back as YAML (custom_modules.integrations.env_settings): None is `null`, not `None`
            env[f"QVR_{feature.upper()}_{key.upper()}"] = "null" if value is None else value
    if cpu:
        from custom_modules.forgery.vit import lora_target_regex, lora_targets

        key = "lora_target" if in_block else "target_regex"
        targets = str(config.get(key, ""))
        if "blocks" in targets:  # ViT blocks of the forgery modes (a regex in ms-swift), renumbered
            names = lora_targets("qwen2_5_vl", TINY_VIT_BLOCKS, "q_proj" in targets)
            config[key] = ",".join(names) if in_block else lora_target_regex(names)


def seed_loop_config(source: dict) -> dict:
    """A seed loop's settings; a loop that names a `recipe` takes the family's own settings from it (the
    `qwenvl_recipes` block without its speed-ups, which the seeds' loops never had, the LoRA rank, alpha and
    targets)."""
    config = {k: v for k, v in source.items() if k != "recipe"}
    if "recipe" in source:
        recipe = yaml.safe_load((REPO_ROOT / source["recipe"]).read_text())
        config.update({k: recipe[k] for k in (CUSTOM_KEY, "lora_rank", "lora_alpha", "lora_dropout", "lora_target")
                       if k in recipe})
        if CUSTOM_KEY in config:
            config[CUSTOM_KEY] = {k: v for k, v in config[CUSTOM_KEY].items() if k != "speedups"}
    return config


def trainer_config(bench: Bench, name: str, overrides: dict, ckpt: Path, data: Path, work: Path, warmup: int,
                   steps: int, cpu: bool, profile: int = 0) -> tuple[dict, int, int]:
    """The config of one variant, pointed at the random checkpoint and benchmark data, its number of warm-up
    micro-steps and the micro-step that ends the measured window (micro_steps)."""
    variant = bench.variants[name]
    family = FAMILY_OF_MODEL[bench.model]
    trainer = variant.trainer
    if trainer == "transformers":
        config = seed_loop_config(variant.source)
    elif isinstance(variant.source, dict):
        config = dict(variant.source)
        if trainer == "llamafactory":
            config["template"] = LF_TEMPLATE[family]
    else:
        config = yaml.safe_load((REPO_ROOT / variant.source).read_text())
        if variant.kind == "trainer_tuned":
            config = without_our_features(config)
            if trainer == "ms-swift":  # the model type and template of the family, not our plugin's
                config.update(model_type=family, template=family)
    for key, value in {**variant.overrides, **overrides}.items():
        set_key(config, key, value)
    bench_inputs(config, trainer, work, cpu)
    accum = int(config.get("gradient_accumulation_steps", 1))
    warm, window, max_steps = micro_steps(warmup, steps, accum, profile)
    out = str(work / "out" / name)
    # Bench-only settings outside the measured window: no saving, no per-step logging sync, and a preprocessing
    # pool of the host's cores (LLaMA-Factory reads and sizes every COCO-sized image while it tokenizes: a
    # 200-step run's 3,280 rows took over three minutes on 4 processes).
    common = dict(output_dir=out, max_steps=max_steps, logging_steps=max_steps, save_strategy="no",
                  report_to="none")
    workers = min(16, os.cpu_count() or 1)
    if cpu and config.get("dataloader_num_workers", 0) > 2:  # the pipeline, not speed, on a few shared cores
        config["dataloader_num_workers"] = 2
    if trainer == "transformers":  # the images the recipes see: the processor at their pixel limits
        config.update(max_steps=max_steps, min_pixels=bench.pixels[0], max_pixels=bench.pixels[1])
    elif trainer == "llamafactory":
        config.update(common, model_name_or_path=str(ckpt), dataset_dir=str(data), dataset="bench_train",
                      overwrite_output_dir=True, plot_loss=False, overwrite_cache=True,
                      preprocessing_num_workers=workers)
        if cpu:
            config.update(bf16=False, enable_liger_kernel=False, use_liger_kernel=False)
    elif trainer == "ms-swift":
        config.update(common, model=str(ckpt), model_type=config.get("model_type", family),
                      template=config.get("template", family), check_model=False,
                      dataset=[str(data / "bench_train.jsonl")], add_version=False, split_dataset_ratio=0.0,
                      dataset_num_proc=workers)
        if cpu:
            config.update(torch_dtype="float32", use_liger_kernel=False)
    else:  # unsloth: its loader, adapter, collator and trl's SFTConfig (worker.unsloth_calls)
        config.update(common, model=str(ckpt), dataset=str(data / "bench_train.json"), min_pixels=bench.pixels[0],
                      max_pixels=bench.pixels[1], bf16=not cpu)
    return config, warm, window


def batch_size(config: dict) -> int:
    return int(config["per_device_train_batch_size"])


def rows_needed(bench: Bench, variants: list[str], args) -> int:
    """Benchmark rows for one epoch to hold every variant's micro-steps: a trainer starting a new epoch inside the
    window restarts its loader (each worker collates a first batch while the GPU waits), which real datasets of
    thousands of samples do rarely."""
    rows = 128
    for spec in variants:
        name, overrides = parse_variant(spec, bench)
        config, _, _ = trainer_config(bench, name, overrides, Path("ckpt"), Path("data"), Path("work"), args.warmup,
                                      args.steps, args.cpu, args.profile)
        rows = max(rows, batch_size(config) * int(config.get("gradient_accumulation_steps", 1)) * config["max_steps"])
    return rows


def data_label(bench: Bench, shape: str) -> str:
    """What the figures of a run were measured on, as the records and tables say it."""
    from tools.bench_data import DATA_LABELS, IDEAL

    if shape == "ideal":
        side = IDEAL[bench.task]["side"]
        return f"ideal {side}x{side}, fixed text"
    if bench.task in DATA_LABELS:
        return DATA_LABELS[bench.task]
    resized = f", resized {bench.resize}x{bench.resize}" if bench.resize else ""
    return f"coco{resized}, {bench.task} text"
