import json
from pathlib import Path

import pytest
from PIL import Image

from converters.__main__ import main
from converters.check import read_output_rows
from converters.schema import SkipRecord
from converters.sources.microscopy import DEFAULT_PROMPT, MicroscopyOptions, to_sample
from tools.synthetic_data import make_microscopy


def rows(path: Path) -> list:
    return [row for _, row in read_output_rows(path)]


def test_pair_sample_exact():
    record = {"id": "p1", "images": ["/a.png", "/b.png"], "sizes": [(96, 96), (96, 96)], "direction": "-",
              "distance": 20, "analysis": " 第二张更模糊。 "}
    sample = to_sample(record, MicroscopyOptions())
    assert sample.images == ("/a.png", "/b.png")
    assert sample.turns[0].content == "<image><image>" + DEFAULT_PROMPT
    assert sample.turns[1].content == '{"analysis": "第二张更模糊。", "direction": "-", "distance": 20}'


@pytest.mark.parametrize("field,value,match", [("direction", "up", "direction must be"),
                                               ("distance", -3, "whole number"),
                                               ("distance", 2.5, "whole number"),
                                               ("distance", "far", "number of steps")])
def test_invalid_direction_or_distance(field, value, match):
    record = {"id": "p", "images": ["/a", "/b"], "sizes": [(1, 1)] * 2, "direction": "+", "distance": 3,
              field: value}
    with pytest.raises(SkipRecord, match=match) as info:
        to_sample(record, MicroscopyOptions())
    assert info.value.field == field


def test_pairs_file_end_to_end(tmp_path):
    source = make_microscopy(tmp_path / "syn", n=4, seed=0)
    lines = source.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[0]) | {"id": "bad", "direction": "?"}
    gone = json.loads(lines[0]) | {"id": "gone", "image2": "images/nope.png"}
    source.write_text("\n".join(lines + [json.dumps(bad), json.dumps(gone)]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(source), "--out", str(out)]) == 0
    first = json.loads(lines[0])
    row = rows(out / "microscopy_train.json")[0]
    assert row["images"] == [str((source.parent / first["image1"]).resolve()),
                             str((source.parent / first["image2"]).resolve())]
    assert json.loads(row["messages"][1]["content"]) == {"analysis": first["analysis"],
                                                         "direction": first["direction"], "distance": first["distance"]}
    skipped = json.loads((out / "manifest.json").read_text())["datasets"]["microscopy_train"]["skipped"]
    assert [(s["id"], s["field"]) for s in skipped] == [("bad", "direction"), ("gone", "image2")]
    assert main(["check", str(out)]) == 0


def test_zstack_pairs_are_consecutive_slices_towards_focus(tmp_path):
    for z in (0, 10, 20, 30):
        Image.new("RGB", (8, 8)).save(tmp_path / f"z{z}.png")
    (tmp_path / "stack.csv").write_text("stack_id,image,z,focus_z\n" + "".join(
        f"s1,z{z}.png,{z},20\n" for z in (30, 0, 20, 10)))
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(tmp_path / "stack.csv"), "--out", str(out), "--steps-per-z", "2",
                 "--target", "swift"]) == 0
    converted = rows(out / "microscopy_train.jsonl")
    assert [[Path(p).name for p in r["images"]] for r in converted] == [
        ["z0.png", "z10.png"], ["z10.png", "z20.png"], ["z20.png", "z30.png"]]
    answers = [json.loads(r["messages"][1]["content"]) for r in converted]
    assert [(a["direction"], a["distance"]) for a in answers] == [("+", 20), ("-", 0), ("-", 20)]


def test_synthetic_zstack_converts_and_checks(tmp_path):
    source = make_microscopy(tmp_path / "syn", n=4, seed=0)
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(source.parent / "zstack.csv"), "--out", str(out)]) == 0
    assert len(rows(out / "microscopy_train.json")) == 12  # 3 training stacks x 4 neighbour pairs
    assert main(["check", str(out)]) == 0


def test_duplicate_ids_keep_the_first_and_list_the_rest(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "pairs.csv").write_text("id,image1,image2,direction,distance\n"
                                        "p,a.png,b.png,+,3\np,b.png,a.png,-,3\nq,a.png,b.png,+,1\n")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(tmp_path / "pairs.csv"), "--out", str(out)]) == 0
    assert [json.loads(r["messages"][1]["content"])["distance"] for r in rows(out / "microscopy_train.json")] == [3, 1]
    (skip,) = json.loads((out / "manifest.json").read_text())["datasets"]["microscopy_train"]["skipped"]
    assert skip == {"id": "p", "reason": "duplicate id", "source": "pairs.csv:3", "field": "id"}


SEED_PROMPT = "这两张图像是显微镜连续拍摄的，请判断调焦方向和步数。"
SEED_ANSWER = '{"analysis": "第二张更模糊。", "direction": "-", "distance": 7}'


def seed_rows(tmp_path: Path) -> list[dict]:
    """The seed's conversation rows, both content forms (typed parts; a string with <image> tags)."""
    for name in ("s1.png", "s2.png"):
        Image.new("RGB", (8, 6)).save(tmp_path / name)
    parts = {"conversations": [
        {"role": "user", "content": [{"type": "image", "image": "s1.png"}, {"type": "image", "image": "s2.png"},
                                     {"type": "text", "text": SEED_PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": SEED_ANSWER}]}]}
    tagged = {"conversations": [{"role": "user", "content": "<image><image>" + SEED_PROMPT},
                                {"role": "assistant", "content": SEED_ANSWER}], "images": ["s2.png", "s1.png"]}
    return [parts, tagged]


def test_seed_conversation_file_converts_unchanged(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in seed_rows(tmp_path)), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(path), "--out", str(out), "--strict"]) == 0
    s1, s2 = (str((tmp_path / n).resolve()) for n in ("s1.png", "s2.png"))
    expected = [{"messages": [{"role": "user", "content": "<image><image>" + SEED_PROMPT},
                              {"role": "assistant", "content": SEED_ANSWER}], "images": images}
                for images in ([s1, s2], [s2, s1])]
    assert rows(out / "microscopy_train.json") == expected
    assert rows(out / "microscopy_train.jsonl") == expected
    assert main(["check", str(out)]) == 0


@pytest.mark.parametrize("change, field, reason", [
    (lambda r: r["conversations"][1]["content"][0].update(text='{"direction": "+", "distance": true}'),
     "answer.distance", "must be a JSON integer"),
    (lambda r: r["conversations"][1]["content"][0].update(text="move down 7"), "answer", "not JSON"),
    (lambda r: r["conversations"][0]["content"].pop(0), "conversations[0].content", "has 1"),
    (lambda r: r["conversations"].pop(), "conversations", "ending with the assistant's"),
    (lambda r: r["conversations"][0]["content"][0].update(image="../elsewhere.png"), "image1",
     "outside the data root"),
])
def test_bad_seed_rows_are_named_skips(tmp_path, change, field, reason):
    good, _ = seed_rows(tmp_path)
    bad = json.loads(json.dumps(good))
    change(bad)
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad | {"id": "bad"}) + "\n")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(path), "--out", str(out)]) == 0
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["microscopy_train"]
    assert entry["count"] == 1
    (skip,) = entry["skipped"]
    assert (skip["id"], skip["source"], skip["field"]) == ("bad", "seed.jsonl:2", field) and reason in skip["reason"]


def test_split_of_file_puts_a_list_file_in_one_split(tmp_path):
    path = tmp_path / "val.jsonl"
    good, tagged = seed_rows(tmp_path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(tagged | {"split": "train", "id": "other"}) + "\n")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(path), "--out", str(out), "--split-of-file", "val"]) == 0
    assert len(rows(out / "microscopy_val.json")) == 1 and not (out / "microscopy_train.json").exists()
    (skip,) = json.loads((out / "manifest.json").read_text())["datasets"]["microscopy_val"]["skipped"]
    assert skip["field"] == "split" and skip["reason"] == "row's split 'train' differs from --split-of-file 'val'"
    assert main(["microscopy", "--input", str(path), "--out", str(tmp_path / "o2"), "--split", "val",
                 "--split-of-file", "val"]) == 0


@pytest.mark.parametrize("value, reason", [(True, "number of steps"), (float("nan"), "whole number"),
                                           (10 ** 12, "exceeds 100000 steps"), (7.5, "whole number"),
                                           ("7", "number of steps")])
def test_distance_types_are_strict(value, reason):
    record = {"id": "p", "images": ["/a", "/b"], "sizes": [(1, 1)] * 2, "direction": "+", "distance": value}
    with pytest.raises(SkipRecord, match=reason):
        to_sample(record, MicroscopyOptions())
    assert to_sample(record | {"distance": 7}, MicroscopyOptions()).turns[1].content.endswith('"distance": 7}')


def test_seed_file_with_absolute_image_paths_converts_without_flags(tmp_path):
    (tmp_path / "images").mkdir()
    rows_ = seed_rows(tmp_path / "images")
    for part in rows_[0]["conversations"][0]["content"][:2]:
        part["image"] = str(tmp_path / "images" / part["image"])
    path = tmp_path / "seed" / "seed.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(rows_[0], ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["microscopy", "--input", str(path), "--out", str(out), "--strict"]) == 0
    (row,) = rows(out / "microscopy_train.json")
    assert row["images"] == [str(tmp_path / "images" / "s1.png"), str(tmp_path / "images" / "s2.png")]
