"""frozen_vision: under enabled input gradients (what checkpointing turns on), a frozen vision tower records nothing
for the backward pass once the speed-up is applied, and every trainable parameter gets the same gradient."""

import json

import pytest
import torch

from tools.bench_data import write_bench_data
from tools.bench.worker import encode_batch
from tools.tiny_models import TINY_MAX_PIXELS, TINY_MIN_PIXELS

LM_LORA = r".*language_model.*\.(q_proj|v_proj)"
VIT_LORA = r".*visual\.blocks.*\.(qkv|proj)"


def model_and_batch(path, tmp_path, family, target_modules, train_merger=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=target_modules))
    if train_merger:
        for p in model.base_model.model.model.visual.merger.parameters():
            p.requires_grad_(True)
    model.enable_input_require_grads()  # what peft and LLaMA-Factory do under gradient checkpointing
    model.train()
    data = write_bench_data(tmp_path, "grounding", 2, family, TINY_MIN_PIXELS[family], TINY_MAX_PIXELS[family])
    rows = json.loads((data / "bench_train.json").read_text())
    return model, encode_batch(AutoProcessor.from_pretrained(path), rows, "cpu")


def tower_saved_bytes_and_grads(model, inputs, labels):
    """(bytes the vision blocks keep for backward, loss, gradients of the trainable parameters)."""
    from custom_modules.speedups.parts import vision_towers

    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    context = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    blocks = vision_towers(model)[0].blocks
    handles = [blocks[0].register_forward_pre_hook(lambda *_: context.__enter__()),
               blocks[-1].register_forward_hook(lambda *_: context.__exit__(None, None, None))]
    model.zero_grad()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    for handle in handles:
        handle.remove()
    return sum(saved), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("train_merger", [False, True])
def test_frozen_tower_keeps_nothing_for_backward_and_gradients_are_unchanged(tiny_model_dir, tmp_path, family,
                                                                               train_merger):
    from custom_modules.speedups.frozen_vision import drop_frozen_vision_graph

    model, (inputs, labels) = model_and_batch(tiny_model_dir(family), tmp_path, family, LM_LORA, train_merger)
    saved_before, expected_loss, expected_grads = tower_saved_bytes_and_grads(model, inputs, labels)
    assert saved_before > 0  # transformers' hook on the patch embedding makes the frozen blocks record

    assert drop_frozen_vision_graph(model) == 1
    assert drop_frozen_vision_graph(model) == 0
    saved, loss, grads = tower_saved_bytes_and_grads(model, inputs, labels)
    assert saved == 0
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=0)
    assert grads.keys() == expected_grads.keys()
    assert any("merger" in name for name in grads) == train_merger
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_a_tower_with_lora_in_its_blocks_keeps_its_hook(tiny_model_dir, tmp_path):
    from custom_modules.speedups.frozen_vision import drop_frozen_vision_graph

    model, _ = model_and_batch(tiny_model_dir("qwen2_5_vl"), tmp_path, "qwen2_5_vl", VIT_LORA)
    assert drop_frozen_vision_graph(model) == 0


def test_qwen3_vl_tower_has_no_hook_to_drop(tiny_model_dir, tmp_path):
    from custom_modules.speedups.frozen_vision import drop_frozen_vision_graph

    model, _ = model_and_batch(tiny_model_dir("qwen3_vl"), tmp_path, "qwen3_vl", LM_LORA)
    assert drop_frozen_vision_graph(model) == 0
