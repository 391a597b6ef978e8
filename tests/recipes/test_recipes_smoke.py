"""Two training steps per trainer x method on the tiny models with the recipe's own settings (only model,
data, output dir, max_steps and CPU dtype overridden), then: exactly the intended parameters changed, and they are
the ones qvr-plan names for the same recipe and overrides (QLoRA, which needs CUDA, is planned against its LoRA twin).
Plus the export recipes: merged model loads with from_pretrained and generates."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.recipe_cases import RECIPES, make_dataset, run_plan_worker, trainer_env
from tools.trainers import CPU_OVERRIDES, run_logged, train_command, venv_bin

# One recipe per method: the seeds (caption LoRA, Qwen3-VL LoRA + merger), DeepSpeed ZeRO-3 (it runs on CPU:
# gloo + DeepSpeed's shm comm op) and the cheapest ViT-LoRA recipe, plus the Qwen2.5-VL grounding LoRA, so each model
# family trains, and the Qwen3-VL ViT LoRA (microscopy: its own block names, the deepstack mergers beside them left
# out) on one sample a step (its own batch is 16 two-image samples of ~200 tokens: ~100 s on 2 cores; the batch
# changes nothing of what trains). The same file name in both trainers. case -> (task, recipe name, method).
SMOKE = {  # longest runs first: they start first in the pool
    "full": ("caption", "qwen2_vl_2b_full_zero3", "full"),
    "lora_vit": ("caption", "qwen2_vl_2b_lora_vit", "lora_vit"),
    "microscopy_lora_vit": ("microscopy", "qwen3_vl_2b_lora_vit", "lora_vit"),
    "merger": ("forgery", "qwen3_vl_4b_merger", "merger"),
    "grounding_lora": ("grounding", "qwen2_5_vl_7b_lora", "lora"),
    "lora": ("caption", "qwen2_vl_2b_lora", "lora"),
}
ONE_SAMPLE = {"qwen3_vl_2b_lora_vit": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1}}
QLORA = ("caption", "qwen2_vl_2b_qlora")  # planned only: bitsandbytes' 4-bit base needs CUDA
EXPORTS = {"llamafactory": ("caption", "qwen2_vl_2b_lora_export"), "swift": ("caption", "qwen2_vl_2b_lora_export")}
LM, VIT, MERGER = "language_model", "visual.blocks", "visual.merger"
MASTER_PORTS = {"llamafactory": 29571, "swift": 29572}  # the two trainers' runs may overlap


def find_recipe(trainer: str, task: str, name: str):
    return next(r for r in RECIPES if (r.trainer, r.task, r.path.stem) == (trainer, task, name))


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """(task, family) -> converted data dir, made once."""
    made = {}

    def get(task: str, family: str) -> Path:
        if (task, family) not in made:
            made[task, family] = make_dataset(task, family, tmp_path_factory.mktemp(f"data-{task}-{family}"))
        return made[task, family]

    return get


def smoke_overrides(recipe, tiny: Path, data_dir: Path, out: Path) -> dict:
    """The only keys tests and the demo change; everything else is the recipe's own."""
    if recipe.trainer == "llamafactory":
        return {"model_name_or_path": str(tiny), "dataset_dir": str(data_dir), "output_dir": str(out),
                "max_steps": 2, **CPU_OVERRIDES["llamafactory"]}
    dataset = Path(recipe.config["dataset"]).name
    return {"model": str(tiny), "dataset": str(data_dir / dataset), "output_dir": str(out), "max_steps": 2,
            "check_model": False, **CPU_OVERRIDES["swift"]}


def launch_env(recipe) -> dict:
    """DeepSpeed recipes go through torchrun with one CPU process (LLaMA-Factory: FORCE_TORCHRUN=1 needs
    NPROC_PER_NODE on CPU; swift switches to torchrun when NPROC_PER_NODE is set)."""
    extra = {}
    if recipe.config.get("deepspeed"):
        extra.update(NPROC_PER_NODE="1", MASTER_PORT=str(MASTER_PORTS[recipe.trainer]))
        if recipe.trainer == "llamafactory":
            extra["FORCE_TORCHRUN"] = "1"
    return trainer_env(recipe.trainer, **extra)


@pytest.fixture(scope="session")
def trained(tiny_model_dir, datasets, tmp_path_factory):
    """(trainer, task, name) -> output dir of a 2-step run of that recipe. Every smoke run starts at the first
    request, two at a time (much of a run is single-threaded start-up, so two overlap well on 2 cores)."""
    def train(trainer: str, task: str, name: str) -> Path:
        recipe = find_recipe(trainer, task, name)
        out = tmp_path_factory.mktemp(f"{trainer}-{name}")
        overrides = smoke_overrides(recipe, tiny_model_dir(recipe.family), datasets(task, recipe.family), out)
        run_logged(train_command(trainer, recipe.path, {**overrides, **ONE_SAMPLE.get(name, {})}), out / "train.log",
                   env=launch_env(recipe), timeout=600)
        return out

    for task, name, _ in SMOKE.values():  # data first, in this thread: the converters are not run concurrently
        datasets(task, find_recipe("swift", task, name).family)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {(trainer, task, name): pool.submit(train, trainer, task, name)
                for task, name, _ in SMOKE.values() for trainer in ("llamafactory", "swift")}
        yield lambda trainer, task, name: runs[trainer, task, name].result()


def saved_dir(trainer: str, out: Path) -> Path:
    """LLaMA-Factory saves the final model in output_dir; swift in output_dir/checkpoint-<last step>."""
    return out if trainer == "llamafactory" else out / "checkpoint-2"


@pytest.fixture(scope="session")
def plans(tiny_model_dir, datasets, tmp_path_factory):
    """(trainer, task, name) -> qvr-plan's JSON for the smoke run of that recipe (its overrides), each trainer's
    recipes planned in one process of its venv."""
    out = tmp_path_factory.mktemp("plans")
    cases = [case[:2] for case in SMOKE.values()] + [QLORA]
    found = {}
    for trainer in ("llamafactory", "swift"):
        items = []
        for task, name in cases:
            recipe = find_recipe(trainer, task, name)
            overrides = {**smoke_overrides(recipe, tiny_model_dir(recipe.family), datasets(task, recipe.family), out),
                         **ONE_SAMPLE.get(name, {})}
            items.append({"id": name, "recipe": str(recipe.path),
                          "overrides": train_command(trainer, recipe.path, overrides)[3:]})
        found.update({(trainer, name): plan for name, plan in run_plan_worker(trainer, items).items()})
    return lambda trainer, task, name: found[trainer, name]


def trained_names(method: str, saved: Path, tiny: Path) -> set[str]:
    """The parameters a run trained, as its files show: a LoRA run's adapter (LoRA pairs, modules_to_save), a full
    run's parameters that moved (named as model.named_parameters names them: tied weights once)."""
    if method != "full":
        return set(adapter_tensors(saved))
    from transformers import AutoModelForImageTextToText

    base = dict(AutoModelForImageTextToText.from_pretrained(tiny).named_parameters())
    tuned = dict(AutoModelForImageTextToText.from_pretrained(saved).named_parameters())
    return {name for name, param in tuned.items() if not torch.equal(param, base[name])}


def optimizer_tensors(saved: Path) -> int:
    """How many tensors the run's optimizer trained (its checkpoint's optimizer.pt, parameter groups)."""
    state = torch.load(saved / "optimizer.pt", map_location="cpu", weights_only=False)
    return sum(len(group["params"]) for group in state["param_groups"])


def base_state(tiny: Path) -> dict:
    """The tiny model's parameters under the names transformers 5 gives them (what adapters/saves use)."""
    from transformers import AutoModelForImageTextToText
    return {k: v.detach().clone() for k, v in AutoModelForImageTextToText.from_pretrained(tiny).state_dict().items()}


def adapter_tensors(path: Path) -> dict:
    """adapter_model.safetensors with peft's `base_model.model.` prefix removed."""
    return {k.removeprefix("base_model.model."): v for k, v in load_file(path / "adapter_model.safetensors").items()}


def lora_modules(tensors: dict) -> dict:
    """module name -> {"A": tensor, "B": tensor} for every LoRA pair."""
    pairs = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                pairs.setdefault(key.split(f".{part}.")[0], {})[part[-1]] = value
    return pairs


def check_lora_moved(pairs: dict, where: str) -> None:
    chosen = {m: p for m, p in pairs.items() if where in m}
    assert chosen, f"no LoRA adapters in {where}"
    moved = [m for m, p in chosen.items() if p["B"].abs().max() > 0]
    assert moved, f"every lora_B in {where} is still zero after 2 steps"


LM_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def expected_lm_targets(recipe) -> set[str]:
    c = recipe.config
    targets = set(c["lora_target"].split(",") if recipe.trainer == "llamafactory" else c["target_modules"])
    return LM_LINEARS if targets == {"all-linear"} else targets  # swift's all-linear: the LM's linear layers


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
@pytest.mark.parametrize("case", sorted(SMOKE))
def test_two_steps_change_only_intended_parameters(trainer, case, trained, tiny_model_dir):
    task, name, method = SMOKE[case]
    recipe = find_recipe(trainer, task, name)
    saved = saved_dir(trainer, trained(trainer, task, name))
    base = base_state(tiny_model_dir(recipe.family))

    if method == "full":
        from transformers import AutoModelForImageTextToText
        tuned = AutoModelForImageTextToText.from_pretrained(saved).state_dict()
        assert tuned.keys() == base.keys()
        changed = {k for k in base if not torch.equal(base[k], tuned[k])}
        assert any(LM in k for k in changed), "full fine-tune left the language model unchanged"
        assert not [k for k in changed if "visual" in k], f"frozen vision parameters changed: {sorted(changed)[:5]}"
        return

    config = json.loads((saved / "adapter_config.json").read_text())
    tensors = adapter_tensors(saved)
    pairs = lora_modules(tensors)
    check_lora_moved(pairs, LM)
    extra = {k: v for k, v in tensors.items() if ".lora_" not in k}

    if method in ("lora", "merger"):
        assert not [m for m in pairs if "visual" in m], "LoRA reached the vision tower"
        assert {m.rsplit(".", 1)[1] for m in pairs} == expected_lm_targets(recipe)
    if method == "lora":
        assert not extra and not config.get("modules_to_save"), f"unexpected trained modules: {sorted(extra)[:5]}"
    elif method == "lora_vit":
        check_lora_moved(pairs, VIT)
        assert not [m for m in pairs if "visual" in m and VIT not in m], "LoRA outside the ViT blocks (merger?)"
        assert not extra, f"unexpected fully trained modules: {sorted(extra)[:5]}"
    elif method == "merger":
        assert config["modules_to_save"] == ["merger"]
        assert extra and all(MERGER in k for k in extra), f"fully trained modules besides the merger: {sorted(extra)}"
        changed = [k for k, v in extra.items() if not torch.equal(v, base[k])]
        assert changed, "the merger did not move"


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
@pytest.mark.parametrize("case", sorted(SMOKE))
def test_plan_names_what_the_run_trained(trainer, case, trained, plans, tiny_model_dir):
    task, name, method = SMOKE[case]
    recipe = find_recipe(trainer, task, name)
    out = trained(trainer, task, name)
    plan = plans(trainer, task, name)
    assert plan.get("failure") is None and plan["errors"] == [], plan
    assert set(plan["trainable"]) == trained_names(method, saved_dir(trainer, out), tiny_model_dir(recipe.family))
    if trainer == "llamafactory":  # LLaMA-Factory logs its own count of what it set trainable
        assert f"trainable params: {plan['trainable_parameters']:,} ||" in (out / "train.log").read_text()
    if method != "full":  # DeepSpeed keeps its optimizer elsewhere
        assert optimizer_tensors(out / "checkpoint-2") == len(plan["trainable"])


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_qlora_plan_is_its_lora_twin_on_a_4_bit_base(trainer, plans):
    qlora, lora = plans(trainer, *QLORA), plans(trainer, *SMOKE["lora"][:2])
    assert "QLoRA" in qlora["method"] and "4 bits" in qlora["method"]
    assert qlora["errors"] == [] and qlora["trainable"] == lora["trainable"]


def export_overrides(trainer: str, adapter: Path, tiny: Path, out: Path) -> list[str]:
    if trainer == "llamafactory":
        return [f"model_name_or_path={tiny}", f"adapter_name_or_path={adapter}", f"export_dir={out}"]
    return ["--adapters", str(adapter), "--output_dir", str(out)]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_export_recipe_merges_into_loadable_model(trainer, trained, tiny_model_dir, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    task, name = EXPORTS[trainer]
    recipe = find_recipe(trainer, task, name)
    adapter = saved_dir(trainer, trained(trainer, *SMOKE["lora"][:2]))
    tiny = tiny_model_dir(recipe.family)
    merged_dir = tmp_path / "merged"
    cli = ([str(venv_bin(trainer) / "llamafactory-cli"), "export"] if trainer == "llamafactory"
           else [str(venv_bin(trainer) / "swift"), "export"])
    run_logged([*cli, str(recipe.path), *export_overrides(trainer, adapter, tiny, merged_dir)],
               tmp_path / "export.log", env=launch_env(recipe), timeout=600)

    model = AutoModelForImageTextToText.from_pretrained(merged_dir)
    processor = AutoProcessor.from_pretrained(merged_dir)
    merged, base = model.state_dict(), base_state(tiny)
    assert merged.keys() == base.keys() and not [k for k in merged if "lora" in k]
    q_proj = next(k for k in base if LM in k and k.endswith("q_proj.weight"))
    assert not torch.equal(merged[q_proj], base[q_proj]), "the adapter was not merged into q_proj"

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), (200, 30, 30))], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    # the merged model answers as base + adapter (what eval run loads)
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny), str(adapter)).eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, tuned(**inputs).logits, atol=1e-4)
