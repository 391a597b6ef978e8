import json
from pathlib import Path

import pytest
from PIL import Image

from converters.__main__ import main
from converters.check import read_output_rows
from converters.schema import SkipRecord
from converters.sources.forgery import ForgeryOptions, to_sample
from tools.synthetic_data import make_forgery


def rows(path: Path) -> list:
    return [row for _, row in read_output_rows(path)]


def test_answer_is_exactly_the_label_word():
    record = {"id": "a", "image": "/a.png", "size": (8, 8), "label": 1, "mask": "/m.png"}
    sample = to_sample(record, ForgeryOptions("authentic", "tampered"))
    assert sample.turns[0].content == ("<image>Is this image real or manipulated? Answer with one word: "
                                       "authentic or tampered.")
    assert sample.turns[1].content == "tampered"
    assert sample.extra == {"label": 1, "mask": "/m.png"}
    with pytest.raises(SkipRecord, match="label must be 0"):
        to_sample(record | {"label": 2}, ForgeryOptions())


def test_list_json_end_to_end_with_bad_rows(tmp_path):
    for name, size in (("real.png", (16, 8)), ("fake.png", (16, 8)), ("nomask.png", (16, 8)), ("m.png", (16, 8)),
                       ("small_mask.png", (4, 4))):
        Image.new("RGB" if "mask" not in name and name != "m.png" else "L", size).save(tmp_path / name)
    mask = Image.new("L", (16, 8))
    mask.paste(255, (2, 2, 6, 6))
    mask.save(tmp_path / "m.png")
    entries = [{"image_path": "real.png", "label": 0, "mask_path": "8x16"},
               {"image_path": "fake.png", "label": 1, "mask_path": "m.png"},
               {"image_path": "nomask.png", "label": 1, "mask_path": "masks/missing.png"},
               {"image_path": "real.png", "label": "yes", "mask_path": "8x16", "id": "badlabel"},
               {"image_path": "real.png", "label": 0, "mask_path": "9x9", "id": "badsize"},
               {"image_path": "fake.png", "label": 1, "mask_path": "small_mask.png", "id": "badmask"},
               {"image_path": "absent.png", "label": 0, "mask_path": "8x16"}]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(tmp_path / "list.json"), "--out", str(out)]) == 0
    converted = rows(out / "forgery_train.json")
    assert [(r["messages"][1]["content"], r["label"], r["mask"]) for r in converted] == [
        ("real", 0, None), ("fake", 1, str((tmp_path / "m.png").resolve())), ("fake", 1, None)]
    assert rows(out / "forgery_train.jsonl") == converted
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["forgery_train"]
    assert [n["id"] for n in entry["notes"]] == ["nomask.png"] and "maskless" in entry["notes"][0]["note"]
    assert {s["id"]: s["field"] for s in entry["skipped"]} == {
        "badlabel": "label", "badsize": "mask_path", "badmask": "mask_path", "absent.png": "image_path"}
    assert main(["check", str(out)]) == 0


def test_synthetic_forgery_masks_cover_the_splice(tmp_path):
    source = make_forgery(tmp_path / "syn", n=8, seed=4)
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(source), "--out", str(out), "--strict"]) == 0
    converted = rows(out / "forgery_train.json") + rows(out / "forgery_val.json")
    fakes = [r for r in converted if r["label"] == 1]
    assert len(fakes) == 4 and len(converted) == 8
    for row in fakes:
        with Image.open(row["mask"]) as mask:
            assert mask.getbbox() is not None  # a non-empty spliced region


def test_own_prompt_is_the_user_turn_of_every_row(tmp_path):
    Image.new("RGB", (16, 8)).save(tmp_path / "real.png")
    (tmp_path / "list.json").write_text(json.dumps([{"image_path": "real.png", "label": 0, "mask_path": "8x16"}]))
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(tmp_path / "list.json"), "--out", str(out), "--prompt",
                 "Is this photo tampered? <image> One word."]) == 0
    (row,) = rows(out / "forgery_train.json")
    assert row["messages"][0]["content"] == "Is this photo tampered? <image> One word."
    assert to_sample({"id": "a", "image": "/a.png", "size": (8, 8), "label": 0, "mask": None},
                     ForgeryOptions(own_prompt="<image>Real?")).turns[0].content == "<image>Real?"


def test_a_list_inside_the_folder_its_paths_start_with_names_the_images_folder_to_pass(tmp_path, capsys):
    """The seed's trainingset2/list.json names trainingset2/images/...: against the list's own folder every path
    would double trainingset2/."""
    root = tmp_path / "data"
    (root / "trainingset2" / "images").mkdir(parents=True)
    Image.new("RGB", (16, 8)).save(root / "trainingset2" / "images" / "a.png")
    listing = root / "trainingset2" / "list.json"
    listing.write_text(json.dumps([{"image_path": "trainingset2/images/a.png", "label": 0, "mask_path": "8x16"}]))
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(listing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {listing}: none of the first 1 image(s) it names is in {root / 'trainingset2'} (e.g. "
        f"{root / 'trainingset2' / 'trainingset2' / 'images' / 'a.png'}); pass --images {root}, from which the names "
        "resolve\n")
    assert main(["forgery", "--input", str(listing), "--out", str(out), "--images", str(root)]) == 0
