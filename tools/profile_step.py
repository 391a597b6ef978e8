"""Where a LoRA training step's time goes: one full-size Qwen VL model (random weights, built on the GPU, nothing
saved), one batch of the benchmark's data (tools/bench_data.py: COCO-shaped by default), a plain
forward/backward/AdamW step, with speed levers switched on one after another in the same process.

    python3 -m tools.profile_step --model qwen2_5_vl_7b --batch 16 --out $OUT     # on the GPU machine

For each lever set it prints the vision tower's forward time, the whole step's time, MFU (tools/mfu.py) and a
torch.profiler table of the step's most expensive CUDA kernels, and writes them to OUT/profile_<model>.{json,txt}. Data loading is left out (the batch is built once), so the gap between this step
time and a trainer's is the trainer's own overhead. Levers (cumulative, in the order given):

    (every step under bf16 autocast with peft's fp32 adapter weights, as both trainers run LoRA with bf16: true)
    sdpa             transformers' default: the vision attention one sdpa call per window/image
    liger            Liger kernels on the model instance (fused linear + cross-entropy, RMSNorm, SwiGLU, RoPE)
    vision_attention custom_modules.speedups, one attention call per vision layer
    vision_positions custom_modules.speedups, Qwen3-VL's vision position tables from a cache per image size
    vision_mlp       custom_modules.speedups, the vision MLP over weights padded to a multiple of 128
    lora_input       custom_modules.speedups, no fp32 copy of LoRA inputs under autocast
    lora_addmm       custom_modules.speedups, LoRA's scaled update added in the lora_B matmul (in-place addmm)
    deepstack        custom_modules.speedups, Qwen3-VL's deepstack additions without a host-GPU sync
    lm_head_loss     custom_modules.speedups, Liger's LM head + cross-entropy over the labelled rows, in one chunk
    compile_vision   custom_modules.speedups, torch.compile of each vision block
    compile_language custom_modules.speedups, torch.compile of each language-model decoder layer (LoRA inside)
    no_dropout       LoRA dropout off (changes what is learned: only to size what dropout costs)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qwenvl_recipes.io import write_text_atomic
from tools.bench_data import write_bench_data
from tools.bench.records import count_params
from tools.bench.variants import BENCH_LIST, SEED_LORA, bench_of
from tools.bench.worker import encode_batch
from tools.mfu import mfu, step_flops
from custom_modules.model_configs import FAMILY_OF_MODEL

LEVERS = ("sdpa", "liger", "vision_attention", "vision_positions", "vision_mlp", "lora_input", "lora_addmm",
          "deepstack", "lm_head_loss", "compile_vision", "compile_language", "no_dropout")


def build(model_id: str, device: str, tiny: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from custom_modules.model_configs import full_size_config
    from tools.model_configs import tiny_config

    torch.manual_seed(0)
    config = tiny_config(FAMILY_OF_MODEL[model_id]) if tiny else full_size_config(model_id)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(**SEED_LORA))
    model.train()
    return model


def apply_lever(lever: str, model, family: str) -> None:
    import torch

    from custom_modules.speedups import DEFAULTS, apply_speedups

    if lever in DEFAULTS:
        apply_speedups(model, {k: k == lever for k in DEFAULTS}, autocast=True)
    elif lever == "liger":
        import liger_kernel.transformers as liger

        apply = {"qwen2_vl": liger.apply_liger_kernel_to_qwen2_vl, "qwen2_5_vl": liger.apply_liger_kernel_to_qwen2_5_vl,
                 "qwen3_vl": liger.apply_liger_kernel_to_qwen3_vl}[family]
        apply(model=model.get_base_model())
    elif lever == "no_dropout":
        for module in model.modules():
            if hasattr(module, "lora_dropout"):
                for name in module.lora_dropout:
                    module.lora_dropout[name] = torch.nn.Identity()


def timed(fn, reps: int) -> float:
    """Mean seconds of `fn()` over `reps` calls, GPU-synchronised."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - start) / reps


def measure(model, optimizer, inputs, labels, steps: int, warmup: int) -> dict:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def step():
        # bf16 autocast over bf16 weights and peft's fp32 adapters, as the trainers run with `bf16: true`
        with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def vision():
        with torch.no_grad():
            model.get_base_model().model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])

    timed(step, warmup)
    vit_s = timed(vision, 5)
    step_s = timed(step, steps)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed(step, 2)
    events = prof.key_averages()
    table = events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    gpu_busy_s = sum(e.self_device_time_total for e in kernels) / 1e6 / 2
    return {"vit_forward_s": vit_s, "step_s": step_s, "gpu_busy_s": gpu_busy_s,
            "cuda_launches_per_step": sum(e.count for e in events if e.key in ("cudaLaunchKernel",
                                                                                   "cuLaunchKernel",
                                                                                   "cudaLaunchKernelExC")) / 2,
            "sdpa_calls_per_step": sum(e.count for e in events
                                       if e.key == "aten::scaled_dot_product_attention") / 2,
            "peak_gib": torch.cuda.max_memory_allocated() / 1024 ** 3 if torch.cuda.is_available() else 0.0,
            "table": table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted({b.model for b in BENCH_LIST}))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per lever set")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--levers", nargs="+", choices=LEVERS,
                        default=["liger", "vision_attention", "vision_mlp", "lora_input", "compile_vision"])
    parser.add_argument("--data", choices=("coco", "ideal"), default="coco",
                        help="the batch's images and texts: COCO-shaped (default) or fixed squares "
                             "(tools/bench_data.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/qvr-profile")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture on CPU (checks the script)")
    args = parser.parse_args(argv)

    import torch

    from tools.random_checkpoint import REAL_PIXELS
    from tools.tiny_models import build_processor, build_tokenizer

    family, bench = FAMILY_OF_MODEL[args.model], bench_of(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_bench_data(Path(args.work) / args.model / args.data, bench.task, args.batch, family, *bench.pixels,
                            shape=args.data, resize=bench.resize)
    rows = json.loads((data / "bench_train.json").read_text())[:args.batch]
    device = "cpu" if args.tiny else "cuda"
    pixels = () if args.tiny else REAL_PIXELS[family]  # the tiny model's own limits, or the published ones
    processor = build_processor(family, build_tokenizer(family), *pixels)
    inputs, labels = encode_batch(processor, rows, device)
    model = build(args.model, device, args.tiny)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n_lm, n_vis = count_params(model)
    tokens, patches = int(inputs["attention_mask"].sum()), int(inputs["image_grid_thw"].prod(-1).sum())
    results, report = [], [f"{args.model}, batch {args.batch}: {tokens} tokens, {patches} patches a step, "
                           f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}, torch {torch.__version__}"]
    for lever in args.levers:
        apply_lever(lever, model, family)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = measure(model, optimizer, inputs, labels, args.steps, args.warmup)
        r.update(lever=lever, batch=args.batch, samples_per_s=args.batch / r["step_s"],
                 mfu=mfu(step_flops(n_lm, n_vis, tokens, patches), r["step_s"]))  # LM LoRA, frozen tower
        line = (f"+{lever}: step {r['step_s'] * 1e3:.0f} ms ({r['samples_per_s']:.2f} samples/s, MFU {r['mfu']:.1%}), "
                f"GPU busy {r['gpu_busy_s'] * 1e3:.0f} ms, ViT forward {r['vit_forward_s'] * 1e3:.0f} ms, "
                f"{r['cuda_launches_per_step']:.0f} launches, {r['sdpa_calls_per_step']:.0f} sdpa calls, "
                f"{r['peak_gib']:.1f} GiB")
        print(line, flush=True)
        report += ["", line, r.pop("table")]
        results.append(r)
    write_text_atomic(out / f"profile_{args.model}.json", json.dumps(results, indent=1))
    write_text_atomic(out / f"profile_{args.model}.txt", "\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
