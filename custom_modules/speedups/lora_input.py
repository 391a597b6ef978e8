"""LoRA layers that leave their input in the autocast dtype instead of copying it to fp32.

Both trainers keep LoRA weights in fp32 (peft's `autocast_adapter_dtype`) and train under bf16 autocast. peft then
copies every LoRA layer's input to fp32, runs the dropout on the fp32 copy, and autocast copies it back to bf16
for the lora_A matmul: two full-activation copies per adapted projection, 196 of them a step for Qwen2.5-VL-7B
(docs/performance.md has the profile). Under autocast the matmul sees bf16 either way, so skipping peft's cast
changes only where the dropout's result is rounded to bf16 (once, in both cases); the weights, their fp32
optimizer states and the gradients stay as they were. peft exposes the switch (`cast_input_dtype_enabled`, used by
`peft.helpers.disable_input_dtype_casting`); this module turns it off for training under autocast only.
"""
from __future__ import annotations


def keep_lora_input_dtype(model) -> int:
    """Turn off the fp32 input copy of every peft tuner layer in `model`; returns how many layers changed.
    Only for training under bf16/fp16 autocast: without autocast a bf16 input meets fp32 LoRA weights."""
    changed = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", False):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed
