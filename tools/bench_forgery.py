"""Forgery T1 / T3 training speed and memory on a full-size model with random weights (GPU, no download).

    python -m tools.bench_forgery --model qwen2_5_vl_7b --out $OUT/forgery_bench.json \
        [--batch 4] [--steps 6] [--warmup 2] [--image 448] [--lora-rank 64] [--modes vit_lora_head hybrid]

Inputs are built without a processor: a 448x448 image is a 32x32 patch grid (256 LM tokens after the 2x2
merge) in a Qwen chat prompt ending in a one-token answer; labels and masks are random. Each mode runs
with and without gradient checkpointing; a failing configuration is recorded and the rest still run.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import traceback

import torch

from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.settings import parse_settings
from custom_modules.model_configs import SPECIAL_TOKEN_IDS, full_size_config

ANSWER_IDS = {"real": 1933, "fake": 12418}  # any two ids: random weights give words no meaning


class WordIds:
    """The one tokenizer call attach makes (answer words -> first token id), without tokenizer files."""

    def encode(self, word: str, add_special_tokens: bool = False) -> list[int]:
        return [ANSWER_IDS[word]]


def make_batch(config, batch: int, image: int, device) -> dict:
    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    grid = image // patch
    image_tokens = grid * grid // merge ** 2
    ids = SPECIAL_TOKEN_IDS
    prompt = [ids["<|im_start|>"]] + [872] * 20 + [ids["<|vision_start|>"]] + [ids["<|image_pad|>"]] * image_tokens
    prompt += [ids["<|vision_end|>"]] + [3555] * 16 + [ids["<|im_end|>"], ids["<|im_start|>"], 77091, 198]
    labels_img = torch.arange(batch) % 2
    rows = [prompt + [ANSWER_IDS["fake" if y else "real"], ids["<|im_end|>"]] for y in labels_img.tolist()]
    input_ids = torch.tensor(rows, device=device)
    labels = torch.full_like(input_ids, -100)
    labels[:, len(prompt):] = input_ids[:, len(prompt):]
    channels = 3 * config.vision_config.temporal_patch_size * patch * patch
    masks = torch.zeros(batch, 64, 64, device=device)
    masks[labels_img.bool(), 16:40, 20:44] = 1.0
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values": torch.randn(batch * grid * grid, channels, device=device, dtype=torch.bfloat16),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * batch, device=device),
            "forgery_labels": labels_img.float().to(device), "forgery_masks": masks,
            "forgery_mask_valid": torch.ones(batch, dtype=torch.bool, device=device)}


def bench(model_id: str, mode: str, checkpointing: bool, batch: int, steps: int, warmup: int, image: int,
          lora_rank: int) -> dict:
    from transformers import AutoModelForImageTextToText

    device = torch.device("cuda")
    config = full_size_config(model_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    settings = parse_settings({"mode": mode, "fusion_tokens": 4})
    model, modules = prepare_model(model, settings, WordIds(), lora_rank=lora_rank, lora_alpha=lora_rank // 4)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    data = make_batch(config, batch, image, device)
    memory_before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    losses = []
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {"model": model_id, "mode": mode, "grad_checkpointing": checkpointing, "batch": batch,
              "image": f"{image}x{image}", "tokens_per_sample": int(data["input_ids"].shape[1]) + (
                  settings.fusion_tokens if settings.spec.fusion else 0),
              "lora_rank": lora_rank, "trainable_params": sum(p.numel() for p in params),
              "samples_per_s": round(batch * steps / elapsed, 2),
              "memory_before_gib": round(memory_before / 2 ** 30, 2),
              "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
              "losses": [round(v, 4) for v in losses], "head_blocks": list(modules.head_blocks)}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_forgery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2_5_vl_7b")
    parser.add_argument("--modes", nargs="+", default=["vit_lora_head", "hybrid"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image", type=int, default=448)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    results = []
    for mode in args.modes:
        for checkpointing in (True, False):
            try:
                result = bench(args.model, mode, checkpointing, args.batch, args.steps, args.warmup, args.image,
                               args.lora_rank)
            except Exception:  # one failing configuration must not hide the others' figures
                result = {"mode": mode, "grad_checkpointing": checkpointing, "error": traceback.format_exc()[-3000:]}
            # the attached forward references its model (a cycle): collect it before the next measurement
            gc.collect()
            torch.cuda.empty_cache()
            print(json.dumps(result), flush=True)
            results.append(result)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
