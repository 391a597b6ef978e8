"""The GPU benchmark's pipeline on CPU: the 24 GiB recipes of both trainers, their `speedups` block applied by our
entry points, Unsloth's path (a stand-in for Unsloth, which refuses CPUs) and a recipe family's variants (forgery:
the seed loop, LLaMA-Factory's frozen-head mode, ms-swift's hybrid), timed and counted by the benchmark worker
(tiny model, one measured step each, one traced after it)."""

import ast
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.offline import offline_env
from tools.trainers import venv_bin

REPO_ROOT = Path(__file__).resolve().parents[2]


# Unsloth's calls, each recording its arguments, done with transformers and peft; the collator as Unsloth's
# builds a batch from a row's messages and image paths (unsloth_zoo's UnslothVisionDataCollator).
FAKE_UNSLOTH = {
    "unsloth/__init__.py": """
import json, os


def record(call, arguments):
    with open(os.environ["QVR_FAKE_UNSLOTH_CALLS"], "a") as f:
        f.write(json.dumps({"call": call, **arguments}) + "\\n")


class FastVisionModel:
    @staticmethod
    def from_pretrained(model_name, **kwargs):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        record("load", kwargs)
        return AutoModelForImageTextToText.from_pretrained(model_name), AutoProcessor.from_pretrained(model_name)

    @staticmethod
    def get_peft_model(model, r, lora_alpha, lora_dropout, **kwargs):
        from peft import LoraConfig, get_peft_model

        record("peft", dict(kwargs, r=r))
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                target_modules=r".*language_model.*\\.(q_proj|v_proj)"))

    @staticmethod
    def for_training(model):
        model.train()
""",
    "unsloth/trainer.py": """
from PIL import Image

from unsloth import record


class UnslothVisionDataCollator:
    def __init__(self, model, processor, resize="min"):
        record("collator", {"resize": resize, "max_pixels": processor.image_processor.size["longest_edge"]})
        self.processor = processor

    def __call__(self, examples):
        messages = [[dict(turn, content=[{k: v for k, v in part.items() if v is not None} for part in turn["content"]])
                     for turn in e["messages"]] for e in examples]  # Arrow's None keys dropped
        texts = [self.processor.apply_chat_template(m, tokenize=False) for m in messages]
        images = [Image.open(path).convert("RGB") for e in examples for path in e["images"]]
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        batch["labels"] = batch["input_ids"].clone()
        return batch
""",
}


def write_fake_unsloth(folder: Path) -> Path:
    for name, text in FAKE_UNSLOTH.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def bench_command(tmp_path: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "tools.bench", "run", "--cpu", *arguments, "--steps", "1", "--warmup", "1",
            "--timeout", "400", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--lf-python", str(venv_bin("llamafactory") / "python"),
            "--swift-python", str(venv_bin("swift") / "python")]


def test_bench_runs_speedup_recipes_through_both_trainers_and_unsloths_path(tmp_path):
    out = tmp_path / "out"
    # adamw_torch: Unsloth's 8-bit AdamW needs bitsandbytes, which the CPU environment lacks; micro-batch 4 for
    # all three: the tiny model's full logits over its 152k vocabulary dominate a CPU step
    variants = [f"{name}:per_device_train_batch_size=4" for name in ("lf_ours_24gib", "swift_ours_24gib")]
    command = bench_command(tmp_path, "--model", "qwen2_5_vl_7b", "--variants", *variants,
                            "unsloth_tuned:optim=adamw_torch,per_device_train_batch_size=4", "--profile", "1",
                            "--unsloth-python", str(venv_bin("llamafactory") / "python"),
                            "--unsloth-path", str(write_fake_unsloth(tmp_path / "fake_unsloth")))
    temp_before = sorted(Path(tempfile.gettempdir()).glob("qvr*"))
    calls = tmp_path / "unsloth_calls.jsonl"
    result = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(QVR_FAKE_UNSLOTH_CALLS=str(calls)),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    records = json.loads((out / "bench_qwen2_5_vl_7b_grounding.json").read_text())
    assert [(r["trainer"], r["variant"]) for r in records] == [("llamafactory", "ours_24gib"),
                                                               ("ms-swift", "ours_24gib"), ("unsloth", "unsloth")]
    # Unsloth's variant: its calls as its notebooks make them, the recipes' pixel limits, the ratios against it
    made = {c.pop("call"): c for c in map(json.loads, calls.read_text().splitlines())}
    assert made["collator"] == {"resize": "max", "max_pixels": 200704}
    assert made["load"]["use_gradient_checkpointing"] is False and made["peft"]["finetune_vision_layers"] is False
    assert records[0]["ratio_vs_best_unsloth"] == records[0]["samples_per_s"] / records[2]["samples_per_s"]
    for r in records:
        assert not r.get("error") and r["samples_per_s"] > 0 and r["steps"] >= 1
        assert r["n_trainable_with_grad"] == r["n_trainable"] > 0
        # COCO-shaped grounding rows: texts of varying length, so some positions of a batch are padding
        assert r["data"] == "coco, grounding text" and r["task"] == "grounding" and r["patches_per_sample"] > 0
        assert 100 < r["tokens_per_sample"] < 500
        # texts of different lengths in one batch pad the shorter ones
        assert 0 < r["padding_share"] < 0.5, r
        assert r["trained"] == {"lm": "lora", "vision": "frozen"}
    # each trainer applied the recipe's speedups to the tiny tower (one vision config, depth-2 MLPs of width 64) and
    # to the model object its Trainer counts parameters on
    applied = re.findall(r"speedups applied: (\{.*?\})", (out / "bench_qwen2_5_vl_7b_grounding.log").read_text())
    assert len(applied) == 2
    for changed in map(ast.literal_eval, applied):
        assert changed["vision_attention"] == 1 and changed["vision_mlp"] == 2 and "compile_vision" not in changed
        assert changed["parameter_count"] == 1
        assert changed["lora_addmm"] == 7 * 2  # q, k, v, o, gate, up, down of the tiny LM's two layers
    # the workers leave with os._exit; the temporary folder they wrote in (swift's launcher recipe) is gone
    assert sorted(Path(tempfile.gettempdir()).glob("qvr*")) == temp_before
    # --profile 1: one traced micro-step after the measured window, inside each trainer's loop
    for name in ("lf_ours_24gib", "swift_ours_24gib"):
        trace = f"trace_{name}-per_device_train_batch_size-4"
        events = json.loads(gzip.decompress((out / f"{trace}.json.gz").read_bytes()))["traceEvents"]
        assert any(e.get("name") == "aten::scaled_dot_product_attention" for e in events), name
        assert "Self CPU" in (out / f"{trace}.txt").read_text()


def test_profile_step_runs_each_lever_on_the_tiny_model(tmp_path):
    command = [sys.executable, "-m", "tools.profile_step", "--tiny", "--model", "qwen2_5_vl_7b", "--batch", "2",
               "--steps", "1", "--warmup", "1", "--levers", "sdpa", "vision_attention", "vision_mlp", "lora_input",
               "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "profile_qwen2_5_vl_7b.json").read_text())
    assert [r["lever"] for r in rows] == ["sdpa", "vision_attention", "vision_mlp", "lora_input"]
    # transformers' loop makes one sdpa call per window and image; batched, one per distinct segment length
    calls = [r["sdpa_calls_per_step"] for r in rows]
    assert calls[0] > calls[1] and calls[1:] == [calls[1]] * 3
    assert all(r["step_s"] > 0 and r["samples_per_s"] > 0 for r in rows)


def test_bench_runs_a_recipe_familys_variants(tmp_path):
    """Forgery on the tiny Qwen2.5-VL, one step each, on forgery-set-sized images with masks: the seed study's loop
    (T1) and ms-swift's frozen-head T4 (reading the benchmark's random head, no evaluation file: ENV `null`)."""
    result = subprocess.run(bench_command(tmp_path, "--model", "qwen2_5_vl_7b", "--task", "forgery", "--variants",
                                          "seed_t1", "swift_t4"),
                            cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = json.loads((tmp_path / "out" / "bench_qwen2_5_vl_7b_forgery.json").read_text())
    assert [(r["name"], r["trainer"], r["variant"]) for r in records] == [("seed_t1", "transformers", "seed_loop"),
                                                                          ("swift_t4", "ms-swift", "ours")]
    for r in records:
        assert not r.get("error") and r["samples_per_s"] > 0 and r["n_trainable_with_grad"] == r["n_trainable"] > 0
        assert r["data"].startswith("forgery: ") and r["mfu"] > 0
        # T1 and T4 never run the LM: their MFU is the vision tower's (LoRA in its blocks)
        assert r["trained"] == {"lm": "not_run", "vision": "lora"}
    assert records[1]["ratio_vs_seed"] == records[1]["samples_per_s"] / records[0]["samples_per_s"]
