"""Write a full-size Qwen VL checkpoint with random weights, for speed and memory benchmarks (no download).

The architecture comes from `custom_modules.model_configs.full_size_config(model_id)`, the tokenizer and processor from
`tools.tiny_models` (the real Qwen BPE vocabulary and chat template) with the real pixel limits, so both trainers
load the folder exactly as they load the published checkpoint. Weights are drawn on the GPU when there is one
(a 7B model initialises in seconds there) and saved in bf16 (`--tiny`: fp32, see main).

    python -m tools.random_checkpoint --model qwen2_5_vl_7b --out /tmp/ckpt/qwen2_5_vl_7b
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from qwenvl_recipes.io import staged_dir
from custom_modules.model_configs import FAMILY_OF_MODEL, FULL_SIZE, SPECIAL_TOKEN_IDS, full_size_config
from tools.model_configs import tiny_config

SEED = 1234
# The published processors' pixel limits (preprocessor_config.json of the Instruct checkpoints).
REAL_PIXELS = {"qwen2_vl": (56 * 56, 28 * 28 * 16384), "qwen2_5_vl": (56 * 56, 28 * 28 * 16384),
               "qwen3_vl": (65536, 16777216)}
STAMP = "random_checkpoint.json"


def build_random_checkpoint(model_id: str, out_dir: str | os.PathLike, config=None, device: str | None = None,
                            dtype: str = "bfloat16") -> Path:
    """Save a random-weight checkpoint of `model_id` to `out_dir` (atomically) in `dtype`; `config` overrides the
    architecture (the tests pass a tiny one). Reuses a complete earlier build of the same model id and dtype."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tools.tiny_models import build_processor, build_tokenizer

    out_dir = Path(out_dir)
    family = FAMILY_OF_MODEL[model_id]
    config = config if config is not None else full_size_config(model_id)
    stamp = {"model_id": model_id, "seed": SEED, "hidden_size": config.get_text_config().hidden_size, "dtype": dtype}
    if (out_dir / STAMP).exists() and json.loads((out_dir / STAMP).read_text()) == stamp:
        return out_dir
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = [SPECIAL_TOKEN_IDS["<|im_end|>"], SPECIAL_TOKEN_IDS["<|endoftext|>"]]
    model.generation_config.pad_token_id = SPECIAL_TOKEN_IDS["<|endoftext|>"]
    min_pixels, max_pixels = REAL_PIXELS[family]
    processor = build_processor(family, build_tokenizer(family), min_pixels=min_pixels, max_pixels=max_pixels)

    with staged_dir(out_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / STAMP).write_text(json.dumps(stamp) + "\n")
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(FULL_SIZE), help="published checkpoint to mimic")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (reused if already complete)")
    parser.add_argument("--device", help="where to draw the weights (default: cuda if available)")
    parser.add_argument("--tiny", action="store_true",
                        help="the family's tiny test architecture instead (CPU checks of the benchmark pipeline)")
    args = parser.parse_args(argv)
    config = tiny_config(FAMILY_OF_MODEL[args.model]) if args.tiny else None
    # The tiny checks run on CPU, where LLaMA-Factory keeps a checkpoint's bf16 and a CPU without bf16 matrix
    # instructions (AVX512-BF16, AMX) emulates it: the tiny model's 152k-row LM head then takes seconds a step.
    dtype = "float32" if args.tiny else "bfloat16"
    print(build_random_checkpoint(args.model, args.out, config=config, device=args.device, dtype=dtype))


if __name__ == "__main__":
    main()
