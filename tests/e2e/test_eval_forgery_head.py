"""`eval run --task forgery` on a forgery head checkpoint scores with the head (the checkpoint's own mode),
and on a plain LoRA says that there is no head."""
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from converters.__main__ import main as convert
from custom_modules.forgery.checkpoint import load_checkpoint, save_checkpoint
from custom_modules.forgery.data import read_rows
from custom_modules.forgery.evaluate import predict
from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.settings import parse_settings
from eval.run import run_eval
from tools.synthetic_data import make_forgery

TINY = {"head_blocks": [0, 1], "head_dim": 16, "fusion_tokens": 2, "mask_size": 16}


@pytest.fixture(scope="module")
def forgery_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("forgery_head")
    out = root / "data"
    assert convert(["forgery", "--input", str(make_forgery(root / "src", n=8, seed=2)), "--out", str(out)]) == 0
    return out


def test_head_checkpoint_is_scored_by_its_head(forgery_data, tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_5_vl")
    processor = AutoProcessor.from_pretrained(model_dir)
    torch.manual_seed(0)
    model, _ = prepare_model(AutoModelForImageTextToText.from_pretrained(model_dir),
                             parse_settings(dict(TINY, mode="vit_lora_head")), processor.tokenizer)
    with torch.no_grad():  # a head that says something other than its initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(model, tmp_path / "ckpt")

    metrics = run_eval("forgery", str(model_dir), forgery_data, tmp_path / "run", adapter=str(tmp_path / "ckpt"),
                       split="train", limit=4, batch_size=2, java_metrics=False)
    assert metrics["convention"]["forgery_head"] == f"used: {tmp_path / 'ckpt' / 'forgery_head.safetensors'}"
    assert metrics["convention"]["score_source"].startswith("the checkpoint's forgery vit_lora_head score")
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]

    loaded, modules = load_checkpoint(AutoModelForImageTextToText.from_pretrained(model_dir), tmp_path / "ckpt",
                                      processor.tokenizer)
    rows = read_rows(forgery_data / "forgery_train.json", 4)
    expected, _, _ = predict(loaded, modules, processor, rows, batch_size=4)
    assert [p["score"] for p in predictions] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    assert [p["prediction"] for p in predictions] == ["fake" if r["score"] >= 0.5 else "real" for r in expected]
    assert [p["label"] for p in predictions] == [r["label"] for r in rows]


def test_plain_lora_says_there_is_no_head(forgery_data, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model_dir = tiny_model_dir("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    (tmp_path / "lora" / "trainer_log.jsonl").write_text("")
    metrics = run_eval("forgery", str(model_dir), forgery_data, tmp_path / "run", adapter=str(tmp_path / "lora"),
                       split="train", limit=2, max_new_tokens=2, java_metrics=False)
    assert metrics["convention"]["forgery_head"] == "none in the checkpoint: P(fake) comes from the answer words"
