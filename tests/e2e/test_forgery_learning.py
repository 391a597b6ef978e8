"""Proof of learning on CPU: T1 (ViT LoRA + head) and T3 (hybrid with fusion tokens and LM LoRA) learn to
separate synthetic spliced forgeries with the tiny Qwen2.5-VL. The longer run with held-out figures is
`python -m tools.forgery_proof` (docs/forgery.md)."""
import pytest

from tools.forgery_proof import prove


@pytest.fixture(scope="module")
def proof(tiny_model_dir, tmp_path_factory):
    return prove(str(tiny_model_dir("qwen2_5_vl")), tmp_path_factory.mktemp("proof"), n=128, epochs=6,
                 modes=["vit_lora_head", "hybrid"])


@pytest.mark.parametrize("mode", ["vit_lora_head", "hybrid"])
def test_mode_learns_to_detect_spliced_images(proof, mode):
    figures = proof["modes"][mode]
    assert figures["losses"][-1] < 0.9 * figures["losses"][0]
    assert figures["val_auroc"][0] < 0.8 < figures["best_val_auroc"]
    # the best-AUROC checkpoint, scored on 32 rows it never saw (neither training nor selection)
    assert figures["test"]["auroc"] >= 0.9
