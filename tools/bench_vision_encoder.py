"""Speed and memory of stage 2 (merger + LM LoRA r64, encoder frozen) with random weights, plain torch loop.

Full-size Qwen3-VL config (custom_modules.model_configs) + a ViT-B/14 Dinov2 at 518 px (RAD-DINO's shape: 1369 tokens an
image), bf16, sdpa, AdamW. Prints one JSON line per setting (samples/s, tokens/s, peak GiB, MFU by tools/mfu.py:
LoRA LM, frozen encoder forward only) and writes them to --out.

    python -m tools.bench_vision_encoder --model qwen3_vl_8b --out results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from custom_modules.model_configs import PUBLISHED_ENCODERS
from custom_modules.vision_encoder.settings import parse_settings
from custom_modules.vision_encoder.training import apply_stage, param_groups, prepare_model
from tools.mfu import mfu, step_flops

ENCODERS = {  # Dinov2Config sizes
    "vit_b14": PUBLISHED_ENCODERS["microsoft/rad-dino"],
    "tiny": dict(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
}
LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_TOKENS, ANSWER_TOKENS = 24, 96  # a short instruction and a report-length answer


def save_random_encoder(kind: str, folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from tools.tiny_dinov2 import RAD_DINO_MEAN, RAD_DINO_STD

    sizes = ENCODERS[kind]
    Dinov2Model(Dinov2Config(**sizes)).save_pretrained(folder)
    side = {"height": sizes["image_size"], "width": sizes["image_size"]}
    BitImageProcessor(crop_size=side, image_mean=RAD_DINO_MEAN, image_std=RAD_DINO_STD).save_pretrained(folder)


def synthetic_batch(batch_size: int, image_side: int, tokens_per_image: int, merge_size: int, device) -> dict:
    """Token ids laid out like the chat template's: prompt, <vision_start>, N image pads, <vision_end>, answer."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 150000, (batch_size, PROMPT_TOKENS), generator=generator)
    answer = torch.randint(0, 150000, (batch_size, ANSWER_TOKENS), generator=generator)
    image = torch.cat([torch.full((batch_size, 1), 151652), torch.full((batch_size, tokens_per_image), 151655),
                       torch.full((batch_size, 1), 151653)], dim=1)
    input_ids = torch.cat([prompt, image, answer], dim=1)
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] - ANSWER_TOKENS] = -100
    grid = int(tokens_per_image**0.5) * merge_size
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "mm_token_type_ids": (input_ids == 151655).int().to(device),
        "labels": labels.to(device),
        "pixel_values": torch.randn(batch_size, 3, image_side, image_side, generator=generator).to(device),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch_size).to(device),
    }


def build_model(model_id: str, encoder_dir: Path, device):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3VLForConditionalGeneration

    from custom_modules.model_configs import full_size_config
    from tools.model_configs import tiny_config

    config = tiny_config("qwen3_vl") if model_id == "tiny" else full_size_config(model_id)
    settings = parse_settings({"encoder": "dinov2", "encoder_path": str(encoder_dir), "stage": 2,
                               "merger_lr": 2e-4, "lm_lr": 1e-4})
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16,
                                                               attn_implementation="sdpa")
    prepare_model(model, settings)
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, target_modules=LM_TARGETS,
                                             modules_to_save=["merger"]))
    apply_stage(model, settings)
    return model, settings


def parameter_counts(model) -> dict:
    counts = {"lm": 0, "encoder": 0, "merger": 0, "trainable": 0}
    for name, param in model.named_parameters():
        part = "merger" if "visual.merger." in name else "encoder" if "visual.encoder." in name else "lm"
        if "original_module." not in name and "lora_" not in name and "embed_tokens" not in name:  # lookups
            counts[part] += param.numel()
        counts["trainable"] += param.numel() if param.requires_grad else 0
    return counts


def run_setting(model, settings, batch: dict, gradient_checkpointing: bool, warmup: int, steps: int) -> dict:
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, settings, 1e-4), lr=1e-4)
    cuda = batch["input_ids"].is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize() if cuda else None
            start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    torch.cuda.synchronize() if cuda else None
    seconds = time.perf_counter() - start
    del optimizer
    batch_size, seq_len = batch["input_ids"].shape
    return {"seconds": seconds, "samples_per_s": batch_size * steps / seconds,
            "tokens_per_s": batch_size * seq_len * steps / seconds, "seq_len": seq_len,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "losses": losses}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen3_vl_8b", help="qwen3_vl_2b|4b|8b (full size) or tiny")
    parser.add_argument("--encoder", default="vit_b14", choices=sorted(ENCODERS))
    parser.add_argument("--settings", default="4:gc,8:gc", help="comma list of BATCH:gc|nogc")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument("--device", default="cuda", help="cpu runs the tiny model as a smoke test")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {"model": args.model, "encoder": args.encoder,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as encoder_dir:
        save_random_encoder(args.encoder, Path(encoder_dir))
        model, settings = build_model(args.model, Path(encoder_dir), device)
    adapter = model.get_base_model().model.visual
    side = ENCODERS[args.encoder]["image_size"]
    results["params"] = counts = parameter_counts(model)
    results["tokens_per_image"] = adapter.tokens_per_image
    prompt = synthetic_batch(1, side, adapter.tokens_per_image, adapter.spatial_merge_size, device)
    with torch.no_grad():
        model.eval()
        prompt_ids = {k: v for k, v in prompt.items() if k != "labels"}
        generated = model.generate(**prompt_ids, max_new_tokens=4, do_sample=False)
    results["generate_new_tokens"] = generated.shape[1] - prompt["input_ids"].shape[1]
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    for item in args.settings.split(","):
        batch_size, mode = item.split(":")
        batch = synthetic_batch(int(batch_size), side, adapter.tokens_per_image, adapter.spatial_merge_size, device)
        try:
            run = run_setting(model, settings, batch, mode == "gc", args.warmup, args.steps)
        except torch.OutOfMemoryError:
            run = {"error": "out of memory"}
            torch.cuda.empty_cache()
        if "error" not in run:
            # LM LoRA, frozen encoder (tools/mfu.py); per sample, times samples per second
            flops = step_flops(counts["lm"], counts["encoder"], run["seq_len"], adapter.tokens_per_image)
            run["mfu"] = mfu(flops * run["samples_per_s"], seconds=1.0)
        run.update(batch=int(batch_size), gradient_checkpointing=mode == "gc", image=f"{side}x{side}")
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
