"""The forgery loss: weighted image BCE + heatmap loss where a mask exists + the LM answer loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from custom_modules.forgery.head import HeadOutput


def upsample_heatmaps(heatmaps: list[torch.Tensor], size: int) -> torch.Tensor:
    """B x (H, W) logits -> (B, size, size) logits (bilinear), the frame masks are compared in."""
    return torch.cat([F.interpolate(h[None, None], size=(size, size), mode="bilinear", align_corners=False)[0]
                      for h in heatmaps])


def heatmap_loss(heat_logits: torch.Tensor, masks: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel BCE + soft Dice (Dice over images with manipulated pixels; BCE alone would favour background), over the
    images whose mask is `known` (B bools; default all). Rows are weighted, not selected: boolean indexing would
    make the host wait for the device, and the loss and its gradient are the same (0 where no row counts)."""
    weight = (torch.ones(len(masks), dtype=heat_logits.dtype, device=masks.device) if known is None
              else known.to(heat_logits.dtype))
    pixel_bce = F.binary_cross_entropy_with_logits(heat_logits, masks, reduction="none").flatten(1).mean(1)
    bce = (pixel_bce * weight).sum() / weight.sum().clamp_min(1)
    prob, target = torch.sigmoid(heat_logits).flatten(1), masks.flatten(1)
    region = weight * (target.amax(1) > 0)
    dice = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return bce + (dice * region).sum() / region.sum().clamp_min(1)


def forgery_loss(head: HeadOutput | None, labels: torch.Tensor | None, masks: torch.Tensor | None,
                 mask_valid: torch.Tensor | None, lm_loss: torch.Tensor | None, *, cls_weight: float,
                 heatmap_weight: float, lm_weight: float) -> tuple[torch.Tensor, dict]:
    """(total, parts). Heatmap terms use only samples whose mask is known (reals: all-zero masks); fakes
    without a mask are skipped and counted in parts["maskless_fakes"] (a tensor). Nothing here reads the device."""
    terms, parts = [], {}
    if head is not None and labels is not None:
        labels = labels.to(head.image_logits.dtype)
        bce = F.binary_cross_entropy_with_logits(head.image_logits, labels)
        terms.append(cls_weight * bce)
        parts["cls_loss"] = bce.detach()
        if masks is not None and heatmap_weight > 0:
            valid = mask_valid.bool()
            parts["maskless_fakes"] = ((~valid) & (labels > 0.5)).sum()  # a device count: read when logged
            heat = upsample_heatmaps(head.heatmaps, masks.shape[-1])
            hm = heatmap_loss(heat, masks.to(heat.dtype), valid)
            terms.append(heatmap_weight * hm)
            parts["heatmap_loss"] = hm.detach()
    if lm_loss is not None and lm_weight > 0:
        terms.append(lm_weight * lm_loss)
        parts["lm_loss"] = lm_loss.detach()
    if not terms:
        raise ValueError("forgery loss has no term: the batch lacks forgery_labels and the mode has no LM loss")
    return torch.stack([t.float() for t in terms]).sum(), parts
