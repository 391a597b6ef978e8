"""Cross-source behaviour: strict mode, idempotence, atomic index files, the check command, trainer loading."""
import json
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image

from converters import pipeline
from converters.__main__ import main
from converters.check import check_dir
from converters.schema import Sample, Turn
from tools.synthetic_data import make_coco_caption, make_forgery, make_refcoco


def convert_refcoco(tmp_path: Path, *extra: str) -> Path:
    refer = make_refcoco(tmp_path / "refer", n=6, seed=5)
    out = tmp_path / "out"
    assert main(["refcoco", "--input", str(refer), "--out", str(out), "--direction", "both", *extra]) == 0
    return out


def test_rerun_is_byte_identical_and_leaves_no_temp_files(tmp_path):
    out = convert_refcoco(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["refcoco", "--input", str(tmp_path / "refer"), "--out", str(out), "--direction", "both", "--debug"]) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # --debug changes messages only
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_strict_turns_a_skip_into_failure_and_writes_nothing(tmp_path, capsys):
    source = make_coco_caption(tmp_path / "syn", n=4, seed=0)
    data = json.loads((source / "captions_train2014.json").read_text())
    data["annotations"][0]["caption"] = ""
    (source / "captions_train2014.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(source), "--out", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "--strict: 1 record(s) skipped" in err and "captions_train2014.json record 1_10 field caption" in err
    assert not out.exists() or not list(out.iterdir())
    assert main(["coco-caption", "--input", str(source), "--out", str(out)]) == 0  # without --strict: kept going


def test_splits_converted_separately_share_one_dataset_info(tmp_path):
    refer = make_refcoco(tmp_path / "refer", n=6, seed=5)
    out = tmp_path / "out"
    for split in ("train", "val"):
        assert main(["refcoco", "--input", str(refer), "--out", str(out), "--split", split]) == 0
    assert sorted(json.loads((out / "dataset_info.json").read_text())) == ["refcoco_train", "refcoco_val"]
    assert sorted(json.loads((out / "manifest.json").read_text())["datasets"]) == ["refcoco_train", "refcoco_val"]


def test_check_reports_each_kind_of_problem(tmp_path):
    out = convert_refcoco(tmp_path, "--model", "qwen3_vl")
    assert check_dir(out) == []
    rows = json.loads((out / "refcoco_train.json").read_text())
    rows[0]["messages"][0]["content"] += "<image>"
    rows[1]["messages"][1]["content"] = '{"bbox_2d": [900, 900, 1200, 1000]}'
    rows[2]["messages"][1]["content"] = "no box"
    rows[3]["images"] = [str(tmp_path / "gone.jpg")]
    rows[4]["messages"][1]["content"] = " "
    (out / "refcoco_train.json").write_text(json.dumps(rows))
    info = json.loads((out / "dataset_info.json").read_text())
    info["extra"] = {"file_name": "missing.json", "formatting": "sharegpt", "columns": {"messages": "messages"}}
    (out / "dataset_info.json").write_text(json.dumps(info))
    problems = check_dir(out)
    assert any("points at missing file 'missing.json'" in p for p in problems)
    assert any("refcoco_train.json row 0: 2 <image> placeholder(s) but 1 image(s)" in p for p in problems)
    assert any("refcoco_train.json row 1: box" in p and "not inside" in p for p in problems)
    assert any("refcoco_train.json row 2: no box parses" in p for p in problems)
    assert any("refcoco_train.json row 3: missing image" in p for p in problems)
    assert any("refcoco_train.json row 4: the last message is not a non-empty assistant answer" in p
               for p in problems)
    assert main(["check", str(out)]) == 1


def test_llamafactory_loads_converted_files_and_resolves_images(tmp_path, tiny_model_dir):
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args

    source = make_forgery(tmp_path / "syn", n=8, seed=1)
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(source), "--out", str(out), "--model", "qwen2_vl"]) == 0
    model_args, data_args, training_args, *_ = get_train_args(dict(
        model_name_or_path=str(tiny_model_dir("qwen2_vl")), stage="sft", do_train=True, finetuning_type="lora",
        dataset="forgery_train", dataset_dir=str(out), template="qwen2_vl", output_dir=str(tmp_path / "lf"),
        report_to="none"))
    dataset = _load_single_dataset(get_dataset_list(["forgery_train"], str(out))[0], model_args, data_args,
                                   training_args)
    assert len(dataset) == 6
    for row in dataset:
        assert Path(row["_images"][0]).is_file()
        assert row["_response"][0]["content"] in ("real", "fake")


SWIFT_LOAD = """
import json, sys
from swift.dataset import load_dataset
train, _ = load_dataset([sys.argv[1]], split_dataset_ratio=0.0, num_proc=1)
print(json.dumps([[m["content"] for m in r["messages"]] + [i["path"] for i in r["images"]] for r in train]))
"""


def test_swift_loads_converted_rows(tmp_path, swift_bin):
    out = convert_refcoco(tmp_path, "--model", "qwen2_5_vl")
    jsonl = out / "refcoco_train.jsonl"
    result = subprocess.run([str(swift_bin / "python"), "-c", SWIFT_LOAD, str(jsonl)], capture_output=True,
                            text=True, check=True, cwd=tmp_path)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    written = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert loaded == [[m["content"] for m in r["messages"]] + r["images"] for r in written]
    assert all(Path(r[-1]).is_file() for r in loaded)


def test_unreadable_image_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "caps.csv").write_text("image_path,caption\nbroken.png,x\nok.png,y\n")
    out = tmp_path / "out"
    assert main(["coco-caption", "--input", str(tmp_path / "caps.csv"), "--out", str(out)]) == 0
    (skip,) = json.loads((out / "manifest.json").read_text())["datasets"]["coco_caption_train"]["skipped"]
    assert skip["id"] == "broken.png_row2" and skip["reason"].startswith("unreadable image")


def test_worker_processes_give_byte_identical_output(tmp_path):
    source = make_coco_caption(tmp_path / "syn", n=12, seed=3)
    data = json.loads((source / "captions_train2014.json").read_text())
    data["annotations"][3]["caption"] = " "  # skipped while rendering (in a worker)
    data["annotations"].insert(7, {"id": 999, "image_id": 424242, "caption": "orphan"})  # skipped while reading
    (source / "captions_train2014.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    args = ["coco-caption", "--input", str(source), "--out", str(out)]
    assert main(args) == 0
    single = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # as users run it: the workers take nothing from `python -m converters`'s __main__, which they do not import
    done = subprocess.run([sys.executable, "-m", "converters", *args, "--workers", "2"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == single
    skipped = json.loads(single["manifest.json"])["datasets"]["coco_caption_train"]["skipped"]
    assert [s["id"] for s in skipped] == ["424242_999", "1_13"]


HELD = threading.Lock()


def render_taking_a_lock(record: dict, resize_path: str) -> Sample:
    """A record -> Sample step that takes a lock of its module, as a library call inside a converter may."""
    if not HELD.acquire(timeout=20):
        raise TimeoutError("the worker waits on a lock its parent held when the worker was made")
    HELD.release()
    return Sample(record["id"], (), (Turn("user", "Say it."), Turn("assistant", record["text"])))


def test_worker_processes_do_not_wait_on_a_lock_another_thread_of_the_parent_holds(tmp_path):
    items = [("train", {"id": str(i), "text": f"Text {i}."}) for i in range(6)]
    with HELD:  # as a tokenizer's or torch's thread may hold one of theirs while the converter starts its pool
        entries = pipeline.run(name="locked", task="caption", converter="test", items=items,
                               convert=render_taking_a_lock, out=tmp_path / "out", targets=("llamafactory",),
                               inputs=[], options={}, trainer_dependent=False, workers=2)
    assert entries["locked_train"]["count"] == 6
    rows = json.loads((tmp_path / "out" / "locked_train.json").read_text())
    assert [row["messages"][1]["content"] for row in rows] == [f"Text {i}." for i in range(6)]


# A program whose own script defines the record -> Sample step, run with two workers.
MAIN_SCRIPT_CONVERSION = """
import sys
from pathlib import Path
from converters import pipeline
from converters.schema import Sample, Turn

def caption(record, resize_path):
    return Sample(record["id"], (), (Turn("user", "Say it."), Turn("assistant", record["text"])))

try:
    pipeline.run(name="own", task="caption", converter="test", items=[("train", {"id": "1", "text": "A."})],
                 convert=caption, out=Path(sys.argv[1]), targets=("llamafactory",), inputs=[], options={},
                 trainer_dependent=False, workers=2)
except ValueError as error:
    sys.exit(str(error))
"""


def test_a_conversion_the_main_script_defines_is_refused_with_workers_instead_of_hanging(tmp_path):
    script = tmp_path / "convert_mine.py"
    script.write_text(MAIN_SCRIPT_CONVERSION)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 1
    assert "workers=2: caption is defined in the main script" in done.stderr
    assert not (tmp_path / "out").exists()
