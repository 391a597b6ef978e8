import io
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from converters.__main__ import main
from converters.boxes import parse_boxes
from converters.check import read_output_rows
from converters.safe_pickle import load_plain_pickle
from converters.sources.refcoco import RefOptions, detect_bbox_format, to_sample
from converters.schema import Box, SkipRecord
from tools.synthetic_data import make_refcoco

PIXELS = {"qwen2_vl": (3136, 602112), "qwen2_5_vl": (3136, 602112), "qwen3_vl": (4096, 786432)}


def rows(path: Path) -> list:
    return [row for _, row in read_output_rows(path)]


def record(**changes):
    base = {"id": "7_70", "direction": "rec", "image": "/d/a.jpg", "size": (640, 480), "phrase": " the  red cat ",
            "bbox": [10.2, 20.0, 289.8, 380.7], "bbox_format": "xywh"}
    return {**base, **changes}


@pytest.mark.parametrize("family,answer,prompt", [
    ("qwen2_vl", "<|object_ref_start|>the red cat<|object_ref_end|><|box_start|>(16,42),(469,835)<|box_end|>",
     "<image>Find the bounding box of <|object_ref_start|>the red cat<|object_ref_end|>."),
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [10, 20, 302, 397], "label": "the red cat"}\n]\n```',
     '<image>Locate "the red cat" in the image and output its bbox coordinates in JSON format.'),
    ("qwen3_vl", '```json\n[\n\t{"bbox_2d": [16, 42, 469, 835], "label": "the red cat"}\n]\n```',
     '<image>Locate "the red cat" in the image and output its bbox coordinates in JSON format.'),
])
def test_rec_sample_exact_per_family(family, answer, prompt):
    sample = to_sample(record(), RefOptions(family, *PIXELS[family]))
    assert [(t.role, t.content) for t in sample.turns] == [("user", prompt), ("assistant", answer)]
    assert sample.objects == (("the red cat", Box(10.2, 20.0, 300.0, 400.7)),)
    assert sample.images == ("/d/a.jpg",) and sample.image_sizes == ((640, 480),)


def test_reg_sample_puts_the_box_in_the_prompt():
    sample = to_sample(record(direction="reg", id="7_70_reg"), RefOptions("qwen3_vl", *PIXELS["qwen3_vl"]))
    assert [t.content for t in sample.turns] == [
        "<image>Describe the region [16, 42, 469, 835] in a short phrase.", "the red cat"]


def test_box_outside_image_is_clipped_within_tolerance_else_skipped():
    opts = RefOptions("qwen3_vl", *PIXELS["qwen3_vl"], box_tolerance=2.0)
    assert to_sample(record(bbox=[-1.0, 0, 642, 480]), opts).objects[0][1] == Box(0, 0, 640, 480)
    with pytest.raises(SkipRecord, match="outside the 640x480 image") as info:
        to_sample(record(bbox=[600, 0, 50, 10]), opts)
    assert info.value.field == "bbox"
    with pytest.raises(SkipRecord, match="empty referring expression"):
        to_sample(record(phrase="  "), opts)


def test_refer_layout_end_to_end_every_sentence_a_sample(tmp_path, capsys):
    refer = make_refcoco(tmp_path / "refer", n=8, seed=2)
    refs = pickle.loads((refer / "refs(umd).p").read_bytes())
    out = tmp_path / "out"
    assert main(["refcoco", "--input", str(refer), "--out", str(out), "--model", "qwen2_vl"]) == 0
    assert "warning" not in capsys.readouterr().err  # a test split written as test data is what eval reads
    instances = json.loads((refer / "instances.json").read_text())
    images = {i["id"]: i for i in instances["images"]}
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    for split in ("train", "val", "test"):
        converted = rows(out / f"refcoco_{split}.json")
        split_refs = [r for r in refs if r["split"] == split]
        assert len(converted) == sum(len(r["sentences"]) for r in split_refs)
        pairs = [(r, s) for r in split_refs for s in r["sentences"]]
        for row, (ref, sentence) in zip(converted, pairs):
            image = images[ref["image_id"]]
            assert Path(row["images"][0]).name == image["file_name"]  # not the ref's _<ann_id> name
            (box,) = parse_boxes(row["messages"][1]["content"], "qwen2_vl", (image["width"], image["height"]),
                                 min_pixels=3136, max_pixels=602112)
            x, y, w, h = boxes[ref["ann_id"]]
            assert all(abs(a - b) <= 1 for a, b in zip(box.as_list(), [x, y, x + w, y + h]))
            assert sentence["sent"] in row["messages"][0]["content"]
    assert main(["check", str(out)]) == 0


def test_qwen2_5_vl_rows_follow_each_trainers_resize(tmp_path):
    refer = tmp_path / "refer"
    (refer / "imgs").mkdir(parents=True)
    Image.new("RGB", (3000, 2000)).save(refer / "imgs" / "big.png")
    (refer / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "big.png", "width": 3000, "height": 2000}],
        "annotations": [{"id": 9, "image_id": 1, "bbox": [1500, 1000, 1500, 1000]}]}))
    refs = [{"ref_id": 0, "ann_id": 9, "image_id": 1, "split": "train", "file_name": "big_9.png",
             "sentences": [{"sent_id": 0, "sent": "lower right"}]}]
    (refer / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    out = tmp_path / "out"
    assert main(["refcoco", "--input", str(refer), "--images", str(refer / "imgs"), "--out", str(out)]) == 0
    assert '"bbox_2d": [476, 322, 952, 644]' in rows(out / "refcoco_train.json")[0]["messages"][1]["content"]
    assert '"bbox_2d": [462, 308, 924, 616]' in rows(out / "refcoco_train.jsonl")[0]["messages"][1]["content"]
    options = json.loads((out / "manifest.json").read_text())["datasets"]["refcoco_train"]["options"]
    assert (options["min_pixels"], options["max_pixels"]) == (3136, 602112)
    assert main(["check", str(out)]) == 0


def test_refs_pickle_is_loaded_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refused global builtins.print"):
        load_plain_pickle(pickle.dumps([{"ref_id": 1, "x": Evil()}]))
    # a Python 2 cPickle protocol-2 stream: {'sent': 'caf\xc3\xa9' (utf-8 bytes str), 'ids': set([1])}
    py2 = (b"\x80\x02}q\x00(U\x04sentq\x01U\x05caf\xc3\xa9q\x02U\x03idsq\x03c__builtin__\nset\nq\x04]q\x05K\x01a"
           b"\x85q\x06Rq\x07u.")
    assert load_plain_pickle(py2) == {"sent": "café", "ids": {1}}


def png_bytes(size, color=(0, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path: Path, rows_: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows_), path)
    return path


def test_parquet_rows_with_embedded_images(tmp_path):
    image = png_bytes((100, 50))
    source = write_parquet(tmp_path / "data" / "val-00000-of-00001.parquet", [
        {"question_id": 1, "image": {"bytes": image, "path": None}, "bbox": "[10, 5, 20, 10]",
         "answer": ["left box", "the box"], "image_size": [100, 50]},
        {"question_id": 2, "image": {"bytes": image, "path": None}, "bbox": "[90, 40, 20, 20]",
         "answer": ["far box"], "image_size": [100, 50]},
    ])
    out = tmp_path / "out"
    assert main(["refcoco", "--input", str(tmp_path / "data"), "--out", str(out), "--bbox-format", "xywh",
                 "--model", "qwen3_vl"]) == 0
    converted = rows(out / "refcoco_val.json")
    assert [r["messages"][1]["content"] for r in converted] == [
        '```json\n[\n\t{"bbox_2d": [100, 100, 300, 300], "label": "left box"}\n]\n```',
        '```json\n[\n\t{"bbox_2d": [100, 100, 300, 300], "label": "the box"}\n]\n```']
    stored = list((out / "images").iterdir())
    assert len(stored) == 1 and converted[0]["images"] == [str(stored[0].resolve())]
    (skip,) = json.loads((out / "manifest.json").read_text())["datasets"]["refcoco_val"]["skipped"]
    assert skip["id"] == "2_0" and skip["field"] == "bbox" and "outside the 100x50 image" in skip["reason"]


def test_parquet_bbox_format_auto_only_when_unambiguous(tmp_path):
    ambiguous = write_parquet(tmp_path / "a" / "train.parquet", [{"bbox": [10, 10, 30, 30], "image_size": [100, 100]}])
    with pytest.raises(ValueError, match="cannot auto-detect the bbox format"):
        detect_bbox_format([ambiguous])
    xyxy = write_parquet(tmp_path / "b" / "train.parquet", [{"bbox": [10, 10, 30, 30], "image_size": [100, 100]},
                                                            {"bbox": [50, 50, 90, 95], "image_size": [100, 100]}])
    assert detect_bbox_format([xyxy]) == "xyxy"  # as xywh the second box would leave the image
    xywh = write_parquet(tmp_path / "c" / "train.parquet", [{"bbox": "[50, 50, 20, 10]"}])
    assert detect_bbox_format([xywh]) == "xywh"  # as xyxy it would be inverted
    assert main(["refcoco", "--input", str(ambiguous), "--out", str(tmp_path / "out")]) == 2


def test_own_prompts_with_the_phrase_and_the_box_where_they_stand():
    opts = RefOptions("qwen3_vl", *PIXELS["qwen3_vl"], rec_prompt="Where is {phrase}? <image> Answer in JSON.",
                      reg_prompt="<image>Name {box}.")
    assert to_sample(record(), opts).turns[0].content == "Where is the red cat? <image> Answer in JSON."
    assert to_sample(record(direction="reg"), opts).turns[0].content == "<image>Name [16, 42, 469, 835]."


def test_prompt_option_reaches_every_row_and_the_manifest(tmp_path):
    refer = make_refcoco(tmp_path / "refer", n=2, seed=1)
    out = tmp_path / "out"
    assert main(["refcoco", "--input", str(refer), "--out", str(out), "--model", "qwen3_vl", "--split", "train",
                 "--prompt", 'Find "{phrase}". Answer in JSON.']) == 0
    converted = rows(out / "refcoco_train.json")
    phrases = [json.loads(r["messages"][1]["content"].strip("`json\n"))[0]["label"] for r in converted]
    assert [r["messages"][0]["content"] for r in converted] == [f'<image>Find "{p}". Answer in JSON.' for p in phrases]
    options = json.loads((out / "manifest.json").read_text())["datasets"]["refcoco_train"]["options"]
    assert options["prompt"] == '<image>Find "{phrase}". Answer in JSON.'


@pytest.mark.parametrize("flag, value, reason", [
    ("--prompt", "Find the object.", "must hold {phrase}"),  # the expression would be lost
    ("--prompt", "<image><image>Find {phrase}.", "at most one <image>"),
    ("--reg-prompt", "Describe the region.", "must hold {box}"),
])
def test_prompt_option_refuses_a_prompt_that_loses_the_record(flag, value, reason, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["refcoco", "--input", str(tmp_path), "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and f"argument {flag}: " in err and reason in err


def test_a_copy_without_a_train_split_says_which_split_to_train_on(tmp_path, capsys):
    image = png_bytes((100, 50))
    for split in ("val", "test"):
        write_parquet(tmp_path / "refcocog" / f"{split}-00000-of-00001.parquet", [
            {"question_id": 1, "image": {"bytes": image, "path": None}, "bbox": [10, 5, 20, 10],
             "answer": ["left box"], "image_size": [100, 50]}])
    out = tmp_path / "data" / "refcocog"
    assert main(["refcoco", "--input", str(tmp_path / "refcocog"), "--out", str(out), "--name", "refcocog",
                 "--bbox-format", "xywh"]) == 0
    assert sorted(json.loads((out / "dataset_info.json").read_text())) == ["refcocog_test", "refcocog_val"]
    assert (out / "refcocog_val.jsonl").is_file()
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert note == [f"note: {tmp_path / 'refcocog'} holds no train split, only ['test', 'val'] (Hugging Face copies of "
                    "RefCOCO* hold val/test); the grounding recipes train on refcocog_train: to train on refcocog_val "
                    "instead, override the recipe's dataset: dataset=refcocog_val (LLaMA-Factory) or --dataset "
                    f"{out / 'refcocog_val.jsonl'} (ms-swift), and evaluate on refcocog_test"]
    assert main(["refcoco", "--input", str(tmp_path / "refcocog"), "--out", str(out), "--name", "refcocog",
                 "--bbox-format", "xywh", "--split", "val"]) == 0
    assert "note:" not in capsys.readouterr().err  # asked for val alone
