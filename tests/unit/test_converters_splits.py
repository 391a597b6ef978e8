"""Where the rows of an input that names no split go (converters.sources.tables.SplitRule): --split-of-file, or a
seeded --val-fraction that depends on nothing but the seed and each row's images; and the one case where a test
split would become training data, which is warned about."""
import json
from pathlib import Path

import pytest
from PIL import Image

from converters.__main__ import main
from converters.check import read_output_rows


def caption_rows(folder: Path, images: int = 20) -> list[dict]:
    """Two conversations about each image (as LLaVA files hold them), one row of its own split."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(folder / f"i{i}.png")
        rows += [{"image": f"i{i}.png", "conversations": [{"from": "human", "value": f"<image>Q{q}?"},
                                                          {"from": "gpt", "value": f"A{i}.{q}"}]} for q in (0, 1)]
    rows.append(rows[0] | {"split": "test"})
    return rows


def convert(source: Path, out: Path, *extra: str) -> dict[str, list]:
    assert main(["chat", "--input", str(source), "--out", str(out), "--task", "caption", *extra]) == 0
    return {path.stem.removeprefix("chat_"): [row for _, row in read_output_rows(path)]
            for path in sorted(out.glob("chat_*.jsonl"))}


def answers(rows: list) -> list[str]:
    return sorted(row["messages"][1]["content"] for row in rows)


def test_val_fraction_holds_out_whole_images_whatever_the_order_and_workers(tmp_path):
    rows = caption_rows(tmp_path / "data")
    forward = tmp_path / "data" / "forward.jsonl"
    backward = tmp_path / "data" / "backward.jsonl"
    forward.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backward.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    first = convert(forward, tmp_path / "a", "--val-fraction", "0.3", "--seed", "7")
    assert sorted(first) == ["test", "train", "val"] and answers(first["test"]) == ["A0.0"]  # its own split kept
    assert len(first["train"]) + len(first["val"]) == 40 and 6 <= len(first["val"]) <= 20
    splits_of_image: dict[str, set] = {}
    for split in ("train", "val"):
        for row in first[split]:
            splits_of_image.setdefault(row["images"][0], set()).add(split)
    assert len(splits_of_image) == 20 and all(len(s) == 1 for s in splits_of_image.values())  # both rows together
    reordered = convert(backward, tmp_path / "b", "--val-fraction", "0.3", "--seed", "7", "--workers", "2")
    assert {s: answers(r) for s, r in reordered.items()} == {s: answers(r) for s, r in first.items()}
    reseeded = convert(forward, tmp_path / "c", "--val-fraction", "0.3", "--seed", "8")
    assert answers(reseeded["val"]) != answers(first["val"])


@pytest.mark.parametrize("command, make_rows", [
    ("forgery", lambda d: [{"image_path": f"i{i}.png", "label": i % 2, "mask_path": None if i % 2 else "8x8"}
                           for i in range(20)]),
    ("microscopy", lambda d: [{"image1": f"i{i}.png", "image2": f"i{i + 1}.png", "direction": "+", "distance": i}
                              for i in range(19)]),
])
def test_every_list_converter_takes_the_split_options(command, make_rows, tmp_path):
    caption_rows(tmp_path / "data")
    source = tmp_path / "data" / "list.json"
    source.write_text(json.dumps(make_rows(tmp_path / "data")))
    out = tmp_path / "out"
    assert main([command, "--input", str(source), "--out", str(out), "--val-fraction", "0.5", "--seed", "1"]) == 0
    counts = {path.stem: len(list(read_output_rows(path))) for path in out.glob(f"{command}_*.jsonl")}
    assert set(counts) == {f"{command}_train", f"{command}_val"} and sum(counts.values()) == len(make_rows(None))
    with pytest.raises(SystemExit) as parser_exit:
        main([command, "--input", str(source), "--out", str(out), "--val-fraction", "1"])
    assert parser_exit.value.code == 2


def test_a_file_held_out_for_evaluation_is_written_as_test_without_a_warning(tmp_path, capsys):
    rows = caption_rows(tmp_path / "data", images=2)
    source = tmp_path / "data" / "test.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:4] + [rows[0] | {"split": "train"}]))
    converted = convert(source, tmp_path / "out", "--split-of-file", "test")
    assert list(converted) == ["test"] and len(converted["test"]) == 4
    err = capsys.readouterr().err
    assert "warning" not in err
    skipped = json.loads((tmp_path / "out" / "manifest.json").read_text())["datasets"]["chat_test"]["skipped"]
    assert [s["reason"] for s in skipped] == ["row's split 'train' differs from --split-of-file 'test'"]


def test_a_test_file_whose_rows_would_train_is_warned_about(tmp_path, capsys):
    rows = caption_rows(tmp_path / "data", images=2)
    source = tmp_path / "data" / "refcocog_test.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    assert list(convert(source, tmp_path / "out")) == ["train"]
    assert capsys.readouterr().err.splitlines()[0] == (
        f"warning: {source}: its name says 'test' but its rows name no split, so they are written as training "
        "data; pass --split-of-file test to convert it for evaluation")
    named = tmp_path / "data" / "mine.jsonl"
    named.write_text(source.read_text())
    convert(named, tmp_path / "out2")
    assert "warning" not in capsys.readouterr().err
