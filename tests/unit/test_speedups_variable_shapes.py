"""Every speed-up, the compiled vision blocks and LM layers included, over batches shaped like users' data: each
batch mixes COCO image sizes and texts of other lengths. The loss and the LoRA gradients equal the eager model's,
and after the first batches (one static compile, one for dynamic shapes) new shapes compile nothing more."""

import json

import pytest
import torch

from tools.bench_data import write_bench_data
from tools.bench.worker import encode_batch
from tools.tiny_models import TINY_MAX_PIXELS, TINY_MIN_PIXELS

BATCH, BATCHES, SETTLED = 3, 6, 3  # graphs may still be added while the first SETTLED batches run


def lora_model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
    model.train()
    return model


def loss_and_grads(model, inputs, labels):
    model.zero_grad()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_compiled_speedups_match_eager_and_stop_compiling_on_coco_shaped_batches(tiny_model_dir, tmp_path, family):
    import torch._dynamo
    from torch._dynamo.utils import counters
    from transformers import AutoProcessor

    from custom_modules.speedups import DEFAULTS, apply_speedups

    path = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(path)
    data = write_bench_data(tmp_path, "grounding", BATCH * BATCHES, family, TINY_MIN_PIXELS[family],
                            TINY_MAX_PIXELS[family])
    rows = json.loads((data / "bench_train.json").read_text())
    batches = [encode_batch(processor, rows[i:i + BATCH], "cpu") for i in range(0, len(rows), BATCH)]
    grids = [tuple(map(tuple, inputs["image_grid_thw"].tolist())) for inputs, _ in batches]
    lengths = {inputs["input_ids"].shape[1] for inputs, _ in batches}
    # after the settling batches come mixes of image grids not seen before, and the text lengths vary
    assert len(set(grids[SETTLED:]) - set(grids[:SETTLED])) >= 2 and len(lengths) > 2, (grids, lengths)

    # everything that runs on a CPU (Liger's loss and the parameter count belong to a GPU Trainer run)
    eager_settings = dict(DEFAULTS, lm_head_loss=False, parameter_count=False)
    eager, compiled = lora_model(path), lora_model(path)
    apply_speedups(eager, eager_settings, autocast=False)
    torch._dynamo.reset()
    counters.clear()
    changed = apply_speedups(compiled, dict(eager_settings, compile_vision=True, compile_language=True),
                             autocast=False)
    assert changed["compile_vision"] > 0 and changed["compile_language"] > 0

    graphs = []
    for inputs, labels in batches:
        expected_loss, expected_grads = loss_and_grads(eager, inputs, labels)
        loss, grads = loss_and_grads(compiled, inputs, labels)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
        assert grads.keys() == expected_grads.keys() and grads
        for name in grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0
    assert graphs[SETTLED - 1:] == [graphs[SETTLED - 1]] * (BATCHES - SETTLED + 1), graphs  # no recompile storm
