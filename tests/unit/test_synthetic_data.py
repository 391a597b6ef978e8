import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from converters.safe_pickle import load_plain_pickle
from tools.synthetic_data import MAKERS, main, make_coco_caption, make_refcoco


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, task):
    MAKERS[task](tmp_path / "a", n=4, seed=7)
    MAKERS[task](tmp_path / "b", n=4, seed=7)
    MAKERS[task](tmp_path / "c", n=4, seed=8)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert tree(tmp_path / "a") != tree(tmp_path / "c")


def test_refcoco_refer_layout_boxes_match_the_drawn_shapes(tmp_path):
    refer = make_refcoco(tmp_path, n=5, seed=3)
    refs = load_plain_pickle((refer / "refs(umd).p").read_bytes())
    assert refs == pickle.loads((refer / "refs(umd).p").read_bytes())
    instances = json.loads((refer / "instances.json").read_text())
    images = {i["id"]: i for i in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    for ref in refs:
        assert ref["file_name"].endswith(f"_{ref['ann_id']}.jpg")
        image = images[ref["image_id"]]
        x, y, w, h = anns[ref["ann_id"]]["bbox"]
        with Image.open(refer / "train2014" / image["file_name"]) as img:
            assert img.size == (image["width"], image["height"])
            background = img.getpixel((0, 0)) if (x, y) != (0, 0) else None
            center = img.getpixel((int(x + w / 2), int(y + h * 0.75)))
        assert background is None or max(abs(a - b) for a, b in zip(center, background)) > 40
        assert ref["sentences"][0]["sent"].split()[1:3] == [ref["sentences"][1]["sent"].split()[0],
                                                           ref["sentences"][1]["sent"].split()[1]]


def test_coco_captions_describe_the_image_in_official_layout(tmp_path):
    root = make_coco_caption(tmp_path, n=3, seed=0)
    data = json.loads((root / "captions_train2014.json").read_text())
    assert len(data["images"]) == 3 and len(data["annotations"]) == 15
    for image in data["images"]:
        assert (root / "train2014" / image["file_name"]).is_file()
    assert (root / "captions_val2014.json").is_file()


def test_cli_all(tmp_path, capsys):
    main(["all", "--out", str(tmp_path), "--n", "2"])
    printed = capsys.readouterr().out
    for task in MAKERS:
        assert f"{task}: --input {tmp_path / task}" in printed


def test_forgery_val_split_holds_both_labels(tmp_path):
    import json

    from tools.synthetic_data import make_forgery

    rows = json.loads(make_forgery(tmp_path, n=16, seed=0).read_text())
    for split in ("train", "val"):
        assert {row["label"] for row in rows if row["split"] == split} == {0, 1}
