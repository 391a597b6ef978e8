"""Image-forgery detection beside a Qwen-VL language model, trainer-neutral (torch + transformers only).

settings.py  the `qwenvl_recipes: {forgery: ...}` block: modes T1-T5 + head pretraining, validated
vit.py       ViT block discovery, hidden-state capture, patch grids, LoRA target names
head.py      detection head (image logit + patch heatmap) and fusion projector (head -> LM tokens)
attach.py    attach head/fusion to a loaded model; the forward that adds the forgery losses
losses.py    BCE (image) + heatmap loss (masked) + weighted LM loss
data.py      rows (converter output) -> processor batches with labels and masks
metrics.py   image AUROC/AP/F1/accuracy, pixel F1/IoU
evaluate.py  predictions -> per-sample CSV + metrics JSON (CLI)
checkpoint.py save/load adapters + head weights together
callbacks.py transformers TrainerCallback: step, checkpoint saving, best-by-AUROC
lora.py      LoRA for a mode outside the trainers (chosen ViT blocks / LM attention), then attach

The plain training loop, its CPU learning proof and the GPU benchmark are tools: tools/forgery_loop.py,
tools/forgery_proof.py, tools/bench_forgery.py.
"""
