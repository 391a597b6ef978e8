from types import SimpleNamespace

import torch

from custom_modules.speedups.parameter_count import count_parameters_once


def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen3_vl"))
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_trainer_flop_estimate_counts_the_parameters_once(tiny_model_dir):
    from transformers import Trainer

    model = lora_model(tiny_model_dir)
    expected = model.num_parameters(exclude_embeddings=True)
    trainer = SimpleNamespace(model=model)
    inputs = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    walks = []
    counted = model.get_base_model()  # peft forwards num_parameters to the transformers model
    named_parameters = counted.named_parameters
    counted.named_parameters = lambda *a, **k: walks.append(1) or named_parameters(*a, **k)
    assert count_parameters_once(model) == 1 and count_parameters_once(model) == 0
    for _ in range(3):  # the call transformers' Trainer makes at every micro-step
        assert Trainer.floating_point_ops(trainer, inputs) == 6 * 10 * expected
    assert len(walks) == 1
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_trainable_counts_follow_requires_grad(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    count_parameters_once(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert model.num_parameters(only_trainable=True) == lora
    model.base_model.model.lm_head.weight.requires_grad_(True)
    assert model.num_parameters(only_trainable=True) == lora + model.base_model.model.lm_head.weight.numel()
