"""Model FLOPs utilisation: the one formula every benchmark of this project uses.

A training step must do, per LM token, 2·N_lm FLOPs forward and 2·N_lm for the input gradients; a fully trained
weight adds 2·N_lm for its own gradient. So the LM counts 4·N_lm·tokens under LoRA (frozen base weights) and
6·N_lm·tokens when fully tuned. The vision tower counts what is asked of it: a frozen tower runs forward only,
since nothing upstream of it needs a gradient (2·N_vis·patches); LoRA inside it needs the input gradients of
its blocks too (4·); a fully trained tower 6·. A mode whose step never runs the LM (the forgery head's ViT-only
modes) counts no LM work: its MFU is the vision tower's. N_lm excludes the input embedding and the output projection (the
lm_head matmul is left out, so MFU slightly underestimates), and recomputation under gradient checkpointing is
not counted (model FLOPs, not hardware FLOPs). The peak is the dense bf16 rate of an H100 SXM / H200.
"""
from __future__ import annotations

PEAK_BF16_FLOPS = 989e12
# FLOPs per weight and token (LM) or patch (vision tower), by how the part is trained. A frozen LM still passes
# gradients back to what trains before it (the merger, the tower), so it costs as much as a LoRA-tuned one; the
# tower comes first, so frozen it runs forward only. "not_run": the step does not call the LM at all.
LM_FLOPS = {"not_run": 0, "frozen": 4, "lora": 4, "full": 6}
VISION_FLOPS = {"frozen": 2, "lora": 4, "full": 6}


def step_flops(n_lm: int, n_vis: int, tokens: int, patches: int, lm: str = "lora", vision: str = "frozen") -> float:
    """Model FLOPs of `tokens` LM tokens and `patches` vision patches; `lm` / `vision` is how each part is
    trained: "frozen", "lora" or "full" (training_mode), or for the LM "not_run"."""
    for part, mode, table in (("lm", lm, LM_FLOPS), ("vision", vision, VISION_FLOPS)):
        if mode not in table:
            raise ValueError(f"{part}={mode!r}: expected one of {sorted(table)}")
    return LM_FLOPS[lm] * n_lm * tokens + VISION_FLOPS[vision] * n_vis * patches


def mfu(flops: float, seconds: float, peak_flops: float = PEAK_BF16_FLOPS) -> float:
    """The fraction of the peak that `flops` of model work in `seconds` is."""
    return flops / seconds / peak_flops


def training_mode(named_parameters, prefix: str) -> str:
    """How the weights whose name contains `prefix` (".language_model.", ".visual.blocks.") are trained: "full"
    if any base weight of them is trainable, "lora" if only adapter weights are, else "frozen"."""
    modes = {"lora" if "lora_" in name else "full"
             for name, p in named_parameters if prefix in f".{name}" and p.requires_grad}
    return "full" if "full" in modes else "lora" if modes else "frozen"
