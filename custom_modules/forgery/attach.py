"""Attach the forgery head (and fusion projector) to a loaded Qwen-VL model, PEFT-wrapped or not.

`attach` registers the modules as the submodule `forgery` of the transformers model (so optimizers,
`.to()` and DDP see them) and replaces that model's `forward` with one that
- pops `forgery_labels`, `forgery_masks`, `forgery_mask_valid` from the batch,
- in fusion modes inserts `fusion_tokens` placeholder tokens after each `<|vision_end|>` (attention 1,
  label -100, M-RoPE positions recomputed) whose LM input embeddings become the projected head features,
- runs only the vision tower when the mode needs no LM (T1, T4, head pretraining),
- returns the combined loss (losses.forgery_loss) and the per-image scores; LM logits are computed only at
  the answer positions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from custom_modules.checkpoints import transformers_model
from custom_modules.forgery.head import DetectionHead, FusionProjector, HeadOutput
from custom_modules.forgery.losses import forgery_loss
from custom_modules.forgery.settings import ForgerySettings, resolve_blocks
from custom_modules.forgery.vit import BlockCapture, find_visual

IGNORE_INDEX = -100


@dataclass
class ForgeryOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None         # full LM logits are never computed (trainers test for None)
    answer_logits: torch.Tensor | None = None  # (B, 2) LM logits of the (negative, positive) answer words
    image_logits: torch.Tensor | None = None   # head logit per image (head modes)
    lm_fake_prob: torch.Tensor | None = None   # P(positive word) / P(positive or negative word) (LM modes)
    score: torch.Tensor | None = None          # the mode's final P(fake) per image


class ForgeryModules(nn.Module):
    """The trainable (or frozen) forgery parts plus per-forward state (captured ViT outputs, head output)."""

    def __init__(self, settings: ForgerySettings, vit_dim: int, lm_dim: int, head_blocks: tuple[int, ...],
                 answer_ids: tuple[int, int] | None):
        super().__init__()
        spec = settings.spec
        self.settings, self.head_blocks, self.answer_ids = settings, head_blocks, answer_ids
        self.head = DetectionHead(vit_dim, len(head_blocks), settings.head_dim) if spec.head else None
        self.fusion = (FusionProjector(2 * settings.head_dim, lm_dim, settings.fusion_tokens,
                                       settings.fusion_hidden_dropout) if spec.fusion else None)
        self.global_step = 0          # set by the training loop / callback (heatmap warm-up)
        self.maskless_fakes = 0       # fakes whose heatmap loss was skipped (no mask), since attach
        self.training_images = None   # data.TrainingImages: how the trainer sized images (set by the integration)
        self.capture: BlockCapture | None = None
        self.fusion_positions: torch.Tensor | None = None
        self.last_head: HeadOutput | None = None
        self.last_parts: dict = {}

    @property
    def spec(self):
        return self.settings.spec

    def head_output(self) -> HeadOutput:
        if self.last_head is None:
            self.last_head = self.head(*self.capture.layout())
        return self.last_head


def find_modules(model: nn.Module) -> ForgeryModules:
    for module in model.modules():
        if isinstance(module, ForgeryModules):
            return module
    raise ValueError("no forgery modules attached to this model (call attach first)")


def answer_token_ids(tokenizer, settings: ForgerySettings) -> tuple[int, int]:
    """(negative, positive) first token ids of the answer words, as they follow `<|im_start|>assistant\\n`."""
    ids = [tokenizer.encode(w, add_special_tokens=False)[0]
           for w in (settings.negative_response, settings.positive_response)]
    if ids[0] == ids[1]:
        raise ValueError(f"answer words {settings.negative_response!r} and {settings.positive_response!r} "
                         f"start with the same token {ids[0]}; choose words that differ in their first token")
    return ids[0], ids[1]


def build_modules(model: nn.Module, settings: ForgerySettings,
                  answers: tuple[int, int] | None = None) -> ForgeryModules:
    """The head / fusion sized for `model`'s ViT and LM, on the ViT's device, the head frozen in frozen-head modes."""
    hf = transformers_model(model)
    visual = find_visual(hf)
    head_blocks, _ = resolve_blocks(settings, len(visual.blocks))
    # the ViT width: Qwen2-VL's vision config calls it embed_dim (its hidden_size is the LM's)
    modules = ForgeryModules(settings, visual.patch_embed.embed_dim, hf.config.get_text_config().hidden_size,
                             head_blocks, answers)
    modules.to(device=next(visual.parameters()).device, dtype=torch.float32)
    if modules.head is not None:
        modules.head.requires_grad_(settings.spec.train_head)
    return modules


def attach(model: nn.Module, settings: ForgerySettings, tokenizer=None) -> ForgeryModules:
    """Add the forgery modules and forward to `model` (call after LoRA is applied, so the head stays trainable)."""
    hf = transformers_model(model)
    visual = find_visual(hf)
    spec = settings.spec
    if spec.lm and tokenizer is None:
        raise ValueError(f"mode {settings.mode} scores the answer word: attach needs the tokenizer")
    modules = build_modules(hf, settings, answer_token_ids(tokenizer, settings) if spec.lm else None)
    if modules.head is not None:
        modules.capture = BlockCapture(visual, modules.head_blocks)
    visual.patch_embed.register_forward_hook(functools.partial(_grad_into_trained_tower, visual))
    if modules.fusion is not None:
        hf.model.language_model.register_forward_pre_hook(functools.partial(_inject_fusion, modules),
                                                          with_kwargs=True)
    hf.add_module("forgery", modules)
    # the Trainer then scales the loss for gradient accumulation itself (our loss is a per-batch mean)
    hf.accepts_loss_kwargs = False
    hf.forward = functools.partial(_forgery_forward, hf, hf.forward, visual, modules)
    return modules


def _grad_into_trained_tower(visual: nn.Module, module, args, out: torch.Tensor) -> None:
    """patch_embed forward hook: the output requires a gradient when LoRA in the tower's blocks trains (a reentrant
    checkpoint records nothing unless its input requires one). A tower with nothing trainable in its blocks (T2,
    head pretraining: the head reads block outputs, its gradient needs none through the tower) records no graph:
    its blocks' activations are not kept and no backward pass runs through it for a gradient nothing reads."""
    if torch.is_grad_enabled() and not out.requires_grad and any(p.requires_grad for p in visual.blocks.parameters()):
        out.requires_grad_(True)


def keep_forgery_forward(model: nn.Module) -> bool:
    """Put the forgery forward back in front of the model's forward when something replaced it after `attach`: the
    transformers Trainer does at its start under `use_liger_kernel` (Liger binds its own forward to the instance),
    and the model would then train as a plain LM, the head and fusion without a gradient. The replacement becomes
    the forward the forgery one calls. Returns True if the forward had been replaced."""
    hf = transformers_model(model)
    forward = hf.forward
    if isinstance(forward, functools.partial) and forward.func is _forgery_forward:
        return False
    hf.forward = functools.partial(_forgery_forward, hf, forward, find_visual(hf), find_modules(hf))
    return True


def _inject_fusion(modules: ForgeryModules, module, args, kwargs):
    """language_model pre-hook: the placeholder positions' embeddings become the projected head features."""
    positions, modules.fusion_positions = modules.fusion_positions, None  # one-shot: later decode steps pass
    if positions is None:
        return None
    embeds = kwargs["inputs_embeds"]
    tokens = modules.fusion(modules.head_output().features).to(embeds.dtype)
    mask = positions.to(embeds.device).unsqueeze(-1).expand_as(embeds)
    kwargs["inputs_embeds"] = embeds.masked_scatter(mask, tokens.reshape(-1))
    return args, kwargs


def host_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of integer tensors, in one device-to-host transfer: the host waits for the device once."""
    flat = torch.cat([t.reshape(-1).long() for t in tensors.values()]).cpu()
    copies, start = {}, 0
    for name, tensor in tensors.items():
        copies[name] = flat[start:start + tensor.numel()].reshape(tensor.shape).to(tensor.dtype)
        start += tensor.numel()
    return copies


# The batch entries the fusion layout reads or grows, all integer tensors.
FUSION_LAYOUT_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "image_grid_thw", "video_grid_thw")
# What a fusion placeholder holds in each per-token entry (input_ids: the placeholder token id): attended, no label,
# a text token; loss_scale is ms-swift's per-token loss weight.
FUSION_FILL = {"attention_mask": 1, "labels": IGNORE_INDEX, "mm_token_type_ids": 0, "loss_scale": 0.0}
# The batch key of a layout done by the trainer's collator: the placeholders' (B, L) positions.
FUSION_POSITIONS = "fusion_positions"


def fusion_cut(ids, vision_end_id: int) -> int:
    """The position after a row's first <|vision_end|>, where the fusion placeholders go."""
    where = (torch.as_tensor(ids) == vision_end_id).nonzero()
    if len(where) == 0:
        raise ValueError("fusion tokens go after the image: a batch row has no <|vision_end|> token")
    return int(where[0]) + 1


def add_fusion_placeholders(sample: dict, count: int, token_id: int, vision_end_id: int) -> dict:
    """A trainer's encoded sample (per-token lists or 1-D tensors) with `count` placeholders after its first
    <|vision_end|> in every per-token entry: for the collator, whose trainer then pads the rows and computes the
    M-RoPE positions over them in its loader workers, as it does for any row, so the forward has nothing to lay out
    and the host never waits for the device to read the ids back."""
    ids = sample["input_ids"]
    cut = fusion_cut(ids, vision_end_id)
    out = dict(sample)
    for key, fill in {"input_ids": token_id, **FUSION_FILL}.items():
        value = sample.get(key)
        if value is None:
            continue
        if len(value) != len(ids):
            raise ValueError(f"sample entry {key!r} has {len(value)} values for {len(ids)} tokens: the fusion "
                             "placeholders cannot be placed in it")
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([value[:cut], torch.full((count,), fill, dtype=value.dtype), value[cut:]])
        else:
            out[key] = list(value[:cut]) + [fill] * count + list(value[cut:])
    return out


def fusion_positions(input_ids: torch.Tensor, count: int, vision_end_id: int) -> torch.Tensor:
    """(B, L) bools: the `count` placeholders after each padded row's first <|vision_end|>."""
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, ids in enumerate(input_ids):
        cut = fusion_cut(ids, vision_end_id)
        positions[row, cut:cut + count] = True
    return positions


def collator_fusion(samples: list[dict], settings: ForgerySettings, vision_end_id: int, pad):
    """For a trainer's collator: `pad(samples)` (the trainer's own collation) over samples with the mode's fusion
    placeholders, the batch then carrying their positions; modes without fusion collate the samples as they are."""
    if not settings.spec.fusion:
        return pad(samples)
    count = settings.fusion_tokens
    batch = pad([add_fusion_placeholders(s, count, settings.fusion_token_id, vision_end_id) for s in samples])
    batch[FUSION_POSITIONS] = fusion_positions(batch["input_ids"], count, vision_end_id)
    return batch


def insert_fusion_tokens(hf: nn.Module, kwargs: dict, count: int, token_id: int) -> tuple[dict, torch.Tensor]:
    """Insert `count` placeholder tokens after each row's first <|vision_end|>; recompute M-RoPE positions. For
    batches whose collator did not (evaluation, prediction, the seed's loop).

    The layout is integer bookkeeping row by row (transformers' `get_rope_index` loops over the rows with boolean
    indexing, `tolist` and `item`): on GPU tensors each of those is a wait for the device, ~10 a row. It runs on
    one host copy of the batch's ids instead, and the grown tensors go back without a wait."""
    device = kwargs["input_ids"].device
    host = host_copies({k: kwargs[k] for k in FUSION_LAYOUT_KEYS if kwargs.get(k) is not None})
    ids = host["input_ids"]
    cfg = hf.config
    cut = [fusion_cut(row, cfg.vision_end_token_id) for row in ids]

    def grow(tensor: torch.Tensor, fill) -> torch.Tensor:
        rows = [torch.cat([t[:c], torch.full((count,), fill, dtype=t.dtype), t[c:]]) for t, c in zip(tensor, cut)]
        return torch.stack(rows)

    grown = {"input_ids": grow(ids, token_id)}
    positions = grow(torch.zeros_like(ids, dtype=torch.bool), True)
    attention = host.get("attention_mask")
    grown["attention_mask"] = grow(attention if attention is not None else torch.ones_like(ids),
                                   FUSION_FILL["attention_mask"])
    for key in ("labels", "mm_token_type_ids"):
        if key in host:
            grown[key] = grow(host[key], FUSION_FILL[key])
    token_types = grown.get("mm_token_type_ids")
    if token_types is None:
        token_types = ((grown["input_ids"] == cfg.image_token_id).long()
                       + 2 * (grown["input_ids"] == cfg.video_token_id).long())
    grown["position_ids"], _ = hf.model.get_rope_index(
        input_ids=grown["input_ids"], mm_token_type_ids=token_types, image_grid_thw=host.get("image_grid_thw"),
        video_grid_thw=host.get("video_grid_thw"), attention_mask=grown["attention_mask"])
    out = dict(kwargs)
    out.pop("rope_deltas", None)
    # pageable host memory: the copy is staged before `to` returns, and the host does not wait for the device
    out.update({k: v.to(device, non_blocking=True) for k, v in grown.items()})
    return out, positions.to(device, non_blocking=True)


def lm_pass(original_forward, kwargs: dict, answer_ids: tuple[int, int]):
    """Run the LM computing logits only where needed: the answer-token positions when training (the LM
    loss, mean over answer tokens), else each row's last attended position (a prompt ending in
    `<|im_start|>assistant\\n`). With a 152k vocabulary this is most of the LM's activation memory.
    Returns (lm loss or None, (B, 2) logits of the (negative, positive) answer words at the answer position)."""
    kwargs = dict(kwargs)
    labels = kwargs.pop("labels", None)
    ids = kwargs["input_ids"]
    rows = torch.arange(ids.shape[0], device=ids.device)
    if labels is not None:
        targets = torch.full_like(labels, IGNORE_INDEX)
        targets[:, :-1] = labels[:, 1:]  # position i predicts token i + 1
        need = targets != IGNORE_INDEX
        if not need.any(1).all():
            raise ValueError("a batch row has no answer tokens in its labels (truncated by cutoff_len?)")
        first = need.int().argmax(1)
    else:
        attention = kwargs.get("attention_mask")
        first = (attention.cumsum(1).argmax(1) if attention is not None
                 else torch.full_like(rows, ids.shape[1] - 1))
        need = torch.zeros_like(ids, dtype=torch.bool)
        need[rows, first] = True
    keep = need.any(0).nonzero().squeeze(1)
    logits = original_forward(**kwargs, logits_to_keep=keep).logits
    if logits.shape[1] != len(keep):  # a forward that ignores logits_to_keep (Liger's) returns every position
        logits = logits[:, keep]
    column = torch.full((ids.shape[1],), -1, dtype=torch.long, device=ids.device)
    column[keep] = torch.arange(len(keep), device=ids.device)
    loss = None
    if labels is not None:
        kept = need[:, keep]
        loss = torch.nn.functional.cross_entropy(logits[kept].float(), targets[:, keep][kept])
    answer_logits = logits[rows, column[first]][:, list(answer_ids)]
    return loss, answer_logits


def _forgery_forward(hf, original_forward, visual, modules: ForgeryModules, **kwargs):
    labels = kwargs.pop("forgery_labels", None)
    masks = kwargs.pop("forgery_masks", None)
    mask_valid = kwargs.pop("forgery_mask_valid", None)
    spec, settings = modules.spec, modules.settings
    modules.last_head = None
    if modules.capture is not None:
        modules.capture.clear()
    has_image = kwargs.get("pixel_values") is not None
    laid_out = kwargs.pop(FUSION_POSITIONS, None)
    if modules.fusion is not None and has_image:
        if laid_out is None:
            kwargs, laid_out = insert_fusion_tokens(hf, kwargs, settings.fusion_tokens, settings.fusion_token_id)
        modules.fusion_positions = laid_out
    kwargs.pop("num_items_in_batch", None)  # the loss is a mean per batch (accepts_loss_kwargs is False)
    lm_loss = answer_logits = None
    if spec.lm:
        lm_loss, answer_logits = lm_pass(original_forward, kwargs, modules.answer_ids)
    else:
        if not has_image:
            raise ValueError(f"mode {settings.mode} needs pixel_values in every batch")
        visual(kwargs["pixel_values"].to(visual.dtype), grid_thw=kwargs["image_grid_thw"])
    head = modules.head_output() if spec.head and has_image else None

    scores, lm_prob, image_logits = [], None, None
    if head is not None:
        image_logits = head.image_logits
        scores.append((settings.score_mix if spec.lm else 1.0, torch.sigmoid(image_logits.float())))
    if spec.lm:
        lm_prob = torch.softmax(answer_logits.float(), dim=-1)[:, 1]
        scores.append((1.0 - settings.score_mix if head is not None else 1.0, lm_prob))
    score = sum(w * s for w, s in scores) if scores else None

    loss = None
    if labels is not None or lm_loss is not None:
        warm = modules.global_step < settings.heatmap_start_step
        loss, parts = forgery_loss(head, labels, masks, mask_valid, lm_loss, cls_weight=settings.cls_weight,
                                   heatmap_weight=0.0 if warm else settings.heatmap_weight,
                                   lm_weight=settings.lm_weight if spec.lm else 0.0)
        modules.maskless_fakes += parts.pop("maskless_fakes", 0)
        modules.last_parts = parts
    return ForgeryOutput(loss=loss, answer_logits=answer_logits, image_logits=image_logits, lm_fake_prob=lm_prob,
                         score=score)
