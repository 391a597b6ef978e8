"""qvr-plan on LLaMA-Factory recipes (this environment's trainer; ms-swift's side: tests/recipes/test_plan_recipes.py)
on the tiny models: the target lists users paste from their own code, flagged before any weight loads, and the
forgery mode checks. Every run builds the model on the meta device."""
from __future__ import annotations

import json

import pytest

from custom_modules.integrations.plan_cli import main
from custom_modules.plan import regex_branches
from tools.recipes_table import REPO_ROOT

MICROSCOPY_VIT = "recipes/microscopy/llamafactory/qwen3_vl_2b_lora_vit.yaml"
T1 = "recipes/forgery/llamafactory/qwen2_5_vl_7b_t1_vit_lora_head.yaml"
T2 = "recipes/forgery/llamafactory/qwen2_5_vl_7b_t2_lm_supervised.yaml"
# the ViT LoRA list of a user's own loop (fnmatch wildcards over full names), pasted into lora_target
SEED_VIT_TARGETS = "visual.blocks.*.attn.qkv,visual.merger.*,visual.deepstack_merger_list.*"


def plan(capsys, tmp_path, recipe: str, *overrides: str) -> tuple[int, dict, list[str]]:
    """(exit status, the plan's JSON, stderr lines) of `qvr-plan --json FILE RECIPE OVERRIDES`."""
    out = tmp_path / "plan.json"
    status = main(["--json", str(out), str(REPO_ROOT / recipe), *overrides])
    errors = capsys.readouterr().err.strip().splitlines()
    return status, json.loads(out.read_text()) if out.exists() else {}, errors


@pytest.fixture
def tiny(tiny_model_dir):
    return lambda family: f"model_name_or_path={tiny_model_dir(family)}"


def test_seed_vit_target_list_is_one_error_per_pattern(capsys, tmp_path, tiny):
    status, found, errors = plan(capsys, tmp_path, MICROSCOPY_VIT, tiny("qwen3_vl"),
                                 f"lora_target=q_proj,{SEED_VIT_TARGETS}")
    assert status == 2
    wildcards = SEED_VIT_TARGETS.split(",")
    assert len(errors) == 3 and all(MICROSCOPY_VIT in line for line in errors)
    assert [line.split("lora_target ")[1].split(" ")[0] for line in errors] == [f"'{w}'" for w in wildcards]
    assert all("no wildcards" in line for line in errors)
    # what would have trained: LoRA on the LM's q_proj only
    reached = {p["pattern"]: p["reached"] for p in found["patterns"]}
    assert [reached[w] for w in wildcards] == [[], [], []]
    assert reached["q_proj"] == [f"model.language_model.layers.{i}.self_attn.q_proj" for i in (0, 1)]


def test_the_same_targets_written_as_pieces_of_names_plan_clean(capsys, tmp_path, tiny):
    status, found, errors = plan(capsys, tmp_path, MICROSCOPY_VIT, tiny("qwen3_vl"),
                                 "lora_target=q_proj,attn.qkv,deepstack_merger_list.0.linear_fc1")
    assert (status, errors) == (0, [])
    reached = {p["pattern"]: p["reached"] for p in found["patterns"]}
    assert reached["attn.qkv"] == ["model.visual.blocks.0.attn.qkv", "model.visual.blocks.1.attn.qkv"]
    assert found["parts"]["deepstack mergers"]["how"] == "LoRA on 1 modules"


def test_seed_t2_vision_targets_name_the_settings_that_drop_them_and_the_mode(capsys, tmp_path, tiny):
    """A T2 that puts LoRA on the vision side and the merger's first layer, pasted into the T2 recipe: LLaMA-Factory
    keeps the ViT (freeze_vision_tower) and the merger (freeze_multi_modal_projector) out of LoRA unless told."""
    targets = "lora_target=attn.qkv,attn.proj,merger.mlp.0"
    status, found, errors = plan(capsys, tmp_path, T2, tiny("qwen2_5_vl"), targets)
    assert status == 2 and len(errors) == 3 and all(T2 in line for line in errors)
    assert "'attn.qkv'" in errors[0] and "model.visual.blocks.0.attn.qkv" in errors[0]
    assert "freeze_vision_tower: true" in errors[0] and "freeze_vision_tower: true" in errors[1]
    assert "'merger.mlp.0'" in errors[2] and "(model.visual.merger.mlp.0)" in errors[2]
    assert "freeze_multi_modal_projector: true" in errors[2]

    status, found, errors = plan(capsys, tmp_path, T2, tiny("qwen2_5_vl"), targets, "freeze_vision_tower=false",
                                 "freeze_multi_modal_projector=false")
    assert (status, errors) == (0, [])
    assert {p["pattern"]: p["reached"] for p in found["patterns"]}["merger.mlp.0"] == ["model.visual.merger.mlp.0"]
    # trained now, but not what the mode is: T2 is LoRA on the language model's attention
    assert any("mode lm_supervised trains no ViT LoRA" in w and "blocks [0, 1]" in w for w in found["warnings"])
    assert any("none in the language model" in w for w in found["warnings"])


@pytest.mark.parametrize("head_blocks,warned", [("[1]", True), ("[0]", False)])
def test_forgery_head_blocks_and_lora_blocks(capsys, tmp_path, tiny, head_blocks, warned):
    status, found, _ = plan(capsys, tmp_path, T1, tiny("qwen2_5_vl"),
                            "lora_target=blocks.0.attn.qkv,blocks.0.attn.proj",
                            f"qwenvl_recipes.forgery.head_blocks={head_blocks}")
    assert status == 0
    placement = [w for w in found["warnings"] if w.startswith("forgery mode")]
    assert bool(placement) == warned
    if warned:
        assert "LoRA sits on ViT blocks [0], but the head reads blocks [1]" in placement[0]
        assert "qwenvl_recipes.forgery.head_blocks" in placement[0]
    assert found["parts"]["forgery head (ours)"]["trainable"] > 0


def test_unknown_model_and_wrong_environment_are_one_line(capsys, tmp_path):
    status, _, errors = plan(capsys, tmp_path, T2, "model_name_or_path=Qwen/Qwen9-VL-1B")
    assert status == 2 and len(errors) == 1
    assert f"{T2}: model_name_or_path: Qwen/Qwen9-VL-1B is neither a local model folder nor one of the published" \
        in errors[0]
    status, _, errors = plan(capsys, tmp_path, "recipes/forgery/swift/qwen2_5_vl_7b_t2_lm_supervised.yaml")
    assert status == 2 and len(errors) == 1
    assert "an ms-swift recipe: run qvr-plan in ms-swift's environment (.venv-swift/bin/qvr-plan)" in errors[0]


def test_published_architecture_counts(capsys, tmp_path):
    """Qwen2-VL-2B-Instruct's published size (2.21B, embeddings tied) and its LoRA r64 on the LM's linear layers."""
    status, found, _ = plan(capsys, tmp_path, "recipes/caption/llamafactory/qwen2_vl_2b_lora.yaml")
    assert status == 0
    assert found["parameters"] == 2_208_985_600
    # 28 layers x r64 x (in + out) of q, k, v, o (1536 -> 1536, 256, 256, 1536), gate, up (1536 -> 8960), down
    per_rank = (1536 + 1536) + 2 * (1536 + 256) + (1536 + 1536) + 2 * (1536 + 8960) + (8960 + 1536)
    assert found["trainable_parameters"] == 28 * 64 * per_rank


def test_regex_alternatives_are_checked_one_by_one():
    regex = r"^(.*\.)?(blocks\.7\.attn\.qkv|self_attn\.q_proj)$"
    assert regex_branches(regex) == [(r"blocks\.7\.attn\.qkv", r"^(.*\.)?(blocks\.7\.attn\.qkv)$"),
                                     (r"self_attn\.q_proj", r"^(.*\.)?(self_attn\.q_proj)$")]
    nested = r"^(layers\.\d+\.(q|k)_proj|blocks\.\d+\.(qkv|proj))$"
    assert [text for text, _ in regex_branches(nested)] == [r"layers\.\d+\.(q|k)_proj", r"blocks\.\d+\.(qkv|proj)"]
    assert regex_branches(r"^(?:a|[|(]b)$") == [("a", "^(?:a)$"), ("[|(]b", "^(?:[|(]b)$")]
    assert regex_branches(r"^model\.visual\.blocks\.\d+\.attn\.qkv$") == []
