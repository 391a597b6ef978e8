import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from converters.safe_pickle import load_plain_pickle
from tools.synthetic_data import (GRID_CELL, GRID_CELLS, GROUNDING_STYLES, MAKERS, RAMP_CANVAS, main, make_coco_caption,
                                  make_refcoco, make_shape_grounding)


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


def test_shape_captions_name_what_is_drawn_one_per_image(tmp_path):
    from eval.metrics.caption import caption_attributes
    from tools.synthetic_data import BACKGROUNDS, COLORS, make_shape_caption

    root = make_shape_caption(tmp_path, n=12, seed=1, n_val=5)
    for split, count in (("train", 12), ("val", 5)):
        data = json.loads((root / f"captions_{split}2014.json").read_text())
        assert len(data["images"]) == len(data["annotations"]) == count
        files = {i["id"]: i["file_name"] for i in data["images"]}
        for annotation in data["annotations"]:
            said = caption_attributes(annotation["caption"])
            with Image.open(root / f"{split}2014" / files[annotation["image_id"]]) as image:
                pixels = image.convert("RGB").load()
                counts = {}
                for x in range(0, image.width, 4):
                    for y in range(0, image.height, 4):
                        counts[pixels[x, y]] = counts.get(pixels[x, y], 0) + 1
            # the shape covers most of the image, the background shows around it (JPEG: nearest colour wins)
            def nearest(rgb, palette):
                return min(palette, key=lambda k: sum((a - b) ** 2 for a, b in zip(rgb, palette[k])))
            votes = {}
            for rgb, n in counts.items():
                name = nearest(rgb, {**COLORS, **{f"bg:{k}": v for k, v in BACKGROUNDS.items()}})
                votes[name] = votes.get(name, 0) + n
            assert max((v, k) for k, v in votes.items() if k in COLORS)[1] == said["colour"]
            assert max((v, k) for k, v in votes.items() if k.startswith("bg:"))[1] == f"bg:{said['background']}"


def _grounding_refs(refer: Path):
    """(ref, xywh box, image) for every ref of a shape_grounding folder."""
    refs = load_plain_pickle((refer / "refs(umd).p").read_bytes())
    instances = json.loads((refer / "instances.json").read_text())
    images = {i["id"]: i for i in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    for ref in refs:
        with Image.open(refer / "train2014" / images[ref["image_id"]]["file_name"]) as img:
            yield ref, anns[ref["ann_id"]]["bbox"], img.convert("RGB")


@pytest.mark.parametrize("style", GROUNDING_STYLES)
def test_shape_grounding_boxes_hold_the_shape_in_images_of_several_aspect_ratios(tmp_path, style):
    refer = make_shape_grounding(tmp_path, n=20, seed=2, n_val=6, style=style)
    found = list(_grounding_refs(refer))
    assert [ref["split"] for ref, _, _ in found].count("val") == 6 and len(found) == 26
    assert len({img.size for _, _, img in found}) >= 3
    for _, (x, y, w, h), img in found:
        inside = img.getpixel((int(x + w / 2), int(y + h * 0.75)))
        corner = (0 if x > 4 else img.width - 1, 0 if y > 4 else img.height - 1)
        assert max(abs(a - b) for a, b in zip(inside, img.getpixel(corner))) > 40


@pytest.mark.parametrize("style", ["grid_pixels", "grid_relative"])
def test_grid_shapes_fill_one_cell_and_their_colour_says_where_it_is(tmp_path, style):
    refer = make_shape_grounding(tmp_path, n=40, seed=1, n_val=0, style=style)
    for ref, (x, y, w, h), img in _grounding_refs(refer):
        assert ref["sentences"][0]["sent"] == "the shape"
        cell = (GRID_CELL, GRID_CELL) if style == "grid_pixels" else (img.width / GRID_CELLS, img.height / GRID_CELLS)
        assert (w, h) == cell and x % cell[0] == 0 and y % cell[1] == 0
        cx, cy = x + w / 2, y + h * 0.75
        span = (RAMP_CANVAS, RAMP_CANVAS) if style == "grid_pixels" else img.size
        red, green, _ = img.getpixel((int(cx), int(cy)))
        assert abs(red - (30 + 190 * cx / span[0])) < 12 and abs(green - (30 + 190 * cy / span[1])) < 12


def test_forgery_test_split_holds_both_labels_and_half_the_rows_train(tmp_path):
    from tools.synthetic_data import make_forgery

    rows = json.loads(make_forgery(tmp_path, n=32, seed=0, with_test=True).read_text())
    for split, count in (("train", 16), ("val", 8), ("test", 8)):
        chosen = [row for row in rows if row["split"] == split]
        assert len(chosen) == count and {row["label"] for row in chosen} == {0, 1}


def test_focus_pairs_second_image_sharper_exactly_when_focus_lies_ahead(tmp_path):
    from PIL import ImageFilter, ImageStat

    from tools.synthetic_data import FOCUS_DISTANCES, make_focus_pairs

    def detail(path: Path) -> float:  # mean edge strength: falls as blur grows
        with Image.open(path) as image:
            return ImageStat.Stat(image.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0]

    source = make_focus_pairs(tmp_path, n=12, seed=2, n_val=4)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    assert [row["split"] for row in rows] == ["train"] * 12 + ["val"] * 4
    assert [row["direction"] for row in rows] == ["+", "-"] * 8
    for row in rows:
        sharper = detail(tmp_path / row["image2"]) > detail(tmp_path / row["image1"])
        assert sharper == (row["direction"] == "+"), row["id"]
        assert row["distance"] in FOCUS_DISTANCES
        assert row["analysis"] == ("第二张图像更清晰。" if sharper else "第二张图像更模糊。")
