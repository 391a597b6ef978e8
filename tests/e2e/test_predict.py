"""`eval predict` scores unlabelled images with a forgery checkpoint exactly as `eval run --task forgery` scores them,
and draws the head's maps; `eval run` draws its ROC / PR curves and a few maps, linked from its report.md."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from converters.__main__ import main as convert
from custom_modules.forgery.checkpoint import save_checkpoint
from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.settings import parse_settings
from eval.__main__ import main as eval_main
from eval.predict import ForgeryPredictor
from eval.run import run_eval
from tools.synthetic_data import make_forgery

TINY = {"head_blocks": [0, 1], "head_dim": 16, "fusion_tokens": 2, "mask_size": 16}


@pytest.fixture(scope="module")
def forgery_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    out = root / "data"
    assert convert(["forgery", "--input", str(make_forgery(root / "src", n=8, seed=2)), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """mode -> a checkpoint of that mode whose weights moved off their initial values."""
    made = {}

    def get(mode: str):
        if mode not in made:
            model_dir = tiny_model_dir("qwen2_5_vl")
            torch.manual_seed(0)
            model, _ = prepare_model(AutoModelForImageTextToText.from_pretrained(model_dir),
                                     parse_settings(dict(TINY, mode=mode)),
                                     AutoProcessor.from_pretrained(model_dir).tokenizer)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 0.05)
            made[mode] = tmp_path_factory.mktemp(mode) / "ckpt"
            save_checkpoint(model, made[mode])
        return made[mode]
    return get


@pytest.mark.parametrize("mode", ["hybrid", "lm_supervised"])
def test_predict_scores_images_as_eval_run(mode, forgery_data, checkpoint, tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("qwen2_5_vl")
    metrics = run_eval("forgery", str(model_dir), forgery_data, tmp_path / "run", adapter=str(checkpoint(mode)),
                       split="train", limit=4, batch_size=2, java_metrics=False)
    evaluated = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    listing = tmp_path / "images.txt"
    listing.write_text("# the eval run's images\n" + "".join(row["images"][0] + "\n" for row in evaluated))

    assert eval_main(["predict", "--model", str(model_dir), "--checkpoint", str(checkpoint(mode)), "--images",
                      str(listing), "--out", str(tmp_path / "predict"), "--batch-size", "3"]) == 0
    scored = [json.loads(line) for line in (tmp_path / "predict" / "scores.jsonl").read_text().splitlines()]
    assert [row["image"] for row in scored] == [row["images"][0] for row in evaluated]
    assert [row["p_fake"] for row in scored] == pytest.approx([row["score"] for row in evaluated], abs=1e-5)
    assert [row["prediction"] for row in scored] == [row["prediction"] for row in evaluated]
    assert [row["lm_answer"] for row in scored] == ["fake" if row["lm_prob"] >= 0.5 else "real" for row in scored]
    if mode == "hybrid":  # a head: one map per image, over the image
        assert [row["heatmap"] for row in scored] == [f"heatmaps/{n:06d}.png" for n in range(1, 5)]
        for row in scored:
            with Image.open(tmp_path / "predict" / row["heatmap"]) as picture:
                assert picture.format == "PNG"
        figures = ["figures/roc.png", "figures/pr.png"] + [f"figures/heatmap_{n}.png" for n in range(1, 5)]
    else:  # no head: no map
        assert [row["heatmap"] for row in scored] == [None] * 4
        assert not (tmp_path / "predict" / "heatmaps").exists()
        figures = ["figures/roc.png", "figures/pr.png"]
    assert metrics["figures"] == figures
    report = (tmp_path / "run" / "report.md").read_text()
    assert all(f"]({figure})" in report and (tmp_path / "run" / figure).is_file() for figure in figures)


def test_python_api_gives_the_maps(forgery_data, checkpoint, tiny_model_dir):
    predictor = ForgeryPredictor(str(tiny_model_dir("qwen2_5_vl")), checkpoint("hybrid"))
    images = sorted((forgery_data.parent / "src" / "images").glob("*.png"))[:2]
    scores = predictor.score(images)
    assert [s.image for s in scores] == [str(i) for i in images]
    assert all(s.heatmap.shape == (16, 16) and 0 <= s.heatmap.min() and s.heatmap.max() <= 1 for s in scores)
    assert all(s.prediction == ("fake" if s.p_fake >= 0.5 else "real") for s in scores)


def test_predict_errors_name_what_is_wrong(forgery_data, checkpoint, tiny_model_dir, tmp_path, capsys):
    model_dir = str(tiny_model_dir("qwen2_5_vl"))
    listing = tmp_path / "images.txt"
    listing.write_text("missing.png\n")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    images = str(forgery_data.parent / "src" / "images")
    cases = [(["--checkpoint", str(checkpoint("hybrid")), "--images", str(listing), "--out", str(tmp_path / "o")],
              f"{listing}, line 1: missing.png is not a file"),
             (["--checkpoint", str(tmp_path), "--images", images, "--out", str(tmp_path / "o")],
              f"--checkpoint {tmp_path}: no forgery_head.safetensors"),
             (["--checkpoint", str(checkpoint("hybrid")), "--images", images, "--out", str(taken)],
              f"--out {taken}: exists and is not an `eval predict` output")]
    for arguments, message in cases:
        assert eval_main(["predict", "--model", model_dir, *arguments]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
    assert (taken / "notes.txt").read_text() == "mine"
