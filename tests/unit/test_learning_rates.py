"""Per-part learning rates for LLaMA-Factory (`qwenvl_recipes.learning_rates`): the parts, the optimizer groups over a
tiny Qwen3-VL with LoRA and a trained merger copy, the settings' errors, and one owner of the optimizer groups."""
from __future__ import annotations

import pytest
from transformers import AutoModelForImageTextToText

from custom_modules import learning_rates
from custom_modules.integrations.llamafactory_cli import RecipeError, feature_callbacks


@pytest.mark.parametrize("name,part", [
    ("base_model.model.model.visual.merger.modules_to_save.default.linear_fc1.weight", "merger"),
    ("model.visual.deepstack_merger_list.0.norm.weight", "merger"),
    ("model.visual.blocks.3.attn.qkv.lora_A.default.weight", "vit"),
    ("model.visual.patch_embed.proj.weight", "vit"),
    ("model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight", "lm"),
    ("lm_head.weight", "lm"),
])
def test_parts_are_ms_swift_aligner_vit_and_llm(name, part):
    assert learning_rates.stock_part(name) == part


def test_groups_give_the_merger_its_rate(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen3_vl"))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "attn.qkv"], modules_to_save=["merger"]))
    settings = learning_rates.parse_settings({"merger_lr": 2e-5})
    groups = learning_rates.param_groups(model, learning_rates.stock_part, learning_rates.rates_of(settings), 1e-4)
    trainable = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    by_group = {group["name"]: (group["lr"], {trainable[id(p)] for p in group["params"]}) for group in groups}
    assert {part: lr for part, (lr, _) in by_group.items()} == {"merger": 2e-5, "vit": 1e-4, "lm": 1e-4}
    assert all(".visual.merger.modules_to_save." in name for name in by_group["merger"][1])
    assert all("visual.blocks." in name and "lora_" in name for name in by_group["vit"][1])
    assert sum(len(names) for _, names in by_group.values()) == len(trainable)


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match=r"qwenvl_recipes\.learning_rates: set merger_lr and/or vit_lr"):
        learning_rates.parse_settings({})
    with pytest.raises(ValueError, match=r"qwenvl_recipes\.learning_rates\.aligner_lr"):
        learning_rates.parse_settings({"aligner_lr": 1e-5})


def test_one_feature_owns_the_optimizer_groups(monkeypatch, tmp_path):
    import llamafactory.model.loader as loader
    import llamafactory.train.sft.trainer as sft_trainer

    patched = ((sft_trainer, "create_custom_optimizer"), (loader, "patch_processor"), (loader, "init_adapter"))
    for module, name in patched:  # the features patch them for the process
        monkeypatch.setattr(module, name, getattr(module, name))
    block = {"learning_rates": {"merger_lr": 1e-5},
             "vision_encoder": {"encoder": "dinov2", "encoder_path": str(tmp_path), "merger_lr": 1e-4}}
    with pytest.raises(RecipeError, match=r"r\.yaml: qwenvl_recipes\.vision_encoder: qwenvl_recipes\.learning_rates "
                                          r"already sets the learning rates per part; keep one of the two"):
        feature_callbacks("r.yaml", block, {})
