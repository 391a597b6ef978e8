"""Counting, rates, ratios, tables and the record schema of the training benchmark (pure; unit-tested on CPU)."""

from __future__ import annotations

import statistics

GIB = 1024 ** 3
RECORD_KEYS = ("model", "trainer", "variant", "samples_per_s", "tokens_per_s", "peak_gib", "mfu", "device", "date",
               "data")
VARIANT_KINDS = ("seed_loop", "trainer_default", "trainer_tuned", "unsloth", "ours", "ours_24gib")


def count_params(model) -> tuple[int, int]:
    """(N_lm, N_vis) of a Qwen VL model, peft-wrapped or not: N_lm is the LM's non-embedding weights (input
    embedding and output projection excluded, tools/mfu.py), N_vis the vision tower's
    (encoder + merger); LoRA weights are not counted, nor the untrained original peft keeps beside a
    modules_to_save copy (the custom encoder's merger)."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    n_lm = n_vis = 0
    for name, param in model.named_parameters():
        if "lora_" in name or ".original_module." in name or id(param) in embeddings:
            continue
        if ".visual." in f".{name}":
            n_vis += param.numel()
        else:
            n_lm += param.numel()
    return n_lm, n_vis


def batch_count_values(inputs: dict, images_per_sample: int = 1) -> tuple:
    """batch_counts() without reading GPU tensors back: tokens and patches may be 0-d tensors, so counting does
    not synchronise the host with the GPU."""
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and mask.shape == input_ids.shape:
        tokens = (mask != 0).sum()  # LLaMA-Factory's packed masks hold segment ids, so count non-zeros
    elif mask is not None and mask.dim() == 4:
        # A block-diagonal mask (LLaMA-Factory's neat_packing under sdpa) lets every real token attend to itself
        # and masks the padding of a packed row out entirely, itself included: its diagonal tells them apart.
        diagonal = mask.diagonal(dim1=-2, dim2=-1)[:, 0]
        tokens = (diagonal == 0).sum() if mask.is_floating_point() else diagonal.sum()
    else:
        tokens = input_ids.numel()
    grid = inputs.get("image_grid_thw")
    patches = grid.prod(-1).sum() if grid is not None else 0
    samples = int(grid.shape[0]) // images_per_sample if grid is not None else int(input_ids.shape[0])
    return samples, tokens, patches, input_ids.numel()


def batch_counts(inputs: dict, images_per_sample: int = 1) -> tuple[int, int, int, int]:
    """(samples, tokens, patches, positions) of one collated batch: real tokens (padding excluded), ViT patches,
    samples counted by their images (every sample of a benchmark holds `images_per_sample`; rows would miscount
    packed batches), and the batch's token positions (padding included)."""
    return tuple(int(v) for v in batch_count_values(inputs, images_per_sample))


def summarise(step_ends: list[float], counts: list[tuple[int, int, int, int]], warmup: int) -> dict:
    """Steady-state rates from micro-step end times (seconds) and per-micro-step (samples, tokens, patches,
    positions): the window runs from the end of micro-step `warmup` to the end of the last one. `padding_share` is
    the share of the window's token positions that were padding."""
    if len(step_ends) != len(counts):
        raise ValueError(f"{len(step_ends)} step times but {len(counts)} step counts")
    if len(step_ends) - warmup < 1 or warmup < 1:
        raise ValueError(f"need at least one micro-step after {warmup} warm-up steps (>= 1), got {len(step_ends)}")
    seconds = step_ends[-1] - step_ends[warmup - 1]
    window = counts[warmup:]
    samples, tokens, patches, positions = (sum(c[i] for c in window) for i in range(4))
    return {"steps": len(window), "seconds": seconds, "samples": samples, "tokens": tokens, "patches": patches,
            "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "padding_share": 1 - tokens / positions if positions else 0.0}


RATIOS = {"ratio_vs_seed": "seed_loop", "ratio_vs_best_default": "trainer_default",
          "ratio_vs_best_tuned": "trainer_tuned", "ratio_vs_best_unsloth": "unsloth"}


def without_partial_training(record: dict) -> dict:
    """A measured record whose trainable weights did not all get a gradient, as a failure: its step trained less
    than its recipe does (the forgery head bypassed under Liger gave 11.5 M of 67.0 M in run AE), so its figures
    are not the recipe's. The figures stay in the error text; no ratio or report uses them."""
    trainable, with_grad = record.get("n_trainable"), record.get("n_trainable_with_grad")
    if record.get("error") or not trainable or with_grad is None or with_grad >= trainable:
        return record
    error = (f"only {with_grad:,} of {trainable:,} trainable values got a gradient (measured "
             f"{record['samples_per_s']:.2f} samples/s): the step trains less than the recipe")
    return dict(record, error=error, samples_per_s=None, tokens_per_s=None, peak_gib=None, mfu=None)


def add_ratios(records: list[dict]) -> list[dict]:
    """Each record of one model run gets its samples/s over the seed loop's, the faster trainer example's, the
    faster plainly tuned trainer's and the faster Unsloth variant's (None where that baseline is absent or
    failed)."""
    def best(kind):
        rates = [r["samples_per_s"] for r in records if r["variant"] == kind and r.get("samples_per_s")]
        return max(rates) if rates else None

    for key, kind in RATIOS.items():
        base = best(kind)
        for r in records:
            rate = r.get("samples_per_s")
            r[key] = rate / base if rate and base else None
    return records


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(records: list[dict]) -> str:
    """Markdown table: model, trainer, settings, samples/s, tokens/s, GiB, MFU, ratios (error text if failed)."""
    lines = ["| model | data | trainer | variant | settings | steps | samples/s | tokens/s | padding | peak GiB | "
             "MFU | x seed | x best example | x best tuned | x best Unsloth |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['model']} | {r.get('data', '')} | {r['trainer']} | {r['variant']} | {r.get('settings', '')} |"
        if r.get("error"):
            lines.append(f"{head} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        padding = r.get("padding_share")
        lines.append(
            f"{head} {r.get('steps', '')} | {_fmt(r['samples_per_s'], '.2f')} | {_fmt(r['tokens_per_s'], '.0f')} | "
            f"{_fmt(padding * 100 if padding is not None else None, '.0f')}% | {_fmt(r['peak_gib'], '.1f')} | "
            f"{_fmt(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f')}% | "
            + " | ".join(_fmt(r.get(key), '.2f') for key in RATIOS) + " |")
    return "\n".join(lines)


def format_rounds(records: list[dict]) -> str:
    """Markdown table of interleaved rounds (`run --repeat`): each variant's samples/s in every round, its median
    and its spread ((max - min) / median) over the rounds it completed."""
    rounds = sorted({r["round"] for r in records if "round" in r})
    names = list(dict.fromkeys(r["name"] for r in records if "round" in r))
    lines = ["| variant | " + " | ".join(f"round {i}" for i in rounds) + " | median samples/s | spread |",
             "|---|" + "---|" * (len(rounds) + 2)]
    for name in names:
        rate = {r["round"]: r.get("samples_per_s") for r in records if r.get("name") == name and "round" in r}
        done = sorted(v for v in rate.values() if v)
        median = statistics.median(done) if done else None
        spread = (done[-1] - done[0]) / median if median else None
        lines.append(f"| {name} | " + " | ".join(_fmt(rate.get(i), '.2f') for i in rounds) +
                     f" | {_fmt(median, '.2f')} | {_fmt(spread * 100 if spread is not None else None, '.1f')}% |")
    return "\n".join(lines)


LOSS_BLOCK = 20  # micro-steps a block of the loss table averages: single micro-steps' losses vary with their rows


def block_means(losses: list[float], block: int = LOSS_BLOCK) -> list[float]:
    """Mean loss of each whole block of `block` micro-steps (a shorter tail is left out)."""
    return [statistics.fmean(losses[i:i + block]) for i in range(0, len(losses) - block + 1, block)]


def add_loss_gaps(records: list[dict], block: int = LOSS_BLOCK) -> list[dict]:
    """Each record with losses whose trainer ran the same batches (`batch_digest`: the same rows in the same order,
    the same micro-batch) in an earlier record gets `loss_gap`, the largest relative difference of its block means
    from that first record's, and `loss_reference`, that record's name: an A/B of numerics (FP8 against bf16),
    where the curves differ only by what the variant changes."""
    firsts = {}
    for r in records:
        means = block_means(r.get("losses") or [], block)
        if not means:
            continue
        ref = firsts.setdefault((r["trainer"], r.get("batch_digest")), r)
        if ref is not r:
            r["loss_gap"] = max(abs(a - b) / abs(b) for a, b in zip(means, block_means(ref["losses"], block)))
            r["loss_reference"] = ref["name"]
    return records


def format_losses(records: list[dict], block: int = LOSS_BLOCK) -> str:
    """Markdown table of each variant's mean micro-step loss per block of `block` micro-steps (warm-up included)
    and its `loss_gap` from its reference, if it has one; empty when no record has a whole block."""
    rows = [(r, block_means(r.get("losses") or [], block)) for r in records]
    rows = [(r, means) for r, means in rows if means]
    if not rows:
        return ""
    n = max(len(means) for _, means in rows)
    lines = ["| trainer | variant | " + " | ".join(f"steps {i * block + 1}-{(i + 1) * block}" for i in range(n)) +
             " | largest gap | reference |", "|---|---|" + "---|" * (n + 2)]
    for r, means in rows:
        cells = [_fmt(means[i] if i < len(means) else None, ".4f") for i in range(n)]
        gap = "-" if r.get("loss_gap") is None else f"{r['loss_gap']:.2%}"
        lines.append(f"| {r['trainer']} | {r['name']} | " + " | ".join(cells) +
                     f" | {gap} | {r.get('loss_reference', '-')} |")
    return "\n".join(lines)


def check_record(record: dict) -> None:
    """Raise ValueError unless `record` follows the docs/performance.json schema."""
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}: {record}")
    if record["variant"] not in VARIANT_KINDS:
        raise ValueError(f"variant {record['variant']!r} is not one of {VARIANT_KINDS}")
    if not record.get("error") and not 0 < record["mfu"] < 1:
        raise ValueError(f"mfu must be a fraction, got {record['mfu']}")
