"""Build a tiny random Dinov2 encoder offline, deterministically (a RAD-DINO stand-in for tests).

Same architecture and file layout as microsoft/rad-dino (Dinov2Model + a preprocessor_config.json with its own
mean / std), tiny sizes: 56 px input, 14 px patches (a 4 x 4 grid = 16 tokens), width 32, 2 layers.

    python -m tools.tiny_dinov2 --out .cache/tiny-dinov2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from qwenvl_recipes.io import staged_dir

SEED = 1234
TINY_DINOV2 = dict(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   mlp_ratio=2)
# RAD-DINO's own normalisation (microsoft/rad-dino preprocessor_config.json).
RAD_DINO_MEAN = [0.5307, 0.5307, 0.5307]
RAD_DINO_STD = [0.2583, 0.2583, 0.2583]


def build_tiny_dinov2(out_dir: str | os.PathLike) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out_dir = Path(out_dir)
    torch.manual_seed(SEED)
    model = Dinov2Model(Dinov2Config(**TINY_DINOV2))
    side = TINY_DINOV2["image_size"]
    preprocessor = BitImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                     image_mean=RAD_DINO_MEAN, image_std=RAD_DINO_STD, do_convert_rgb=True)
    with staged_dir(out_dir) as staging:
        model.save_pretrained(staging)
        preprocessor.save_pretrained(staging)
        (staging / "tiny_dinov2.json").write_text(json.dumps({"seed": SEED, **TINY_DINOV2}) + "\n")
    return out_dir


def ensure_tiny_dinov2(out_dir: str | os.PathLike) -> Path:
    """The tiny encoder under `out_dir`, built once (its stamp file marks a complete build)."""
    out_dir = Path(out_dir)
    if not (out_dir / "tiny_dinov2.json").exists():
        build_tiny_dinov2(out_dir)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".cache/tiny-dinov2", help="folder that receives the checkpoint")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete checkpoint exists")
    args = parser.parse_args(argv)
    path = build_tiny_dinov2(args.out) if args.force else ensure_tiny_dinov2(args.out)
    print(path)


if __name__ == "__main__":
    main()
