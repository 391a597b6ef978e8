"""Every recipe under recipes/ (found recursively) is accepted by its trainer's own argument parser, carries
its header, follows the naming scheme, and agrees with the converters on image resolution."""
from __future__ import annotations

import importlib
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest

from converters.boxes import default_pixels
from converters.registry import TASK_NAMES
from tests.recipes.recipe_cases import RECIPES, recipe_id, run_parse_worker
from tools.recipes_table import (HEADER_KEYS, METHODS, MODELS, README, TRAINERS, discover,
                                 render_readme)
from tools.trainers import CPU_OVERRIDES, gpu_only_overrides


TYPO = "#with-typo"  # parse_results key of the seed recipe with a misspelt key
SETTING_TYPO = "#with-setting-typo"  # ... of a swift forgery recipe with a misspelt setting of ours (ENV QVR_*)


def parse_item(recipe, tiny_model_dir, tmp_path) -> dict:
    """The recipe as its trainer would see it on this CPU machine with the matching tiny model."""
    config = dict(recipe.config)
    config.update(gpu_only_overrides(config))
    tiny = str(tiny_model_dir(recipe.family))
    kind = "export" if recipe.is_export else "train"
    if recipe.trainer == "llamafactory":
        config["model_name_or_path"] = tiny
        if recipe.is_export:
            config["export_dir"] = str(tmp_path / "export" / recipe_id(recipe))
        else:
            config.update(CPU_OVERRIDES["llamafactory"], output_dir=str(tmp_path / "out" / recipe_id(recipe)))
        return {"path": recipe.rel, "kind": kind, "config": config}
    overrides = ["--output_dir", str(tmp_path / "out" / recipe_id(recipe))]
    if recipe.is_export:
        # the adapter does not exist yet: parse against the tiny base model named explicitly
        adapters = tmp_path / "adapters" / recipe_id(recipe)
        adapters.mkdir(parents=True, exist_ok=True)
        (adapters / "adapter_config.json").write_text('{"peft_type": "LORA"}')  # what swift checks for
        config["adapters"] = [str(adapters)]
        overrides += ["--model", tiny, "--model_type", recipe.family, "--template", recipe.family]
    else:
        config["model"] = tiny
        overrides += ["--torch_dtype", CPU_OVERRIDES["swift"]["torch_dtype"], "--check_model", "false"]
    return {"path": recipe.rel, "kind": kind, "config": config, "overrides": overrides}


@pytest.fixture(scope="module")
def parse_results(tiny_model_dir, lf_bin, swift_bin, tmp_path_factory):
    """{recipe path: None | parser error}, one worker process per trainer for all of its recipes."""
    bins = {"llamafactory": lf_bin, "swift": swift_bin}
    items = {}
    for trainer in TRAINERS:
        tmp_path = tmp_path_factory.mktemp(f"parse-{trainer}")
        items[trainer] = [parse_item(r, tiny_model_dir, tmp_path) for r in RECIPES if r.trainer == trainer]
        typo = parse_item(_get(trainer, "caption", "qwen2_vl_2b_lora"), tiny_model_dir, tmp_path)
        typo["config"]["lora_rnak"] = 8
        items[trainer].append({**typo, "path": typo["path"] + TYPO})
    forgery = parse_item(_get("swift", "forgery", "qwen2_5_vl_7b_t3_hybrid"), tiny_model_dir, tmp_path)
    forgery["config"]["ENV"] = {**forgery["config"]["ENV"], "QVR_FORGERY_HEAD_BLOCK": [0, 1]}
    items["swift"].append({**forgery, "path": forgery["path"] + SETTING_TYPO})
    with ThreadPoolExecutor(max_workers=len(TRAINERS)) as pool:  # the two workers overlap well on 2 cores
        parsed = [pool.submit(run_parse_worker, t, bins[t], items[t]) for t in TRAINERS]
        return {path: error for future in parsed for path, error in future.result().items()}


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_trainer_parser_accepts_recipe(recipe, parse_results):
    assert parse_results[recipe.rel] is None, f"{recipe.rel}: {parse_results[recipe.rel]}"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.custom is not None], ids=recipe_id)
def test_custom_block_is_valid(recipe):
    assert isinstance(recipe.custom, dict) and recipe.custom, f"{recipe.rel}: qwenvl_recipes must be a non-empty dict"
    for feature, settings in recipe.custom.items():
        assert isinstance(settings, dict), f"{recipe.rel}: qwenvl_recipes.{feature} must be a dict"
        try:
            module = importlib.import_module(f"custom_modules.{feature}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "validate_config"):
            module.validate_config(settings)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_parser_rejects_unknown_key(trainer, parse_results):
    """The parse check has teeth: the seed recipe with a misspelt key fails in the trainer's parser."""
    error = parse_results[_get(trainer, "caption", "qwen2_vl_2b_lora").rel + TYPO]
    assert error is not None and "lora_rnak" in error, error


def test_swift_plugin_rejects_unknown_setting(parse_results):
    """Our plugin, imported by swift's own parser from the recipe's external_plugins, checks the ENV settings."""
    error = parse_results[_get("swift", "forgery", "qwen2_5_vl_7b_t3_hybrid").rel + SETTING_TYPO]
    assert error is not None and "ENV QVR_FORGERY_HEAD_BLOCK is not a forgery setting" in error, error
    assert "QVR_FORGERY_HEAD_BLOCKS" in error  # the known names are listed


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_header_block(recipe):
    missing = [key for key in HEADER_KEYS if not recipe.header.get(key)]
    assert not missing, f"{recipe.rel}: header lacks {missing} (each recipe starts with '# Key: value' lines)"
    run = recipe.header["Run"]
    assert recipe.rel in run, f"{recipe.rel}: the Run line does not name the recipe itself: {run}"
    words = shlex.split(run.replace("<", "").replace(">", ""))
    commands = [w for w in words if "=" not in w][:2]  # after any VAR=value prefix
    assert commands in (["llamafactory-cli", "train"], ["llamafactory-cli", "export"], ["qvr-llamafactory", "train"],
                        ["swift", "sft"], ["swift", "export"]), f"{recipe.rel}: not a trainer's command: {run}"
    # LLaMA-Factory rejects our block: a recipe with it runs with qvr-llamafactory, and only one with it does
    assert (commands[0] == "qvr-llamafactory") == (recipe.trainer == "llamafactory" and recipe.custom is not None), run
    if "swift" in words:
        # ms-swift 4.6 reads a YAML only as the first argument after the subcommand; `--config` is not a flag
        assert "--config" not in words, \
            f"{recipe.rel}: `swift <cmd> --config` does not read the file; use `swift <cmd> {recipe.rel}`"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.custom is None], ids=recipe_id)
def test_name_follows_layout(recipe):
    assert recipe.trainer in TRAINERS
    assert recipe.model in MODELS, f"{recipe.rel}: file name must start with one of {sorted(MODELS)}"
    assert recipe.method in METHODS, f"{recipe.rel}: method must be one of {METHODS}"
    ds = recipe.config.get("deepspeed")
    if ds:
        assert ds.startswith("recipes/_deepspeed/") and (README.parent / ds.removeprefix("recipes/")).is_file(), ds
        assert recipe.variant.startswith(ds.removeprefix("recipes/_deepspeed/").removesuffix(".json")), \
            f"{recipe.rel}: multi-GPU variants are named after their DeepSpeed config ({ds})"


def test_every_task_has_a_recipe_per_trainer():
    have = {(r.task, r.trainer) for r in RECIPES}
    assert {(t, tr) for t in TASK_NAMES for tr in TRAINERS} <= have


def _converter_pixels(recipe) -> tuple[int, int]:
    """(min, max) pixels the recipe's own Data command gives the converter (its defaults when not given)."""
    words = shlex.split(recipe.header["Data"].replace("<", "").replace(">", ""))
    low, high = default_pixels(recipe.family)
    for flag, i in (("--min-pixels", 0), ("--max-pixels", 1)):
        if flag in words:
            value = int(words[words.index(flag) + 1])
            low, high = (value, high) if i == 0 else (low, value)
    return low, high


def _recipe_pixels(recipe) -> tuple[int | None, int | None]:
    config = recipe.config
    if recipe.trainer == "llamafactory":
        return config.get("image_min_pixels"), config.get("image_max_pixels")
    env = config.get("ENV") or {}
    return env.get("MIN_PIXELS"), env.get("MAX_PIXELS")


GROUNDING = [r for r in RECIPES if re.search(r"python -m converters refcoco\b", r.header.get("Data", ""))]


@pytest.mark.parametrize("recipe", GROUNDING, ids=recipe_id)
def test_grounding_resolution_matches_converter(recipe):
    """Qwen2.5-VL boxes are pixels of the resized image: the converter's resize must be the trainer's."""
    low, high = _converter_pixels(recipe)
    if recipe.trainer == "swift" and recipe.family == "qwen2_5_vl":
        # the converter models qwen-vl-utils' smart_resize under MAX_PIXELS/MIN_PIXELS; swift's `max_pixels`
        # argument rescales the image once more before that, which the converter does not model
        assert "max_pixels" not in recipe.config, f"{recipe.rel}: set ENV MAX_PIXELS/MIN_PIXELS, not max_pixels"
    recipe_low, recipe_high = _recipe_pixels(recipe)
    assert recipe_high == high, f"{recipe.rel}: max pixels {recipe_high} != converter's {high}"
    if recipe.family == "qwen2_5_vl":
        assert recipe_low == low, f"{recipe.rel}: min pixels {recipe_low} != converter's {low}"


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.task == "grounding"], ids=recipe_id)
def test_grounding_recipe_trains_on_the_split_its_data_line_writes(recipe):
    """The refer layout converts to <name>_train, which the recipe trains on; a Hugging Face copy holds val/test
    only (LLaMA-Factory: `Undefined dataset <name>_train`), and the dataset line names the override for it, the
    one the converter's note gives."""
    words = shlex.split(recipe.header["Data"].replace("<", "").replace(">", ""))
    name, out = words[words.index("--name") + 1], words[words.index("--out") + 1]
    line = next(line for line in recipe.path.read_text(encoding="utf-8").splitlines() if line.startswith("dataset:"))
    if recipe.trainer == "llamafactory":
        assert (recipe.config["dataset_dir"], recipe.config["dataset"]) == (out, f"{name}_train")
        assert f"dataset={name}_val" in line, recipe.rel
    else:
        assert recipe.config["dataset"] == f"{out}/{name}_train.jsonl"
        assert f"--dataset {out}/{name}_val.jsonl" in line, recipe.rel


def test_grounding_recipes_use_the_converter_defaults():
    seeds = [r for r in RECIPES if r.task == "grounding"]
    assert seeds
    for recipe in seeds:
        assert _recipe_pixels(recipe) == default_pixels(recipe.family), recipe.rel


# ms-swift's perf recipes for images of COCO's size mix (not resized to one size by the converter)
SWIFT_PERF_VARIABLE_IMAGES = [r for r in RECIPES if r.task == "perf" and r.trainer == "swift"
                              and "--resize" not in r.header.get("Data", "")]


@pytest.mark.parametrize("recipe", SWIFT_PERF_VARIABLE_IMAGES, ids=recipe_id)
def test_swift_perf_recipes_grow_segments_for_variable_image_sizes(recipe):
    """Over variable image sizes the default caching allocator reserves far more than the live peak (88.2 GiB for
    54.9 on COCO-shaped data); the recipe sets the allocator qvr-llamafactory sets for LLaMA-Factory's."""
    from custom_modules.integrations.llamafactory_cli import EXPANDABLE_SEGMENTS

    env = recipe.config.get("ENV") or {}
    assert env.get("PYTORCH_CUDA_ALLOC_CONF") == EXPANDABLE_SEGMENTS, recipe.rel


def _get(trainer: str, task: str, name: str):
    matches = [r for r in RECIPES if r.trainer == trainer and r.task == task and r.path.stem == name]
    assert matches, f"missing recipes/{task}/{trainer}/{name}.yaml"
    return matches[0]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_seed_caption_recipe(trainer):
    c = _get(trainer, "caption", "qwen2_vl_2b_lora").config
    assert (c["lora_rank"], c["lora_alpha"], c["lora_dropout"]) == (64, 16, 0.05)
    targets = c["lora_target"].split(",") if trainer == "llamafactory" else c["target_modules"]
    assert sorted(targets) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert (c["per_device_train_batch_size"], c["gradient_accumulation_steps"]) == (2, 2)
    assert (c["num_train_epochs"], c["learning_rate"], c["gradient_checkpointing"]) == (2, 1e-4, True)
    if trainer == "llamafactory":
        assert c["model_name_or_path"] == "Qwen/Qwen2-VL-2B-Instruct"
        assert (c["image_max_pixels"], c["bf16"]) == (280 * 280, True)
        assert (c["dataset_dir"], c["dataset"]) == ("data/coco_caption", "coco_caption_train")
    else:
        assert c["model"] == "Qwen/Qwen2-VL-2B-Instruct"
        assert (c["ENV"]["MAX_PIXELS"], c["torch_dtype"]) == (280 * 280, "bfloat16")
        assert c["dataset"] == "data/coco_caption/coco_caption_train.jsonl"
    assert c["output_dir"].startswith("outputs/")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_seed_grounding_and_microscopy_recipes(trainer):
    assert _get(trainer, "grounding", "qwen2_5_vl_7b_lora").config["lora_rank"] > 0
    for name in ("qwen3_vl_2b_lora", "qwen3_vl_2b_lora_vit", "qwen3_vl_8b_lora_zero2", "qwen3_vl_8b_lora_vit_zero2"):
        c = _get(trainer, "microscopy", name).config
        assert (c["lora_rank"], c["learning_rate"], c["num_train_epochs"]) == (64, 2e-4, 3), name


# What a fast recipe may change against the recipe it speeds up: how a step is computed, never what is learned.
SPEED_KEYS = {"per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
              "disable_gradient_checkpointing", "use_liger_kernel", "flash_attn", "attn_impl", "trust_remote_code",
              "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_pin_memory",
              "preprocessing_num_workers", "dataset_num_proc", "logging_nan_inf_filter", "output_dir", "callbacks",
              "qwenvl_recipes"}
SPEED_ENV = {"QVR_SPEEDUPS_COMPILE_VISION", "PYTORCH_CUDA_ALLOC_CONF"}


# task -> (the committed recipe, its fast twin)
FAST_TWINS = {"microscopy": ("qwen3_vl_2b_lora", "qwen3_vl_2b_lora_fast"),
              "report": ("qwen3_vl_4b_raddino_stage2", "qwen3_vl_4b_raddino_stage2_fast")}


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("task", FAST_TWINS)
def test_fast_recipe_learns_what_the_committed_one_learns(trainer, task):
    base, fast = (_get(trainer, task, name).config for name in FAST_TWINS[task])
    changed = {k for k in base.keys() | fast.keys() if k != "ENV" and base.get(k) != fast.get(k)}
    assert changed <= SPEED_KEYS, changed - SPEED_KEYS
    # the speed-ups are all a fast recipe may add to our block and callbacks; the rest stays as committed
    assert {k: v for k, v in fast.get("qwenvl_recipes", {}).items() if k != "speedups"} == base.get("qwenvl_recipes",
                                                                                                     {})
    assert [c for c in fast.get("callbacks", []) if c != "speedups"] == base.get("callbacks", [])
    base_env, fast_env = base.get("ENV", {}), fast.get("ENV", {})
    assert {k for k in base_env.keys() | fast_env.keys() if base_env.get(k) != fast_env.get(k)} <= SPEED_ENV
    effective = [c["per_device_train_batch_size"] * c["gradient_accumulation_steps"] for c in (base, fast)]
    assert effective == [16, 16]
    assert not fast.get("gradient_checkpointing", False) and fast.get("use_liger_kernel")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_seed_merger_recipes(trainer):
    for name in ("qwen3_vl_4b_merger", "qwen3_vl_8b_merger_zero2"):
        recipe = _get(trainer, "forgery", name)
        c = recipe.config
        assert (c["lora_rank"], c["lora_alpha"]) == (8, 16), name
        assert _recipe_pixels(recipe) == default_pixels("qwen3_vl"), name
        if trainer == "llamafactory":
            assert c["additional_target"] == "merger"
        else:
            assert c["modules_to_save"] == ["merger"] and c["aligner_lr"] < c["learning_rate"]


def test_readme_table_is_current():
    current = README.read_text(encoding="utf-8") if README.exists() else None
    assert render_readme(discover(), current) == current, \
        "recipes/README.md is stale: run python -m tools.recipes_table"


# ms-swift matches named target_modules anywhere in the model, frozen ViT included (freeze_vit only decides what
# `all-linear` covers): Qwen2.5-VL's vision MLP has gate/up/down_proj like the LM.
SWIFT_NAMED_LM_TARGETS = [r for r in RECIPES if r.trainer == "swift" and r.config.get("freeze_vit", True)
                          and r.config.get("target_modules") and "all-linear" not in r.config["target_modules"]]


@pytest.mark.parametrize("recipe", SWIFT_NAMED_LM_TARGETS, ids=recipe_id)
def test_swift_named_lora_targets_miss_the_frozen_vision_tower(recipe, tiny_model_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(recipe.family))
    vision_linears = {name.rsplit(".", 1)[-1] for name, m in model.model.visual.named_modules()
                      if isinstance(m, torch.nn.Linear)}
    assert not vision_linears & set(recipe.config["target_modules"]), \
        f"{recipe.path}: target_modules would put LoRA on the frozen vision tower; use [all-linear]"
