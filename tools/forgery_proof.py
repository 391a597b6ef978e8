"""Proof of learning: T1 and T3 on synthetic spliced forgeries with the tiny Qwen2.5-VL, on CPU.

    python -m tools.forgery_proof --model .cache/tiny-models/qwen2_5_vl --out reports/forgery_proof \
        [--n 96] [--epochs 10] [--modes vit_lora_head hybrid]

Data: tools.synthetic_data.make_forgery (textured images, half with a pasted colour-noise patch + mask),
converted by `python -m converters forgery`. The rows are re-split 50/25/25 into train / val / test so that
every split holds both classes and the test rows stay unseen by checkpoint selection. Each mode trains with
our loop; the epoch with the best val AUROC is kept (best_by_AUROC) and then scored on the untouched test rows:
figures in proof.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from custom_modules.forgery.data import read_rows

SETTINGS = {"head_blocks": [0, 1], "head_dim": 32, "fusion_tokens": 2, "mask_size": 32}


def synthetic_splits(out_dir: Path, n: int, seed: int) -> dict[str, list[dict]]:
    from converters.__main__ import main as convert
    from tools.synthetic_data import make_forgery

    source = make_forgery(out_dir / "source", n=n, seed=seed)
    convert(["forgery", "--input", str(source), "--out", str(out_dir / "data"), "--target", "swift"])
    rows = sorted((row for split in ("train", "val") for row in read_rows(out_dir / "data" / f"forgery_{split}.jsonl")),
                  key=lambda row: row["images"][0])
    # make_forgery alternates real / fake, so each split takes one even and one odd row of every 8
    return {"train": [r for i, r in enumerate(rows) if i % 8 in (0, 3, 4, 5)],
            "val": [r for i, r in enumerate(rows) if i % 8 in (1, 6)],
            "test": [r for i, r in enumerate(rows) if i % 8 in (2, 7)]}


def prove(model_dir: str, out_dir: Path, n: int, epochs: int, modes: list[str], seed: int = 0,
          lr: float = 1e-2, batch_size: int = 4) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from custom_modules.forgery.checkpoint import BEST_DIR, load_checkpoint
    from custom_modules.forgery.evaluate import evaluate
    from custom_modules.forgery.lora import prepare_model
    from custom_modules.forgery.settings import parse_settings
    from tools.forgery_loop import train

    out_dir = Path(out_dir)
    splits = synthetic_splits(out_dir, n, seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    report = {"n": n, "epochs": epochs, "lr": lr, "split_sizes": {k: len(v) for k, v in splits.items()}, "modes": {}}
    for mode in modes:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
        model, modules = prepare_model(model, parse_settings(dict(SETTINGS, mode=mode)), processor.tokenizer)
        start = time.perf_counter()
        history = train(model, modules, processor, splits["train"], epochs=epochs, lr=lr, batch_size=batch_size,
                        eval_rows=splits["val"], out_dir=out_dir / mode, seed=seed, log=lambda entry: None)
        seconds = time.perf_counter() - start
        best, best_modules = load_checkpoint(AutoModelForImageTextToText.from_pretrained(model_dir),
                                             out_dir / mode / BEST_DIR, processor.tokenizer)
        test, _ = evaluate(best, best_modules, processor, splits["test"], batch_size=batch_size)
        report["modes"][mode] = {"train_seconds": round(seconds, 1),
                                 "losses": [round(h["loss"], 4) for h in history],
                                 "val_auroc": [h["auroc"] for h in history],
                                 "best_val_auroc": max(h["auroc"] for h in history), "test": test}
    (out_dir / "proof.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.forgery_proof", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="tiny Qwen2.5-VL dir (python -m tools.tiny_models)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=96, help="synthetic images (half spliced)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["vit_lora_head", "hybrid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    report = prove(args.model, args.out, args.n, args.epochs, args.modes, args.seed, args.lr, args.batch_size)
    for mode, figures in report["modes"].items():
        test = figures["test"]
        print(f"{mode}: best val AUROC {figures['best_val_auroc']:.3f}; test AUROC {test['auroc']:.3f} AP "
              f"{test['ap']:.3f} F1 {test['f1']:.3f} acc {test['accuracy']:.3f} pixel F1 {test['pixel_f1']:.3f} "
              f"IoU {test['pixel_iou']:.3f}; {figures['train_seconds']} s")


if __name__ == "__main__":
    main()
