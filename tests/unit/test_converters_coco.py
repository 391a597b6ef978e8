import json
from pathlib import Path

from PIL import Image

from converters.__main__ import main
from converters.check import read_output_rows
from converters.sources import coco_caption
from converters.sources.coco_caption import CaptionOptions, ImageGroup, expand_groups, read_modelscope, to_sample
from converters.schema import Sample, Turn
from tools.synthetic_data import make_coco_caption


def rows(path: Path) -> list:
    return [row for _, row in read_output_rows(path)]


def write_image(path: Path, size=(64, 48), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def official_json(tmp_path: Path) -> Path:
    write_image(tmp_path / "imgs" / "train2014" / "COCO_train2014_000000000001.jpg")
    write_image(tmp_path / "imgs" / "COCO_train2014_000000000002.jpg", (32, 32))
    data = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48},
                       {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 32, "height": 32},
                       {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "width": 32, "height": 32},
                       {"id": 2, "file_name": "again.jpg", "width": 1, "height": 1}],
            "annotations": [{"id": 11, "image_id": 1, "caption": "  A red\n square.  "},
                            {"id": 12, "image_id": 1, "caption": "Red."},
                            {"id": 21, "image_id": 2, "caption": "   "},
                            {"id": 31, "image_id": 3, "caption": "Gone."},
                            {"id": 41, "image_id": 4, "caption": "Who?"}]}
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(data))
    return path


def test_to_sample_is_exact_and_cleans_whitespace():
    record = {"id": "1_11", "image": "/x/a.jpg", "size": (64, 48), "caption": "  A red\n  square. "}
    assert to_sample(record, CaptionOptions("COCO Yes:")) == Sample(
        id="1_11", images=("/x/a.jpg",), turns=(Turn("user", "<image>COCO Yes:"), Turn("assistant", "A red square.")),
        image_sizes=((64, 48),))


def test_official_json_exact_rows_and_manifest(tmp_path):
    source = official_json(tmp_path)
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(source), "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    image1 = str((tmp_path / "imgs" / "train2014" / "COCO_train2014_000000000001.jpg").resolve())
    prompt = "<image>" + coco_caption.DEFAULT_PROMPT
    expected = [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}],
                 "images": [image1]} for text in ("A red square.", "Red.")]
    assert rows(out / "coco_caption_train.json") == expected
    assert rows(out / "coco_caption_train.jsonl") == expected
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"coco_caption_train": {
        "file_name": "coco_caption_train.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["coco_caption_train"]
    assert entry["count"] == 2
    reasons = {(s["id"], s["field"]): s["reason"] for s in entry["skipped"]}
    assert reasons[("2", "images[].id")] == "duplicate image id"
    assert reasons[("4_41", "annotations[].image_id")] == "unknown image_id 4"
    assert reasons[("2_21", "caption")] == "empty caption"
    assert reasons[("3_31", "image")].startswith("missing image ")
    assert len(reasons) == 4
    assert entry["inputs"][0]["sha256"] and entry["converter_version"]


def test_karpathy_keeps_its_own_splits(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg")
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "cocoid": 7, "split": split,
         "sentences": [{"sentid": k, "raw": f"{split} caption {k}"} for k in (1, 2)]}
        for split in ("train", "restval", "test")]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(tmp_path / "dataset_coco.json"), "--out", str(out),
                 "--captions-per-image", "one", "--seed", "3", "--target", "swift"]) == 0
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["coco_caption_restval.jsonl", "coco_caption_test.jsonl",
                                                           "coco_caption_train.jsonl"]
    assert not list(out.glob("coco_caption_*.json"))
    assert json.loads((out / "dataset_info.json").read_text()) == {}  # no LLaMA-Factory files asked for
    (row,) = rows(out / "coco_caption_test.jsonl")
    assert row["messages"][1]["content"] in ("test caption 1", "test caption 2")


def test_csv_groups_rows_per_image(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", (20, 10))
    (tmp_path / "caps.csv").write_text("image_path,caption\na.png,first\nb.png,bee\na.png,second\n")
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(tmp_path / "caps.csv"), "--out", str(out)]) == 0
    answers = [r["messages"][1]["content"] for r in rows(out / "coco_caption_train.json")]
    assert answers == ["first", "second", "bee"]


def test_modelscope_rows_from_a_fake_iterator(tmp_path):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, format="PNG")
    data = buffer.getvalue()
    calls = []

    def fake_rows(dataset_id, subset, split):
        calls.append((dataset_id, subset, split))
        yield {"image": {"bytes": data, "path": None}, "caption": "one cap&&two cap", "image_id": 5}
        yield {"image": Image.open(io.BytesIO(data)), "caption": "pil cap", "image_id": 6}

    groups = read_modelscope("modelscope/coco_2014_caption", "coco_2014_caption", ["train", "validation"], fake_rows)
    records = list(expand_groups(groups, images_dir=None, out=tmp_path, captions_per_image="all", seed=0,
                                 limit=None, resize=None))
    assert calls == [("modelscope/coco_2014_caption", "coco_2014_caption", "train"),
                     ("modelscope/coco_2014_caption", "coco_2014_caption", "validation")]
    assert [(split, r["id"], r["caption"], r["size"]) for split, r in records] == [
        ("train", "5_0", "one cap", (40, 30)), ("train", "5_1", "two cap", (40, 30)), ("train", "6_0", "pil cap", (40, 30)),
        ("val", "5_0", "one cap", (40, 30)), ("val", "5_1", "two cap", (40, 30)), ("val", "6_0", "pil cap", (40, 30))]
    assert len(list((tmp_path / "images").iterdir())) == 1  # same bytes stored once, named by content hash
    assert all(Path(r["image"]).is_file() for _, r in records)


def test_seed_recipe_flags_reproduce_it(tmp_path):
    source = make_coco_caption(tmp_path / "syn", n=6, seed=1)
    args = ["coco-caption", "--input", str(source), "--out", str(tmp_path / "out"), "--split", "train",
            "--limit", "4", "--resize", "280x280", "--prompt", "COCO Yes:", "--captions-per-image", "one",
            "--seed", "0", "--model", "qwen2_vl"]
    assert main(args) == 0
    converted = rows(tmp_path / "out" / "coco_caption_train.json")
    assert len(converted) == 4 and not (tmp_path / "out" / "coco_caption_val.json").exists()
    for row in converted:
        assert row["messages"][0]["content"] == "<image>COCO Yes:"
        with Image.open(row["images"][0]) as image:
            assert image.size == (280, 280)
    first = (tmp_path / "out" / "coco_caption_train.json").read_bytes()
    assert main(args) == 0
    assert (tmp_path / "out" / "coco_caption_train.json").read_bytes() == first


def test_a_csv_without_split_column_takes_the_split_options(tmp_path):
    """A CSV naming no split: --split-of-file puts every image in one split; --val-fraction holds out whole
    images (all captions of one image stay together) chosen by --seed alone, whatever the row order."""
    lines = []
    for i in range(12):
        write_image(tmp_path / f"i{i}.png")
        lines += [f"i{i}.png,cap {i} a", f"i{i}.png,cap {i} b"]
    forward, backward = tmp_path / "forward.csv", tmp_path / "backward.csv"
    forward.write_text("image_path,caption\n" + "\n".join(lines) + "\n")
    backward.write_text("image_path,caption\n" + "\n".join(reversed(lines)) + "\n")

    def images_per_split(source: Path, out: Path, *options: str) -> dict[str, set[str]]:
        assert main(["coco-caption", "--input", str(source), "--out", str(out), "--target", "swift",
                     *options]) == 0
        return {path.stem.removeprefix("coco_caption_"): {Path(r["images"][0]).name for r in rows(path)}
                for path in sorted(out.glob("coco_caption_*.jsonl"))}

    assert images_per_split(forward, tmp_path / "test", "--split-of-file", "test") == {
        "test": {f"i{i}.png" for i in range(12)}}
    held = images_per_split(forward, tmp_path / "f", "--val-fraction", "0.4", "--seed", "3")
    assert sorted(held) == ["train", "val"] and held["train"] | held["val"] == {f"i{i}.png" for i in range(12)}
    assert images_per_split(backward, tmp_path / "b", "--val-fraction", "0.4", "--seed", "3") == held
    assert images_per_split(forward, tmp_path / "s", "--val-fraction", "0.4", "--seed", "4") != held
    val_rows = rows(tmp_path / "f" / "coco_caption_val.jsonl")
    assert len(val_rows) == 2 * len(held["val"])  # both captions of a held-out image


def test_an_official_json_named_by_no_split_takes_split_of_file(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "mine.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 5, "image_id": 1, "caption": "cat"}]}))
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(tmp_path / "mine.json"), "--out", str(out),
                 "--split-of-file", "val"]) == 0
    assert [r["messages"][1]["content"] for r in rows(out / "coco_caption_val.json")] == ["cat"]
