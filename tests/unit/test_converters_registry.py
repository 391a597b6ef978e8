"""A dataset is one `to_sample` function plus one registry entry: the entry below, registered here only, becomes a
converters subcommand, its rows get its own check in `converters check`, and eval reads its data as its task's."""
import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from converters import registry
from converters.__main__ import build_parser, main
from converters.check import check_dir
from converters.images import existing_image, image_size
from converters.registry import TASK_NAMES, Conversion, Source, register_source, registered
from converters.schema import Sample, Skip, SkipRecord, Turn
from converters.sources.tables import row_source, split_rows
from eval.data import choose_data_file, load_samples, read_manifest_entry
from eval.run import data_settings
from eval.score import SCORERS, ScoreSettings, normalize_records, score_records


def to_sample(record: dict, prompt: str, resize_path: str = "hf") -> Sample:
    caption = " ".join(record["caption"].split())
    if not caption:
        raise SkipRecord("empty caption", "caption")
    return Sample(id=record["id"], images=(record["image"],),
                  turns=(Turn("user", "<image>" + prompt), Turn("assistant", caption)),
                  image_sizes=(record["size"],))


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    path = Path(args.input)

    def items():
        for split, (number, row) in split_rows(path, args.split, args.limit):
            if isinstance(row, Skip):
                yield split, row
                continue
            try:
                image = existing_image(images, row["image"])
                yield split, {"id": f"row{number}", "image": image, "size": image_size(image),
                              "caption": row["caption"], "source": row_source(path, number)}
            except SkipRecord as skip:
                yield split, Skip(f"row{number}", skip.reason, row_source(path, number), skip.field)
    return Conversion(items(), to_sample, args.prompt, [path])


def check_row(row: dict, options: dict, resize_path: str, image_sizes: list) -> list[str]:
    answer = row["messages"][-1]["content"]
    return [] if answer.endswith(".") else [f"caption {answer!r} does not end with a full stop"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="Describe the shape.", help="user text after <image>")


SHAPE_NOTES = Source(command="shape-notes", tasks=("caption",), dataset="shape_notes", help="shape notes",
                     description="Captions from a JSON list of {image, caption[, split]}.",
                     input_help="a JSON list", images_help="default: the input's folder",
                     add_arguments=add_arguments, read=read, check_row=check_row)


@pytest.fixture
def shape_notes(monkeypatch):
    monkeypatch.setattr(registry, "SOURCES", dict(registered()))
    register_source(SHAPE_NOTES)


def write_input(folder: Path, captions: list[str]) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for i, caption in enumerate(captions):
        Image.new("RGB", (8 + i, 6), (200, 0, 0)).save(folder / f"s{i}.png")
        rows.append({"image": f"s{i}.png", "caption": caption})
    (folder / "notes.json").write_text(json.dumps(rows))
    return folder / "notes.json"


def test_a_registered_source_is_a_subcommand_that_converts(tmp_path, shape_notes):
    source = write_input(tmp_path / "in", ["A red square.", "  ", "A  red   bar."])
    assert "shape-notes" in build_parser().format_help()
    out = tmp_path / "out"
    assert main(["shape-notes", "--input", str(source), "--out", str(out), "--prompt", "Name it."]) == 0
    rows = json.loads((out / "shape_notes_train.json").read_text())
    assert rows == [
        {"messages": [{"role": "user", "content": "<image>Name it."}, {"role": "assistant", "content": "A red square."}],
         "images": [str(tmp_path / "in" / "s0.png")]},
        {"messages": [{"role": "user", "content": "<image>Name it."}, {"role": "assistant", "content": "A red bar."}],
         "images": [str(tmp_path / "in" / "s2.png")]}]
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["shape_notes_train"]
    assert (entry["task"], entry["converter"], entry["count"], entry["options"]["prompt"]) == (
        "caption", "shape-notes", 2, "Name it.")
    assert [(s["id"], s["field"], s["reason"]) for s in entry["skipped"]] == [("row1", "caption", "empty caption")]


def test_check_runs_the_row_check_the_source_registered(tmp_path, shape_notes):
    source = write_input(tmp_path / "in", ["A red square.", "a red bar"])
    assert main(["shape-notes", "--input", str(source), "--out", str(tmp_path / "out")]) == 0
    assert check_dir(tmp_path / "out") == [
        "shape_notes_train.json row 1: caption 'a red bar' does not end with a full stop",
        "shape_notes_train.jsonl row 2: caption 'a red bar' does not end with a full stop"]
    assert main(["check", str(tmp_path / "out")]) == 1


def test_check_names_a_source_nothing_registers(tmp_path, shape_notes):
    source = write_input(tmp_path / "in", ["A red square."])
    assert main(["shape-notes", "--input", str(source), "--out", str(tmp_path / "out")]) == 0
    registry.SOURCES.pop("shape-notes")
    assert check_dir(tmp_path / "out") == [
        "manifest.json: 'shape_notes_train' was written by converter 'shape-notes', which no "
        "module of converters/sources registers (known: ['chat', 'coco-caption', 'forgery', 'microscopy', 'refcoco'])"]


def test_eval_reads_the_new_source_as_its_tasks_data(tmp_path, shape_notes):
    source = write_input(tmp_path / "in", ["A red square.", "A red bar."])
    assert main(["shape-notes", "--input", str(source), "--out", str(tmp_path / "out"), "--model", "qwen3_vl"]) == 0
    data_file = choose_data_file(tmp_path / "out", "train")
    entry = read_manifest_entry(data_file)
    assert data_settings("caption", data_file, entry).family == "qwen3_vl"
    with pytest.raises(ValueError, match=r"holds 'caption' data \(converter 'shape-notes'\), not 'grounding' data"):
        data_settings("grounding", data_file, entry)
    samples = load_samples(data_file, "caption")
    assert [(s.reference, s.images) for s in samples] == [
        (["A red square."], [str(tmp_path / "in" / "s0.png")]), (["A red bar."], [str(tmp_path / "in" / "s1.png")])]
    records = normalize_records([{"id": s.id, "prediction": s.reference[0], "reference": s.reference}
                                 for s in samples], "predictions")
    metrics, _ = score_records("caption", records, ScoreSettings("qwen3_vl", java_metrics=False))
    assert (metrics["n"], metrics["exact_match"]) == (2, 1.0)


def test_registering_checks_the_command_and_the_task(shape_notes):
    with pytest.raises(ValueError, match="source 'shape-notes' is already registered"):
        register_source(SHAPE_NOTES)
    with pytest.raises(ValueError, match=r"tasks \('counting',\) must be some of \('caption', 'grounding'"):
        register_source(Source(**{**SHAPE_NOTES.__dict__, "command": "count-notes", "tasks": ("counting",)}))


def test_every_task_has_a_source_and_a_scorer():
    assert {task for source in registered().values() for task in source.tasks} == set(TASK_NAMES) == set(SCORERS)
