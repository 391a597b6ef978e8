"""Every recipe with our features (forgery, vision encoder, speedups) trains by its header's Run line, word for
word, from a directory outside the repository, on the tiny models: `qvr-llamafactory train <recipe>` and
`swift sft <recipe>`, found on PATH (the trainer's environment, where `make install` installed the project).

Only what a one-step CPU run on the tiny models needs is added: the tiny model, the converted data, one logged
step without warm-up, float32 and no GPU kernels (bf16, Liger, torch.compile), the tiny ViT's block indexes (2
blocks, where the 7B has 32) and the tiny encoder. LLaMA-Factory runs get dataset_dir / output_dir overrides, so
their paths (eval_file, head_checkpoint, merger_path) must follow those; ms-swift runs start in a directory laid
out as the recipes expect (data/<name>/, outputs/ written there), so their own relative paths are used unchanged,
and swift is given the installed plugin file, since it resolves external_plugins against the working directory.
The hybrid forgery recipe runs on two processes in both trainers (torchrun, gloo on CPU). Runs that need an
earlier stage (T4/T5 the head pretraining, stage 2 stage 1) start it first.
"""
from __future__ import annotations

import json
import math
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from custom_modules.forgery.vit import lora_target_regex, lora_targets
from tests.recipes.recipe_cases import RECIPES, recipe_id, run_plan_worker
from tools import synthetic_data
from tools.checkpoint_size import checkpoint_bytes, recipe_settings
from tools.model_configs import tiny_config
from tools.tiny_dinov2 import ensure_tiny_dinov2
from tools.trainers import REPO_ROOT, gpu_only_overrides, loss_history, run_logged, trainer_env, venv_bin

CUSTOM = [r for r in RECIPES if r.custom is not None]
TINY_BLOCKS = (0, 1)  # the tiny Qwen2.5-VL ViT's blocks, for the 7B recipes' 7/15/23/31
TWO_PROCESSES = "qwen2_5_vl_7b_t3_hybrid"
MASTER_PORTS = {"llamafactory": "29591", "swift": "29592"}
# recipe data folder name -> (tools.synthetic_data maker, converter subcommand, converter arguments)
DATA = {
    "forgery": (synthetic_data.make_forgery, "forgery", []),
    "report": (synthetic_data.make_coco_caption, "coco-caption", ["--name", "report", "--split", "train"]),
    "refcoco": (synthetic_data.make_refcoco, "refcoco", ["--name", "refcoco", "--max-pixels", "200704"]),
    "microscopy": (synthetic_data.make_microscopy, "microscopy", []),
}


# The seed's custom encoder set-up on the stage 2 recipes: the one-Linear merger over the CLS token and the patches, the
# whole encoder trained at its own learning rate, from a fresh merger (no stage 1). variant -> trainer -> what a user
# adds: our settings and the trainer's own keys.
ENCODER_LR = 1e-3
SEED_ENCODER = {"merger": "linear", "prefix_tokens": 0, "encoder_training": "full", "merger_path": None}
VARIANTS = {"seed_encoder": {
    "llamafactory": {"settings": {"vision_encoder": {**SEED_ENCODER, "encoder_lr": ENCODER_LR}},
                     "overrides": {"additional_target": "merger,visual.encoder"}},
    "swift": {"settings": {"vision_encoder": SEED_ENCODER},
              "overrides": {"modules_to_save": ["merger", "visual.encoder"], "vit_lr": ENCODER_LR}},
}}
VARIANT_RECIPES = {"seed_encoder": "qwen3_vl_4b_raddino_stage2"}


def data_name(recipe) -> str:
    """The recipe's data folder: data/<name>/ in its dataset_dir (LLaMA-Factory) or dataset path (ms-swift)."""
    config = recipe.config
    return Path(config["dataset_dir"] if recipe.trainer == "llamafactory" else config["dataset"]).parts[1]


def previous_stage(recipe) -> str | None:
    """The recipe whose output this one reads: T4/T5 the pretrained head, stage 2 stage 1's merger."""
    stem = recipe.path.stem
    if "_t4_" in stem or "_t5_" in stem:
        return "qwen2_5_vl_7b_head_pretrain"
    model, stage2, _ = stem.partition("_stage2")  # stage 2 and its fast twin read the same stage 1
    return f"{model}_stage1" if stage2 else None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(converted data: (name, family) -> dir, the tiny encoder, the installed swift plugin file), made with the
    installed console scripts from outside the repository."""
    root = tmp_path_factory.mktemp("run-lines")
    made = {}

    def data(name: str, family: str) -> Path:
        if (name, family) not in made:
            maker, command, extra = DATA[name]
            source = maker(root / "source" / f"{name}-{family}", n=8, seed=3)
            if name == "report":
                source = source / "captions_train2014.json"
            out = root / "data" / family / name
            subprocess.run([venv_bin("llamafactory") / "qvr-convert", command, "--input", str(source),
                            "--out", str(out), "--model", family, *extra],
                           cwd=root, env=trainer_env("llamafactory"), check=True, capture_output=True)
            made[name, family] = out
        return made[name, family]

    plugin = subprocess.run([venv_bin("swift") / "python", "-m", "custom_modules.integrations.swift_plugin"],
                            cwd=root, env=trainer_env("swift"), check=True, capture_output=True, text=True)
    return root, data, ensure_tiny_dinov2(REPO_ROOT / ".cache" / "tiny-dinov2"), plugin.stdout.strip()


def tiny_lora(recipe) -> tuple[str, object] | None:
    """The recipe's LoRA targets on the tiny model (its ViT blocks renumbered), when they name ViT blocks."""
    key = "lora_target" if recipe.trainer == "llamafactory" else "target_regex"
    targets = str(recipe.config.get(key, ""))
    if "blocks" not in targets:
        return None
    lm = "q_proj" in targets
    names = lora_targets("qwen2_5_vl", TINY_BLOCKS, lm)
    return key, ",".join(names) if recipe.trainer == "llamafactory" else lora_target_regex(names)


def word(value) -> str:
    """A setting or override as the command line / an ENV variable carries it: YAML (lists, null, true/false)."""
    return json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)


def run_line(recipe, tiny: Path, data_dir: Path, encoder: Path, output_dir: Path | None, plugin: str,
             variant: dict | None = None):
    """(argv, extra environment) of the recipe's Run line plus the tiny-run overrides; `variant`: more settings
    ({"settings": {feature: {key: value}}, "overrides": {key: value}}), as a user would add them."""
    words = shlex.split(recipe.header["Run"])
    words[words.index(recipe.rel)] = str(recipe.path)  # the run starts outside the repository
    custom, config, variant = recipe.custom, recipe.config, variant or {}
    settings = {}  # feature -> {key: value}
    if "head_blocks" in custom.get("forgery", {}):
        settings.setdefault("forgery", {})["head_blocks"] = list(TINY_BLOCKS)
    if "vision_encoder" in custom:
        settings["vision_encoder"] = {"encoder_path": str(encoder)}
    if custom.get("speedups", {}).get("compile_vision"):
        settings["speedups"] = {"compile_vision": False}  # minutes of CPU compilation for a one-step run
    for feature, values in variant.get("settings", {}).items():
        settings.setdefault(feature, {}).update(values)
    # one step, logged, without warm-up (a warm-up step has learning rate 0)
    overrides = {"max_steps": 1, "logging_steps": 1, "warmup_ratio": 0, **gpu_only_overrides(config)}
    if lora := tiny_lora(recipe):
        overrides[lora[0]] = lora[1]
    overrides.update(variant.get("overrides", {}))
    env = {}
    if recipe.trainer == "llamafactory":
        overrides.update(model_name_or_path=tiny, dataset_dir=data_dir, output_dir=output_dir, bf16=False)
        overrides.update({f"qwenvl_recipes.{feature}.{key}": value
                          for feature, values in settings.items() for key, value in values.items()})
        words += [f"{key}={word(value)}" for key, value in overrides.items()]
        if recipe.path.stem == TWO_PROCESSES:
            env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": MASTER_PORTS["llamafactory"]}
    else:
        overrides.update(model=tiny, torch_dtype="float32", check_model=False, external_plugins=plugin)
        words += [part for key, value in overrides.items() for part in
                  (f"--{key}", *([str(v) for v in value] if isinstance(value, list) else [word(value)]))]
        env = {f"QVR_{feature.upper()}_{key.upper()}": word(value)
               for feature, values in settings.items() for key, value in values.items()}
        if recipe.path.stem == TWO_PROCESSES:
            env.update(NPROC_PER_NODE="2", MASTER_PORT=MASTER_PORTS["swift"])
    return words, env


def earlier_stage(recipe):
    """The recipe of previous_stage(recipe), same trainer and task, or None."""
    stage = previous_stage(recipe)
    return stage and next(r for r in CUSTOM if (r.trainer, r.task, r.path.stem) == (recipe.trainer, recipe.task, stage))


def needed(request) -> list:
    """The recipes the selected tests of this module train, each after the earlier stage it reads."""
    chosen = []
    for item in request.session.items:
        params = getattr(item, "callspec", None) and item.callspec.params
        if item.module is not request.module or not params or "trained" not in item.fixturenames:
            continue
        chosen.append(params["recipe"] if "recipe" in params else
                      next(r for r in CUSTOM if r.trainer == params["trainer"] and r.path.stem == TWO_PROCESSES))
    ordered = []

    def add(recipe):
        if earlier := earlier_stage(recipe):
            add(earlier)
        if recipe not in ordered:
            ordered.append(recipe)
    for recipe in chosen:
        add(recipe)
    return ordered


# Two runs at a time: a one-step run is mostly the trainer's start-up (imports, model and data loading) on one
# core, so two lanes finish the module in a little over half the time on two cores.
LANES = 2


def prepare_run(workspace, tiny_model_dir, recipe, variant: str | None = None):
    """(argv, extra environment, working directory, log, output dir) of the recipe's run (a VARIANTS entry with
    `variant`); its data and folders made."""
    root, data, encoder, plugin = workspace
    data_dir = data(data_name(recipe), recipe.family)
    name = recipe.path.stem + (f"-{variant}" if variant else "")
    extra = VARIANTS[variant][recipe.trainer] if variant else {}
    if recipe.trainer == "llamafactory":
        cwd, output_dir = root / "llamafactory", root / "llamafactory-out" / name
    else:  # a directory laid out as the recipe expects: data/<name>/ here, outputs/ written here
        cwd = root / f"swift-{recipe.family}"
        (cwd / "data").mkdir(parents=True, exist_ok=True)
        if not (cwd / "data" / data_dir.name).exists():
            (cwd / "data" / data_dir.name).symlink_to(data_dir)
        output_dir = cwd / recipe.config["output_dir"]
        if variant:
            output_dir = output_dir.with_name(name)
            extra = {**extra, "overrides": {**extra.get("overrides", {}), "output_dir": output_dir}}
    cwd.mkdir(parents=True, exist_ok=True)
    words, env = run_line(recipe, tiny_model_dir(recipe.family), data_dir, encoder,
                          output_dir if recipe.trainer == "llamafactory" else None, plugin, extra)
    log = root / "logs" / f"{recipe_id(recipe).replace('/', '_')}{f'-{variant}' if variant else ''}.log"
    return words, env, cwd, log, output_dir


@pytest.fixture(scope="module")
def trained(request, workspace, tiny_model_dir):
    """trained(recipe) -> its output dir. Every Run line the selected tests need runs once, in LANES lanes, each
    after the run of the earlier stage it reads; a run that failed fails every test that needs it."""
    runs, outputs = {}, {}

    def plan(recipe):
        """(argv, environment, working directory, log) of the recipe's run; its data and folders made."""
        words, env, cwd, log, outputs[recipe.rel] = prepare_run(workspace, tiny_model_dir, recipe)
        return words, trainer_env(recipe.trainer, **env), cwd, log

    def run(recipe, words, env, cwd, log, before):
        if before is not None:
            before.result()  # the earlier stage's output is this run's input; its failure is this one's
        run_logged(words, log, env=env, cwd=cwd, timeout=900)

    recipes = needed(request)
    plans = {recipe.rel: plan(recipe) for recipe in recipes}  # sequential: conversions and folders are shared
    pool = ThreadPoolExecutor(max_workers=LANES)
    for recipe in recipes:  # earlier stages first: a lane that waits for one never waits for a run not yet started
        earlier = earlier_stage(recipe)
        runs[recipe.rel] = pool.submit(run, recipe, *plans[recipe.rel], earlier and runs[earlier.rel])

    def train(recipe) -> Path:
        runs[recipe.rel].result()
        return outputs[recipe.rel]
    yield train
    pool.shutdown(cancel_futures=True)


def saved(recipe, out: Path) -> Path:
    """Where the final weights are: LLaMA-Factory's output_dir, swift's last checkpoint (adapters, head)."""
    return out if recipe.trainer == "llamafactory" else out / "checkpoint-1"


@pytest.mark.parametrize("recipe", CUSTOM, ids=recipe_id)
def test_run_line_trains_the_recipe(recipe, trained, workspace):
    root = workspace[0]
    out = trained(recipe)
    losses = [loss for _, loss in loss_history(recipe.trainer, out)]
    assert len(losses) == 1 and math.isfinite(losses[0])
    log = (root / "logs" / f"{recipe_id(recipe).replace('/', '_')}.log").read_text(encoding="utf-8")
    if "forgery" in recipe.custom:
        assert (out / "forgery_head.safetensors").is_file() and (out / "forgery_settings.json").is_file()
        # eval_file followed the data: the converter's val split (one real, one fake) was scored
        evals = [json.loads(line) for line in (out / "forgery_eval.jsonl").read_text().splitlines()]
        assert evals[-1]["n"] == 2 and evals[-1]["auroc"] is not None
        assert (out / "best_by_AUROC" / "forgery_head.safetensors").is_file()
        # every saved head records the limits its trainer sized images into, which scoring then uses
        limits, low, high = ((recipe.config, "image_min_pixels", "image_max_pixels") if recipe.trainer == "llamafactory"
                             else (recipe.config["ENV"], "MIN_PIXELS", "MAX_PIXELS"))
        for folder in {out, out / "best_by_AUROC", saved(recipe, out)}:
            recorded = json.loads((folder / "forgery_settings.json").read_text())["training_images"]
            assert recorded == {"resize": recipe.trainer, "min_pixels": limits[low], "max_pixels": limits[high]}, folder
        if recipe.custom["forgery"]["mode"] in ("frozen_head", "frozen_head_hybrid"):
            # the head came from the previous stage, frozen: it is saved exactly as loaded
            pretrained = out.parent / "qwen2_5_vl_7b_head_pretrain" / "best_by_AUROC" / "forgery_head.safetensors"
            head, loaded = load_file(out / "forgery_head.safetensors"), load_file(pretrained)
            assert [k for k in loaded if k.startswith("head.")]
            assert all(torch.equal(head[k], loaded[k]) for k in loaded if k.startswith("head."))
    weights = saved(recipe, out) / "model.safetensors"
    if recipe.custom.get("forgery", {}).get("mode") == "head_pretrain":
        # the base is frozen: the trainer's save holds the head alone, the size tools.checkpoint_size computes
        head = load_file(weights)
        assert head and not [name for name in head if not name.startswith("forgery.head.")]
        settings = replace(recipe_settings(recipe.path), head_blocks=TINY_BLOCKS)
        expected = checkpoint_bytes(tiny_config(recipe.family), settings)["trained_bytes"]
        assert sum(t.numel() * t.element_size() for t in head.values()) == expected
    if recipe.custom.get("vision_encoder", {}).get("stage") == 1 and weights.is_file():  # swift's saves nothing
        assert not [name for name in load_file(weights) if "visual.merger." not in name]
    if "vision_encoder" in recipe.custom:
        merger = load_file(out / "vision_encoder" / "merger.safetensors")
        if recipe.custom["vision_encoder"]["stage"] == 2:  # started from stage 1's merger, then trained
            stage1 = load_file(out.parent / previous_stage(recipe) / "vision_encoder" / "merger.safetensors")
            assert merger.keys() == stage1.keys()
            # one optimizer step away from stage 1's weights (a fresh merger would differ everywhere by far more)
            step = (merger["proj.2.weight"] - stage1["proj.2.weight"]).abs().max()
            assert 0 < step < 1e-2
            assert (saved(recipe, out) / "adapter_model.safetensors").is_file()
    if "speedups" in recipe.custom:
        assert "speedups applied" in log
    if recipe.path.stem == TWO_PROCESSES:
        assert "world_size: 2" in log if recipe.trainer == "swift" else "world size: 2" in log.lower(), log[-2000:]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_hybrid_checkpoint_loads_back_for_evaluation(trainer, trained, workspace, tiny_model_dir):
    """The hybrid's saved weights (adapters on ViT and LM, head, fusion) load back through the evaluation CLI."""
    root, data = workspace[:2]
    recipe = next(r for r in CUSTOM if r.trainer == trainer and r.path.stem == TWO_PROCESSES)
    out = trained(recipe)
    report = root / f"eval-{trainer}"
    subprocess.run([venv_bin("llamafactory") / "python", "-m", "custom_modules.forgery.evaluate",
                    "--model", tiny_model_dir("qwen2_5_vl"), "--checkpoint", saved(recipe, out),
                    "--data", data("forgery", "qwen2_5_vl") / "forgery_val.jsonl", "--out", report, "--device", "cpu"],
                   cwd=root, env=trainer_env("llamafactory"), check=True, capture_output=True)
    assert json.loads((report / "metrics.json").read_text())["n"] == 2
    assert len((report / "predictions.csv").read_text().splitlines()) == 3


ENCODER_RUNS = [r for r in CUSTOM if "vision_encoder" in r.custom and "_4b_" in r.path.stem]


@pytest.mark.parametrize("recipe", ENCODER_RUNS, ids=recipe_id)
def test_vision_encoder_output_is_scored_by_eval_run(recipe, trained, workspace, tiny_model_dir, tmp_path, monkeypatch):
    """`eval run --adapter <output_dir>` on a custom encoder run (stage 1: merger; stage 2: merger + LM LoRA) of
    either trainer loads it by custom_modules.vision_encoder's own loader and answers as that loaded model does."""
    from custom_modules.vision_encoder.training import load_trained
    from eval.__main__ import main as eval_main
    from eval.data import load_samples
    from eval.infer import TransformersGenerator, chat_messages

    data = workspace[1]
    out, model = trained(recipe), tiny_model_dir("qwen3_vl")
    checkpoint = out / "checkpoint-1" if recipe.trainer == "swift" and (out / "checkpoint-1").is_dir() else out
    generators = []
    original = TransformersGenerator.__init__
    monkeypatch.setattr(TransformersGenerator, "__init__",
                        lambda self, *a, **k: generators.append(self) or original(self, *a, **k))
    run = tmp_path / "run"
    assert eval_main(["run", "--task", "caption", "--model", str(model), "--adapter", str(out), "--data",
                      str(data("report", "qwen3_vl")), "--split", "train", "--out", str(run), "--limit", "2",
                      "--max-new-tokens", "4", "--no-java-metrics"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["adapter"] == str(checkpoint)
    assert "checkpoint/vision_encoder/merger.safetensors" in info["sha256"]
    assert ("checkpoint/adapter_model.safetensors" in info["sha256"]) == (recipe.custom["vision_encoder"]["stage"] == 2)

    expected, processor = load_trained(model, checkpoint)
    generator = generators[0]
    loaded = generator.model.state_dict()
    assert loaded.keys() == expected.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items())
    samples = {s.id: s for s in load_samples(Path(info["data_file"]), "caption")}
    for row in map(json.loads, (run / "predictions.jsonl").read_text().splitlines()):
        sample = samples[row["id"]]
        text = processor.apply_chat_template(chat_messages(sample.prompt), tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[generator.load_image(p) for p in sample.images], return_tensors="pt")
        with torch.inference_mode():
            answer = expected.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        answer = answer.tolist()
        cut = next((i for i, t in enumerate(answer) if t in generator.stop_ids), len(answer))
        assert row["prediction"] == processor.tokenizer.decode(answer[:cut], skip_special_tokens=False)


# What `swift infer` does with a checkpoint of ours, from a folder of its own with none of the recipe's settings in
# its environment: the plugin, the model type, the template and the QVR_* settings come back from args.json.
SERVED = {"qwen2_5_vl_7b_t2_lm_supervised": "answers", "qwen3_vl_4b_raddino_stage2": "answers",
          "qwen2_5_vl_7b_t1_vit_lora_head": "refused"}


@pytest.mark.parametrize("recipe", [r for r in CUSTOM if r.trainer == "swift" and r.path.stem in SERVED],
                         ids=recipe_id)
def test_swift_infer_serves_the_checkpoint(recipe, trained, workspace, tiny_model_dir):
    root = workspace[0]
    checkpoint = saved(recipe, trained(recipe))
    serve = root / "serve" / recipe.path.stem
    serve.mkdir(parents=True)
    rows = root / f"swift-{recipe.family}" / recipe.config["dataset"]
    (serve / "rows.jsonl").write_text("".join(line + "\n" for line in rows.read_text().splitlines()[:2]))
    infer = subprocess.run([venv_bin("swift") / "swift", "infer", "--adapters", checkpoint, "--val_dataset",
                            serve / "rows.jsonl", "--max_new_tokens", "2", "--result_path", serve / "infer.jsonl"],
                           cwd=serve, env=trainer_env("swift"), capture_output=True, text=True, timeout=600)
    if SERVED[recipe.path.stem] == "answers":
        assert infer.returncode == 0, infer.stdout[-3000:] + infer.stderr[-3000:]
        answers = [json.loads(line)["response"] for line in (serve / "infer.jsonl").read_text().splitlines()]
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
        return
    # the head does not run inside swift: the error names the command that scores with it, which does
    assert infer.returncode != 0
    assert "forgery mode vit_lora_head scores images with its head" in infer.stderr, infer.stderr[-3000:]
    assert "qvr-eval predict" in infer.stderr
    images = [json.loads(line)["images"][0] for line in rows.read_text().splitlines()[:2]]
    (serve / "images.txt").write_text("".join(f"{image}\n" for image in images))
    subprocess.run([venv_bin("llamafactory") / "qvr-eval", "predict", "--model", tiny_model_dir(recipe.family),
                    "--checkpoint", checkpoint, "--images", serve / "images.txt", "--out", serve / "predict"],
                   cwd=serve, env=trainer_env("llamafactory"), check=True, capture_output=True)
    scored = [json.loads(line) for line in (serve / "predict" / "scores.jsonl").read_text().splitlines()]
    assert [row["image"] for row in scored] == images
    assert all((serve / "predict" / row["heatmap"]).is_file() for row in scored)


def variant_recipe(trainer: str, variant: str):
    return next(r for r in CUSTOM if (r.trainer, r.path.stem) == (trainer, VARIANT_RECIPES[variant]))


@pytest.fixture(scope="module")
def variant_runs(workspace, tiny_model_dir):
    """variant_runs(trainer, variant) -> output dir of the VARIANTS run, every variant started at the first request,
    in LANES lanes (the module's Run lines have finished by then: these tests come last)."""
    runs, pool = {}, ThreadPoolExecutor(max_workers=LANES)
    for variant in VARIANTS:
        for trainer in VARIANTS[variant]:
            recipe = variant_recipe(trainer, variant)
            words, env, cwd, log, out = prepare_run(workspace, tiny_model_dir, recipe, variant)
            runs[trainer, variant] = (pool.submit(run_logged, words, log, env=trainer_env(trainer, **env), cwd=cwd,
                                                  timeout=900), out)
    yield lambda trainer, variant: runs[trainer, variant][0].result() and runs[trainer, variant][1]
    pool.shutdown(cancel_futures=True)


def optimizer_groups(checkpoint: Path) -> list[dict]:
    """The run's optimizer parameter groups as its checkpoint saved them (initial_lr: the group's own rate)."""
    return torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)["param_groups"]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_seed_encoder_full_linear_merger_with_cls(trainer, variant_runs, tiny_model_dir, workspace):
    """Stage 2 with the one-Linear merger over CLS + patches and the encoder trained whole at its own rate: the
    placeholders count patches + 1 (the run would stop otherwise), the encoder moved, its optimizer group has its
    rate, and the saved folder names merger and token layout so a loader rebuilds the same model."""
    from custom_modules.vision_encoder.training import load_trained
    from tests.unit.test_vision_encoder import IMAGE_PAD, TOKENS_KEPT, batch, image

    out = variant_runs(trainer, "seed_encoder")
    settings = json.loads((out / "vision_encoder" / "settings.json").read_text())
    assert {key: settings[key] for key in SEED_ENCODER if key != "merger_path"} == {
        key: value for key, value in SEED_ENCODER.items() if key != "merger_path"}
    assert set(load_file(out / "vision_encoder" / "merger.safetensors")) == {"norm.weight", "norm.bias",
                                                                            "proj.weight", "proj.bias"}
    checkpoint = saved(variant_recipe(trainer, "seed_encoder"), out)
    adapter = {k.removeprefix("base_model.model."): v
               for k, v in load_file(checkpoint / "adapter_model.safetensors").items()}
    encoder = {k.split("model.visual.encoder.", 1)[1]: v for k, v in adapter.items() if "model.visual.encoder." in k}
    base = load_file(workspace[2] / "model.safetensors")
    assert encoder.keys() == base.keys()
    assert [k for k in encoder if not torch.equal(encoder[k], base[k])], "the encoder did not move"
    groups = optimizer_groups(checkpoint if trainer == "swift" else out / "checkpoint-1")
    assert sum(len(g["params"]) for g in groups if g["initial_lr"] == ENCODER_LR) == len(encoder)

    model, processor = load_trained(tiny_model_dir("qwen3_vl"), checkpoint)
    inputs = batch(processor, [image(1)], answers=["Clear."])
    assert (inputs["input_ids"] == IMAGE_PAD).sum() == TOKENS_KEPT[0]
    assert torch.isfinite(model(**inputs).loss)


@pytest.fixture(scope="module")
def plans(workspace, tiny_model_dir):
    """id -> qvr-plan's JSON of that run (recipe.rel, or (trainer, variant)): its Run line's overrides, our settings'
    variables (ms-swift), its working directory; each trainer's runs planned in one process of its venv."""
    found = {}
    for trainer in ("llamafactory", "swift"):
        items = []
        runs = [(recipe, None) for recipe in CUSTOM if recipe.trainer == trainer]
        runs += [(variant_recipe(trainer, variant), variant) for variant in VARIANTS if trainer in VARIANTS[variant]]
        for recipe, variant in runs:
            words, env, cwd, _, _ = prepare_run(workspace, tiny_model_dir, recipe, variant)
            items.append({"id": f"{recipe.rel}#{variant}" if variant else recipe.rel, "recipe": str(recipe.path),
                          "overrides": words[words.index(str(recipe.path)) + 1:], "cwd": str(cwd),
                          "env": {k: v for k, v in env.items() if k.startswith("QVR_")}})
        found.update(run_plan_worker(trainer, items))
    return found


def trained_names(recipe, out: Path) -> set[str]:
    """The parameters a run trained, as its files name them: its adapter (LoRA pairs, modules_to_save), its forgery
    head and fusion (the head only where the mode trains it: the frozen modes load it, test above), a stage 1
    encoder run's merger."""
    names, checkpoint = set(), saved(recipe, out)
    if (checkpoint / "adapter_model.safetensors").is_file():
        names |= {k.removeprefix("base_model.model.") for k in load_file(checkpoint / "adapter_model.safetensors")}
    if "forgery" in recipe.custom:
        frozen = recipe.custom["forgery"]["mode"] in ("frozen_head", "frozen_head_hybrid")
        names |= {f"forgery.{k}" for k in load_file(checkpoint / "forgery_head.safetensors")
                  if not (frozen and k.startswith("head."))}
    if recipe.custom.get("vision_encoder", {}).get("stage") == 1:
        names |= {f"model.visual.merger.{k}" for k in load_file(out / "vision_encoder" / "merger.safetensors")}
    return names


@pytest.mark.parametrize("recipe", CUSTOM, ids=recipe_id)
def test_plan_names_what_the_run_trained(recipe, trained, plans):
    out = trained(recipe)
    plan = plans[recipe.rel]
    assert plan.get("failure") is None and plan["errors"] == [], plan
    assert set(plan["trainable"]) == trained_names(recipe, out)
    checkpoint = out / "checkpoint-1"
    if (checkpoint / "optimizer.pt").is_file():  # stage 1 through ms-swift saves no checkpoint
        assert sum(len(group["params"]) for group in optimizer_groups(checkpoint)) == len(plan["trainable"])
    assert not [w for w in plan["warnings"] if w.startswith(("forgery mode", "qwenvl_recipes.vision_encoder stage",
                                                             "QVR_VISION_ENCODER stage"))]
    if "learning_rates" in recipe.custom:  # the merger's own rate, in the plan and in the run's optimizer
        merger_lr = recipe.custom["learning_rates"]["merger_lr"]
        assert plan["parts"]["merger"]["learning_rates"] == [merger_lr]
        merger = [name for name in plan["trainable"] if ".visual.merger." in name]
        assert [len(g["params"]) for g in optimizer_groups(checkpoint) if g["initial_lr"] == merger_lr] == [len(merger)]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_plan_names_what_the_seed_encoder_run_trained(trainer, variant_runs, plans):
    recipe = variant_recipe(trainer, "seed_encoder")
    out = variant_runs(trainer, "seed_encoder")
    plan = plans[f"{recipe.rel}#seed_encoder"]
    assert plan.get("failure") is None and plan["errors"] == [], plan
    assert set(plan["trainable"]) == trained_names(recipe, out)
    assert plan["parts"]["vision encoder (ours)"]["learning_rates"] == [ENCODER_LR]
