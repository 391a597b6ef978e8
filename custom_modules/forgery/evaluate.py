"""Score forgery rows with a trained checkpoint: per-sample CSV + metrics JSON.

    python -m custom_modules.forgery.evaluate --model BASE_DIR --checkpoint CKPT_DIR --data val.jsonl \
        --out reports/forgery [--dataset-limit N] [--amp-dtype bf16] [--batch-size 4] [--threshold 0.5]

CKPT_DIR holds forgery_settings.json + forgery_head.safetensors (+ PEFT adapters): a training output dir,
a checkpoint-N dir or best_by_AUROC/. The score is the mode's P(fake): head probability (T1, T4, head
pretraining), the answer-word probability (T2), or their `score_mix` blend (T3, T5).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from qwenvl_recipes.io import write_text_atomic
from custom_modules.forgery.attach import ForgeryModules
from custom_modules.forgery.data import Collator, read_rows
from custom_modules.forgery.losses import upsample_heatmaps
from custom_modules.forgery.metrics import image_metrics, pixel_metrics

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast(device: torch.device, amp_dtype: str):
    dtype = AMP_DTYPES[amp_dtype]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def predict(model, modules: ForgeryModules, processor, rows: list[dict], batch_size: int = 4,
            amp_dtype: str = "fp32", progress: bool = False,
            heatmaps: bool = False) -> tuple[list[dict], list, list]:
    """Per-sample predictions, plus the heatmap probabilities and masks of fakes with a mask; with `heatmaps`,
    every record also carries its own map (`heatmap`: mask_size x mask_size probabilities, None without a head)."""
    device = next(model.parameters()).device
    collate = Collator(processor, modules.settings.mask_size, with_answer=False,
                       training_images=modules.training_images)
    was_training = model.training
    model.eval()
    records, prob_maps, masks = [], [], []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="forgery eval", disable=not progress):
        chunk = rows[start:start + batch_size]
        batch = collate(chunk)
        fields = {k: batch.pop(k) for k in ("forgery_labels", "forgery_masks", "forgery_mask_valid")}
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, amp_dtype):
            out = model(**batch)
        heat = (torch.sigmoid(upsample_heatmaps(modules.last_head.heatmaps, modules.settings.mask_size).float())
                .cpu() if modules.last_head is not None else None)
        for i, row in enumerate(chunk):
            record = {"image": row["images"][0], "label": int(row["label"]), "score": float(out.score[i]),
                      "head_prob": float(torch.sigmoid(out.image_logits[i].float())) if out.image_logits is not None else None,
                      "lm_prob": float(out.lm_fake_prob[i]) if out.lm_fake_prob is not None else None}
            if heatmaps:
                record["heatmap"] = heat[i].numpy() if heat is not None else None
            if heat is not None and row["label"] == 1 and bool(fields["forgery_mask_valid"][i]):
                prob_maps.append(heat[i].numpy())
                masks.append(fields["forgery_masks"][i].numpy())
            records.append(record)
    model.train(was_training)
    return records, prob_maps, masks


def evaluate(model, modules, processor, rows, threshold: float | None = None, **kwargs) -> tuple[dict, list[dict]]:
    records, prob_maps, masks = predict(model, modules, processor, rows, **kwargs)
    threshold = modules.settings.threshold if threshold is None else threshold
    metrics = image_metrics([r["label"] for r in records], [r["score"] for r in records], threshold)
    metrics.update(pixel_metrics(prob_maps, masks) if modules.head is not None else {})
    metrics["mode"] = modules.settings.mode
    return metrics, records


def write_report(out_dir: str | os.PathLike, metrics: dict, records: list[dict]) -> None:
    """metrics.json + predictions.csv, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    for name, text in (("metrics.json", json.dumps(metrics, indent=1) + "\n"), ("predictions.csv", buffer.getvalue())):
        write_text_atomic(out_dir / name, text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m custom_modules.forgery.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base model dir or hub id")
    parser.add_argument("--checkpoint", required=True, help="dir with forgery_head.safetensors (+ adapters)")
    parser.add_argument("--data", required=True, help="converter rows (.jsonl or .json) with label and mask")
    parser.add_argument("--out", required=True, help="output dir: metrics.json, predictions.csv")
    parser.add_argument("--dataset-limit", type=int, help="score only the first N rows")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="fp32")
    parser.add_argument("--threshold", type=float, help="image decision threshold (default: the recipe's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (otherwise one line)")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from custom_modules.forgery.checkpoint import load_checkpoint

    processor = AutoProcessor.from_pretrained(args.model)
    base = AutoModelForImageTextToText.from_pretrained(args.model).to(args.device)
    model, modules = load_checkpoint(base, args.checkpoint, processor.tokenizer)
    rows = read_rows(args.data, args.dataset_limit)
    metrics, records = evaluate(model, modules, processor, rows, threshold=args.threshold,
                                batch_size=args.batch_size, amp_dtype=args.amp_dtype, progress=True)
    write_report(args.out, metrics, records)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
