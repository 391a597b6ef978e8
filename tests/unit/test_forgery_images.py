"""Forgery scoring feeds each image as training fed it: the training callback's evaluation, `eval run`'s head scorer
(with its figures) and `eval predict` give the model the patch grid that each trainer's own preprocessing gives at
the recipe's limits (LLaMA-Factory's Qwen2-VL plugin, ms-swift's Qwen2.5-VL template), as the checkpoint records
them, where the tiny processor's own limits (3136 to 50176 pixels) would give other grids."""
import dataclasses
import json
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from converters.__main__ import main as convert
from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import SETTINGS_FILE, load_checkpoint, save_checkpoint
from custom_modules.forgery.data import Collator, TrainingImages
from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.settings import parse_settings
from eval.predict import run_predict
from eval.run import run_eval
from tools.synthetic_data import make_forgery

REPO = Path(__file__).resolve().parents[2]
RECIPE = "qwen2_5_vl_7b_t1_vit_lora_head.yaml"
TINY = {"mode": "vit_lora_head", "head_blocks": [0, 1], "head_dim": 16, "mask_size": 16}
PROMPT = [{"role": "user", "content": "<image>Real or fake?"}, {"role": "assistant", "content": "real"}]


def recipe(trainer: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / "forgery" / trainer / RECIPE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    path = tiny_model_dir("qwen2_5_vl")
    return path, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def forgery_data(tmp_path_factory):
    """(converter output, the images it names): two reals, two fakes with masks."""
    root = tmp_path_factory.mktemp("forgery_images")
    source = make_forgery(root / "src", n=4, seed=2)
    assert convert(["forgery", "--input", str(source), "--out", str(root / "data")]) == 0
    return root / "data", sorted(str(p.resolve()) for p in (root / "src" / "images").iterdir())


def build(tiny):
    path, processor = tiny
    torch.manual_seed(0)
    return prepare_model(AutoModelForImageTextToText.from_pretrained(path), parse_settings(TINY), processor.tokenizer)


def own_grids(processor, images: list[str]) -> dict[str, tuple]:
    """The grids of the processor at its own limits, the images as they are (what scoring fed before)."""
    return {image: tuple(processor(text=["<|vision_start|><|image_pad|><|vision_end|>"],
                                   images=[Image.open(image).convert("RGB")])["image_grid_thw"][0].tolist())
            for image in images}


def grids_fed_by_each_path(tiny, forgery_data, training: TrainingImages, tmp_path, monkeypatch) -> dict[str, list]:
    """{evaluation path: [(image, grid fed to the model)]} for a head trained with `training` images."""
    model_dir, processor = tiny
    data, images = forgery_data
    seen = []
    collate = Collator.__call__

    def spy(self, rows):
        batch = collate(self, rows)
        seen.extend((str(Path(row["images"][0]).resolve()), tuple(grid))
                    for row, grid in zip(rows, batch["image_grid_thw"].tolist()))
        return batch
    monkeypatch.setattr(Collator, "__call__", spy)

    def taken() -> list:
        fed = list(seen)
        seen.clear()
        return fed
    fed = {}
    model, modules = build(tiny)
    modules.training_images = training  # as the trainer integration sets it
    callback = ForgeryCallback(dataclasses.replace(modules.settings, eval_file=str(data / "forgery_train.json")),
                               lambda: processor)
    callback.on_epoch_end(SimpleNamespace(output_dir=str(tmp_path), bf16=False, fp16=False),
                          SimpleNamespace(is_world_process_zero=True, epoch=1.0, global_step=1, log_history=[]),
                          None, model=model)
    fed["training callback"] = taken()
    save_checkpoint(model, tmp_path / "ckpt")
    recorded = json.loads((tmp_path / "ckpt" / SETTINGS_FILE).read_text())["training_images"]
    assert recorded == dataclasses.asdict(training)
    run_eval("forgery", str(model_dir), data, tmp_path / "run", adapter=str(tmp_path / "ckpt"), split="train",
             java_metrics=False)
    fed["eval run"] = taken()
    assert len(fed["eval run"]) == 2 * len(images)  # each image scored, then each drawn by the figures
    run_predict(str(model_dir), tmp_path / "ckpt", data.parent / "src" / "images", tmp_path / "predict")
    fed["eval predict"] = taken()
    return fed


def assert_fed_as_trained(fed: dict[str, list], trained: dict[str, tuple]) -> None:
    for path, grids in fed.items():
        assert grids, path
        assert [grid for _, grid in grids] == [trained[image] for image, _ in grids], path


def test_llamafactory_checkpoint_is_scored_at_its_plugins_grid(tiny, forgery_data, tmp_path, monkeypatch):
    from llamafactory.data.mm_plugin import get_mm_plugin

    processor, images = tiny[1], forgery_data[1]
    config = recipe("llamafactory")
    plugin = get_mm_plugin(config["template"], image_token="<|image_pad|>")
    # what the trainer hands its plugin: the model's processor, with the recipe's image_min/max_pixels
    lf_processor = SimpleNamespace(image_processor=processor.image_processor,
                                   image_min_pixels=config["image_min_pixels"],
                                   image_max_pixels=config["image_max_pixels"])
    trained = {image: tuple(plugin._get_mm_inputs([image], [], [], lf_processor)["image_grid_thw"][0].tolist())
               for image in images}
    assert not set(trained.items()) & set(own_grids(processor, images).items())
    training = TrainingImages("llamafactory", config["image_min_pixels"], config["image_max_pixels"])
    assert_fed_as_trained(grids_fed_by_each_path(tiny, forgery_data, training, tmp_path, monkeypatch), trained)


SWIFT_GRIDS = """
import dataclasses, json, os, sys
os.environ.update({name: str(value) for name, value in json.loads(sys.argv[2])["ENV"].items()})  # as swift exports it
from swift.model import get_processor
from swift.template import get_template
import custom_modules.integrations.swift_plugin  # registers the recipe's template
from custom_modules.integrations.swift_forgery import training_images
config = json.loads(sys.argv[2])
processor = get_processor(sys.argv[1], model_type=config["model_type"], check_model=False)
template = get_template(processor, template_type=config["template"])
grids = {image: template.encode({"messages": json.loads(sys.argv[4]), "images": [image]})["image_grid_thw"][0].tolist()
         for image in json.loads(sys.argv[3])}
print(json.dumps({"recorded": dataclasses.asdict(training_images(processor)), "grids": grids}))
"""


def test_swift_checkpoint_is_scored_at_its_templates_grid(tiny, forgery_data, tmp_path, monkeypatch, swift_bin):
    processor, images = tiny[1], forgery_data[1]
    config = recipe("swift")
    result = subprocess.run([str(swift_bin / "python"), "-c", SWIFT_GRIDS, str(tiny[0]), json.dumps(config),
                             json.dumps(images), json.dumps(PROMPT)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    swift = json.loads(result.stdout.strip().splitlines()[-1])
    # what the callback records is what swift resized training images into
    assert swift["recorded"] == {"resize": "swift", "min_pixels": config["ENV"]["MIN_PIXELS"],
                                 "max_pixels": config["ENV"]["MAX_PIXELS"]}
    trained = {image: tuple(grid) for image, grid in swift["grids"].items()}
    assert not set(trained.items()) & set(own_grids(processor, images).items())
    training = TrainingImages(**swift["recorded"])
    assert_fed_as_trained(grids_fed_by_each_path(tiny, forgery_data, training, tmp_path, monkeypatch), trained)


def test_a_checkpoint_without_recorded_images_is_scored_at_the_processors_limits_with_one_warning(
        tiny, forgery_data, tmp_path, caplog):
    model, _ = build(tiny)
    save_checkpoint(model, tmp_path / "ckpt")
    settings_file = tmp_path / "ckpt" / SETTINGS_FILE
    saved = json.loads(settings_file.read_text())
    del saved["training_images"]  # as checkpoints were saved before they recorded it
    settings_file.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="custom_modules.forgery.checkpoint"):
        _, modules = load_checkpoint(AutoModelForImageTextToText.from_pretrained(tiny[0]), tmp_path / "ckpt",
                                     tiny[1].tokenizer)
    assert modules.training_images is None
    assert [r.getMessage() for r in caplog.records if r.name == "custom_modules.forgery.checkpoint"] == [
        f"{settings_file} records no training_images (saved before checkpoints recorded how training sized images): "
        "scoring assumes the processor's own pixel limits, no resize before it; for training's grid add "
        '"training_images": {"resize": "llamafactory" or "swift", "min_pixels": N, "max_pixels": N} with the '
        "recipe's limits"]
    rows = [{"messages": PROMPT, "images": [image], "label": 0, "mask": None} for image in forgery_data[1]]
    fed = Collator(tiny[1], 16, with_answer=False, training_images=modules.training_images)(rows)["image_grid_thw"]
    assert [tuple(grid) for grid in fed.tolist()] == list(own_grids(tiny[1], forgery_data[1]).values())


@pytest.mark.parametrize("record, error", [
    ({"resize": "hf", "min_pixels": 3136, "max_pixels": 50176},
     "training_images.resize='hf'; expected one of ['llamafactory', 'swift']"),
    ({"resize": "swift", "min_pixels": 3136}, "training_images.max_pixels is required"),
    ({"resize": "swift", "min_pixels": 3136, "max_pixels": "448x448"}, "training_images.max_pixels must be int"),
])
def test_a_malformed_record_is_an_error_naming_the_key(tiny, tmp_path, record, error):
    model, _ = build(tiny)
    save_checkpoint(model, tmp_path / "ckpt")
    settings_file = tmp_path / "ckpt" / SETTINGS_FILE
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "training_images": record}))
    with pytest.raises(ValueError) as refused:
        load_checkpoint(AutoModelForImageTextToText.from_pretrained(tiny[0]), tmp_path / "ckpt", tiny[1].tokenizer)
    assert str(refused.value).startswith(f"{settings_file}: {error}")
