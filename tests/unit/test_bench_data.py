"""The benchmark's data looks like users' data: COCO's mix of image sizes (checked against published COCO train
statistics), texts as the converters write them, of varying length; the fixed-square set only when asked."""

import json
import random

import pytest
from PIL import Image

from tools.bench_data import COCO_SIZES, MAX_IMAGES, coco_image_size, write_bench_data


def test_coco_sizes_match_published_coco_train_statistics():
    rng = random.Random(0)
    sizes = [coco_image_size(rng) for _ in range(20_000)]
    share = lambda test: sum(map(test, sizes)) / len(sizes)  # noqa: E731
    # COCO train: 90% of images hold 167,500-355,840 pixels and have a height/width ratio of 0.6-1.5
    assert share(lambda s: 167_500 <= s[0] * s[1] <= 355_840) >= 0.88
    assert share(lambda s: 0.6 <= s[1] / s[0] <= 1.5) >= 0.88
    assert share(lambda s: s[0] == s[1]) < 0.1  # most images are not square
    assert share(lambda s: max(s) == 640) > 0.9
    assert share(lambda s: s == (640, 480)) == pytest.approx(COCO_SIZES[0][2] / 100, abs=0.015)
    assert len(set(sizes)) > 100


@pytest.mark.parametrize("family,answer_start", [("qwen2_vl", "<|object_ref_start|>"), ("qwen2_5_vl", "```json"),
                                                 ("qwen3_vl", "```json")])
def test_grounding_rows_are_the_converters_text_over_coco_sized_images(tmp_path, family, answer_start):
    out = write_bench_data(tmp_path, "grounding", 40, family, 3136, 200704)
    rows = json.loads((out / "bench_train.json").read_text())
    assert rows == [json.loads(line) for line in (out / "bench_train.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and len({r["images"][0] for r in rows}) == 40
    sizes = {Image.open(r["images"][0]).size for r in rows}
    assert len(sizes) > 5 and any(w != h for w, h in sizes)
    prompts = [r["messages"][0]["content"] for r in rows]
    assert all(p.startswith("<image>") for p in prompts) and len({len(p) for p in prompts}) > 10
    assert all(r["messages"][1]["content"].startswith(answer_start) for r in rows)
    info = json.loads((out / "dataset_info.json").read_text())["bench_train"]
    assert info["file_name"] == "bench_train.json" and info["formatting"] == "sharegpt"


def test_caption_rows_vary_in_length_and_keep_a_resizing_converters_size(tmp_path):
    out = write_bench_data(tmp_path, "caption", 30, "qwen2_vl", 3136, 78400, resize=280)
    rows = json.loads((out / "bench_train.json").read_text())
    lengths = [len(r["messages"][1]["content"].split()) for r in rows]
    assert min(lengths) >= 8 and max(lengths) <= 24 and len(set(lengths)) > 3
    assert {Image.open(r["images"][0]).size for r in rows} == {(280, 280)}


def test_ideal_rows_are_fixed_squares_and_fixed_lengths(tmp_path):
    out = write_bench_data(tmp_path, "grounding", 12, "qwen2_5_vl", 3136, 200704, shape="ideal")
    rows = json.loads((out / "bench_train.json").read_text())
    assert {Image.open(r["images"][0]).size for r in rows} == {(448, 448)}
    assert {len(r["messages"][1]["content"].split()) for r in rows} == {44}


def test_images_are_reused_past_the_distinct_limit_and_runs_are_seeded(tmp_path):
    out = write_bench_data(tmp_path / "a", "caption", MAX_IMAGES + 8, "qwen2_vl", 3136, 78400)
    rows = json.loads((out / "bench_train.json").read_text())
    assert len({r["images"][0] for r in rows}) == MAX_IMAGES
    again = write_bench_data(tmp_path / "b", "caption", MAX_IMAGES + 8, "qwen2_vl", 3136, 78400)
    rows_again = json.loads((again / "bench_train.json").read_text())
    assert [r["messages"] for r in rows_again] == [r["messages"] for r in rows]


def test_unknown_shape_or_task_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="shape 'square'"):
        write_bench_data(tmp_path, "caption", 2, "qwen2_vl", 3136, 78400, shape="square")
    with pytest.raises(ValueError, match="task .focus. with shape .coco."):
        write_bench_data(tmp_path, "focus", 2, "qwen2_vl", 3136, 78400)


def test_forgery_rows_are_the_converters_over_forgery_set_sizes_with_masks(tmp_path):
    from tools.bench_data import FAKE_SHARE, FORGERY_SIZES

    out = write_bench_data(tmp_path, "forgery", 60, "qwen2_5_vl", 200704, 200704)
    rows = json.loads((out / "bench_train.json").read_text())
    assert rows == [json.loads(line) for line in (out / "bench_train.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and json.loads((out / "dataset_info.json").read_text())["bench_train"]
    sizes = [Image.open(r["images"][0]).size for r in rows]
    assert set(sizes) <= {(w, h) for w, h, _ in FORGERY_SIZES} and (384, 256) in sizes
    fakes = [r for r in rows if r["label"] == 1]
    assert abs(len(fakes) / len(rows) - FAKE_SHARE) < 0.15
    assert all(r["messages"][1]["content"] == ("fake" if r["label"] else "real") for r in rows)
    assert all(r["mask"] is None for r in rows if r["label"] == 0)
    for r in fakes:  # the splice's mask: the image's size, partly set
        mask = Image.open(r["mask"])
        assert mask.size == Image.open(r["images"][0]).size and 0 < sum(mask.getdata()) < 255 * mask.size[0] * mask.size[1]


def test_microscopy_rows_pair_two_frames_of_one_side_with_a_json_answer(tmp_path):
    from converters.sources.microscopy import parse_answer

    out = write_bench_data(tmp_path, "microscopy", 4, "qwen3_vl", 4096, 786432)
    rows = json.loads((out / "bench_train.json").read_text())
    assert len(rows) == 4
    for r in rows:
        assert r["messages"][0]["content"].startswith("<image><image>") and len(r["images"]) == 2
        sizes = {Image.open(path).size for path in r["images"]}
        assert len(sizes) == 1 and sizes <= {(1024, 1024), (2048, 2048)}
        assert Image.open(r["images"][0]).mode == "L"
        direction, distance = parse_answer(r["messages"][1]["content"])
        assert direction in "+-" and 0 <= distance <= 300
    assert {Image.open(r["images"][0]).size for r in rows} == {(1024, 1024), (2048, 2048)}


def test_report_rows_are_xray_sized_with_findings_texts(tmp_path):
    from tools.bench_data import REPORT_PROMPT, REPORT_SIZES

    out = write_bench_data(tmp_path, "report", 3, "qwen3_vl", 4096, 200704)
    rows = json.loads((out / "bench_train.json").read_text())
    assert [Image.open(r["images"][0]).size for r in rows] == list(REPORT_SIZES[:3])
    assert all(r["messages"][0]["content"] == "<image>" + REPORT_PROMPT for r in rows)
    assert all(30 <= len(r["messages"][1]["content"].split()) <= 120 for r in rows)


def test_converted_families_have_no_ideal_shape(tmp_path):
    with pytest.raises(ValueError, match="task 'forgery' with shape 'ideal'"):
        write_bench_data(tmp_path, "forgery", 2, "qwen2_5_vl", 200704, 200704, shape="ideal")
