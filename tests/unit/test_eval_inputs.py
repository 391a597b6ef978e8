"""eval's choice of data file per trainer, forgery head checkpoints, and the checks on predictions files
(no model is loaded: every case is decided before)."""
import errno
import json
import os
import subprocess
import sys

import pytest

from converters.__main__ import main as convert
from converters.options import read_processor_pixels
from eval.__main__ import main
from eval.data import adapter_trainer, check_split, choose_data_file, find_split_file, load_samples, read_manifest_entry
from eval.run import data_settings, input_hashes, read_done, run_changes, run_eval, with_model_processor
from qwenvl_recipes.io import InputError, folder_lock, sha256_file
from tools.synthetic_data import make_coco_caption, make_focus_pairs, make_refcoco


def _adapter(path):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


@pytest.fixture
def grounding(tmp_path):
    out = tmp_path / "data"
    assert convert(["refcoco", "--input", str(make_refcoco(tmp_path / "refer", n=6, seed=1)), "--out", str(out)]) == 0
    return out


def test_swift_adapter_gets_the_jsonl_and_llamafactory_the_json(grounding, tmp_path):
    swift = tmp_path / "output"
    checkpoint = _adapter(swift / "v0-20260101-000000" / "checkpoint-10")
    (swift / "v0-20260101-000000" / "args.json").write_text("{}")
    assert adapter_trainer(swift, checkpoint) == ("swift", swift / "v0-20260101-000000" / "args.json")
    assert choose_data_file(grounding, None, swift, checkpoint) == grounding / "refcoco_val.jsonl"

    llamafactory = _adapter(tmp_path / "saves" / "lora")
    (llamafactory / "trainer_log.jsonl").write_text("")
    assert choose_data_file(grounding, None, llamafactory, llamafactory) == grounding / "refcoco_val.json"
    assert choose_data_file(grounding, "train", None) == grounding / "refcoco_train.json"  # base model
    lf_checkpoint = _adapter(llamafactory / "checkpoint-5")  # its trainer_log.jsonl is one folder up
    assert adapter_trainer(lf_checkpoint, lf_checkpoint) == ("llamafactory", llamafactory / "trainer_log.jsonl")

    with pytest.raises(ValueError, match=r"trained with ms-swift \(args.json in .*\), but --data .*refcoco_val.json "
                                         r"is the file of the other trainer; pass --data .*refcoco_val.jsonl"):
        choose_data_file(grounding / "refcoco_val.json", None, swift, checkpoint)


def test_adapter_of_unknown_trainer_is_refused_naming_both_files(grounding, tmp_path):
    bare = _adapter(tmp_path / "lora")
    with pytest.raises(ValueError, match="cannot tell which trainer wrote --adapter") as info:
        choose_data_file(grounding, None, bare, bare)
    assert f"--data {grounding / 'refcoco_val.json'} (LLaMA-Factory)" in str(info.value)
    assert f"--data {grounding / 'refcoco_val.jsonl'} (ms-swift)" in str(info.value)
    # One file only: nothing to choose between.
    swift_only = tmp_path / "swift_only"
    assert convert(["refcoco", "--input", str(tmp_path / "refer"), "--out", str(swift_only), "--target", "swift"]) == 0
    assert choose_data_file(swift_only, None, bare, bare) == swift_only / "refcoco_val.jsonl"


def test_cli_refuses_before_loading_a_model(grounding, tmp_path, capsys):
    bare = _adapter(tmp_path / "lora")
    assert main(["run", "--task", "grounding", "--model", str(tmp_path / "no-model"), "--adapter", str(bare),
                 "--data", str(grounding), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot tell which trainer wrote --adapter") and "Traceback" not in err


def _score(tmp_path, task, family, rows):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return main(["score", "--task", task, "--model-family", family, "--predictions", str(predictions),
                 "--out", str(tmp_path / "o"), "--no-java-metrics"])


BOX = '{"bbox_2d": [1, 2, 30, 40]}'


@pytest.mark.parametrize("task, family, bad, message", [
    ("grounding", "qwen2_5_vl", {"image_size": [0, 0]}, "'image_size' must be [width, height] of positive integers"),
    ("grounding", "qwen2_5_vl", {"image_size": [640]}, "'image_size' must be [width, height]"),
    ("grounding", "qwen3_vl", {"image_size": [True, 480]}, "'image_size' must be [width, height]"),
    ("forgery", "qwen2_vl", {"label": 2}, "'label' must be 0 (real) or 1 (fake), got 2"),
    ("forgery", "qwen2_vl", {"label": True}, "'label' must be 0 (real) or 1 (fake), got True"),
    ("forgery", "qwen2_vl", {"score": 1.5}, "'score' must be P(fake), a number in [0, 1], got 1.5"),
    ("forgery", "qwen2_vl", {"score": float("nan")}, "'score' must be P(fake), a number in [0, 1], got nan"),
    ("forgery", "qwen2_vl", {"reference": ["fake"]}, "'reference' must be one answer text for forgery, got a list"),
    ("grounding", "qwen3_vl", {"reference": 5}, "'reference' must be the answer text (a list of texts for captions)"),
])
def test_score_names_the_bad_line_and_field(tmp_path, capsys, task, family, bad, message):
    good = {"prediction": BOX, "reference": BOX, "image_size": [640, 480]} if task == "grounding" else \
        {"prediction": "fake", "reference": "fake", "label": 1, "score": 0.9}
    assert _score(tmp_path, task, family, [good, good | bad]) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl, line 2: {message}" in err and "Traceback" not in err


def test_a_label_that_contradicts_its_reference_is_an_input_error(tmp_path, capsys):
    rows = [{"prediction": "fake", "reference": "fake", "label": 1}, {"prediction": "fake", "reference": "fake", "label": 0},
            {"prediction": "real", "reference": "an image", "label": 0}]
    assert _score(tmp_path, "forgery", "qwen2_vl", rows) == 2
    assert capsys.readouterr().err == ("error: " + str(tmp_path / "p.jsonl") + ", line 2 (id '2'): 'label' 0 (real) "
                                       "contradicts its reference 'fake'; one of them is wrong\n")
    # a reference without either word leaves the label to say what the image is
    assert _score(tmp_path, "forgery", "qwen2_vl", rows[:1] + rows[2:]) == 0


def test_an_empty_predictions_file_is_named(tmp_path, capsys):
    assert _score(tmp_path, "caption", "qwen2_vl", []) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'p.jsonl'}: no predictions in it\n"


def test_metrics_json_holds_null_not_nan(tmp_path):
    reference = json.dumps({"analysis": "", "direction": "+", "distance": 2})
    assert _score(tmp_path, "microscopy", "qwen2_vl", [
        {"prediction": '{"direction": "+", "distance": NaN}', "reference": reference}]) == 0
    text = (tmp_path / "o" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert metrics["distance_mae"] is None
    for line in (tmp_path / "o" / "samples.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"samples.jsonl holds {name}"))


def _checkpoint(path, min_pixels, max_pixels, layout="processor_config.json"):
    """A model dir holding only its processor config, in the hub layout or the nested one transformers 5 saves."""
    path.mkdir(parents=True)
    limits = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    config = limits if layout == "preprocessor_config.json" else {"image_processor": limits}
    (path / layout).write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("layout", ["preprocessor_config.json", "processor_config.json"])
def test_processor_pixels_read_from_either_config_layout(tmp_path, layout):
    assert read_processor_pixels(_checkpoint(tmp_path / "m", 4096, 65536, layout)) == (4096, 65536)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no preprocessor_config.json or processor_config.json"):
        read_processor_pixels(tmp_path / "empty")


def _settings(data_file, task, model, samples=None):
    entry = read_manifest_entry(data_file)
    return with_model_processor(data_settings(task, data_file, entry), task, model, data_file,
                                samples if samples is not None else load_samples(data_file, task))


def test_llamafactory_images_fed_at_the_checkpoints_own_processor_limits(tmp_path):
    data = tmp_path / "data"
    assert convert(["microscopy", "--input", str(make_focus_pairs(tmp_path / "src", n=4, n_val=2)), "--out",
                    str(data), "--model", "qwen3_vl"]) == 0
    official, tiny = "Qwen/Qwen3-VL-2B-Instruct", _checkpoint(tmp_path / "tiny", 4096, 65536)
    # LLaMA-Factory's resize ends in the checkpoint's processor: the official Qwen3-VL one lifts a 96 px image
    # to 256 px (min 65536 pixels), a checkpoint with a lower minimum keeps it, and eval must feed what trained.
    assert _settings(data / "microscopy_val.json", "microscopy", official).box_convention().resized((96, 96)) \
        == (256, 256)
    assert _settings(data / "microscopy_val.json", "microscopy", tiny).box_convention().resized((96, 96)) == (96, 96)
    # ms-swift resizes by the recipe's MIN_PIXELS/MAX_PIXELS alone.
    assert _settings(data / "microscopy_val.jsonl", "microscopy", tiny).box_convention().resized((96, 96)) \
        == (96, 96)


def test_absolute_boxes_under_other_processor_limits_are_refused_naming_the_record(grounding, tmp_path):
    data_file = grounding / "refcoco_val.json"  # Qwen2.5-VL: boxes in pixels of the resized image
    samples = load_samples(data_file, "grounding")
    wide = _settings(data_file, "grounding", _checkpoint(tmp_path / "wide", 3136, 10 ** 9), samples)
    assert wide.processor_pixels == (3136, 10 ** 9)  # no image resizes differently: the boxes still hold
    with pytest.raises(ValueError, match=rf"refcoco_val.json: record {samples[0].id!r}: its boxes are pixels of "
                                         r"the image resized to .* \(processor limits \[3136, 12845056\]\), but "
                                         r".*upscaling resizes it to .*; convert again with --processor-config"):
        _settings(data_file, "grounding", _checkpoint(tmp_path / "upscaling", 10 ** 6, 10 ** 9), samples)


@pytest.fixture
def train_only(tmp_path):
    out = tmp_path / "report"
    source = make_coco_caption(tmp_path / "coco", n=4) / "captions_train2014.json"
    assert convert(["coco-caption", "--input", str(source), "--out", str(out), "--split", "train"]) == 0
    return out


def test_training_rows_are_scored_only_with_split_train(train_only, tmp_path, tiny_model_dir, capsys):
    for suffix in (".json", ".jsonl"):
        with pytest.raises(ValueError, match=rf"report: no val or test split, only the training rows "
                                             rf"\(coco_caption_train{suffix}\); pass --split train to score those"):
            find_split_file(train_only, None, suffix)
    assert find_split_file(train_only, "train").name == "coco_caption_train.json"
    data_file = train_only / "coco_caption_train.json"
    entry = read_manifest_entry(data_file)
    with pytest.raises(ValueError, match=r"coco_caption_train.json holds the training rows \(its manifest.json "
                                         r"entry\); pass --split train"):
        check_split(data_file, entry, None)
    with pytest.raises(ValueError, match=r"holds the train split \(its manifest.json entry\), not --split val"):
        check_split(data_file, entry, "val")
    check_split(data_file, entry, "train")
    assert main(["run", "--task", "caption", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(train_only),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "pass --split train" in err


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(grounding, tmp_path,
                                                                                        tiny_model_dir):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qwenvl_recipes.io import folder_lock\n"
                               "with folder_lock(sys.argv[1], 'eval run'):\n    print('held', flush=True)\n"
                               "    time.sleep(300)\n", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=rf"{out}: another eval run \(process {holder.pid} on .*\) is writing into it \(lock "
                                             rf"file {out}/.lock\); wait for it to end, or stop it"):
            run_eval("grounding", str(tiny_model_dir("qwen2_5_vl")), grounding, out)
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, naming a process that is gone
        holder.wait()
    assert "process" in (out / ".lock").read_text()
    with folder_lock(out, "eval run"):
        assert (out / ".lock").read_text().startswith(f"process {os.getpid()} ")
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("text, message", [
    ('{"id": "a", "prediction": "x"}\n{"id": "b"}\n{"id": "a", "prediction": "y"}\n',
     r"predictions.jsonl:3: id 'a' again \(line 1\): two runs wrote into .* at once, or the file was edited; "
     r"pass --overwrite"),
    ('{"prediction": "x"}\n', r"predictions.jsonl:1: not a line `eval run` writes \(an object with a text 'id'\)"),
    ('[1, 2]\n{"id": "b"}\n', r"predictions.jsonl:1: not a line `eval run` writes"),
])
def test_predictions_that_eval_run_did_not_write_are_named(tmp_path, text, message):
    (tmp_path / "predictions.jsonl").write_text(text)
    with pytest.raises(InputError, match=message):
        read_done(tmp_path / "predictions.jsonl")


def test_what_changed_since_the_recorded_run_is_named(tmp_path):
    before = {"task": "caption", "max_new_tokens": 6, "sha256": {"data_file": "a" * 64, "model/config.json": "b" * 64,
                                                                 "checkpoint/adapter_model.safetensors": "c" * 64}}
    now = {"task": "caption", "max_new_tokens": 9, "sha256": {"data_file": "d" * 64, "model/config.json": "b" * 64,
                                                              "checkpoint/forgery_head.safetensors": "e" * 64}}
    assert run_changes(before, now) == [
        "max_new_tokens 6 -> 9", "checkpoint/adapter_model.safetensors is gone (sha256 cccccccccccc -> none)",
        "checkpoint/forgery_head.safetensors appeared (sha256 none -> eeeeeeeeeeee)",
        "data_file changed (sha256 aaaaaaaaaaaa -> dddddddddddd)"]
    assert run_changes({"task": "caption", "max_new_tokens": 9}, now) == [
        "its run.json records no content hashes (an older eval wrote it)"]
    assert run_changes(now, now) == []


def test_inputs_are_hashed_by_content(tmp_path, tiny_model_dir):
    data_file = tmp_path / "d_val.json"
    data_file.write_text("[]")
    lora = _adapter(tmp_path / "lora")
    (lora / "adapter_model.safetensors").write_bytes(b"weights")
    (lora / "optimizer.pt").write_bytes(b"not what answers")
    (lora / "vision_encoder").mkdir()
    (lora / "vision_encoder" / "merger.safetensors").write_bytes(b"merger")
    model = tiny_model_dir("qwen2_vl")
    hashes = input_hashes(str(model), lora, data_file)
    assert hashes == {"data_file": sha256_file(data_file), "model/config.json": sha256_file(model / "config.json"),
                      **{f"model/{name}": sha256_file(model / name) for name in ("preprocessor_config.json",
                                                                                   "processor_config.json")
                         if (model / name).is_file()},
                      "checkpoint/adapter_config.json": sha256_file(lora / "adapter_config.json"),
                      "checkpoint/adapter_model.safetensors": sha256_file(lora / "adapter_model.safetensors"),
                      "checkpoint/vision_encoder/merger.safetensors": sha256_file(
                          lora / "vision_encoder" / "merger.safetensors")}
    assert input_hashes("Qwen/Qwen2-VL-2B-Instruct", None, data_file) == {"data_file": sha256_file(data_file)}
    with pytest.raises(InputError, match="--model .*lora: no config.json in it"):
        input_hashes(str(lora), None, data_file)
    with pytest.raises(FileNotFoundError, match="--model /no/model: no such directory"):
        input_hashes("/no/model", None, data_file)


@pytest.mark.parametrize("change, message", [
    ({"--data": "/no/data"}, "--data /no/data: no such file or directory"),
    ({"--model": "/no/model"}, "--model /no/model: no such directory"),
    ({"--model": "{tmp}"}, "--model {tmp}: no config.json in it (not a model folder)"),
    ({"--adapter": "/no/adapter"}, "--adapter /no/adapter: no such directory"),
    ({"--device": "gpu0"}, "--device 'gpu0': not a torch device (cpu, cuda, cuda:1, ...)"),
])
def test_run_errors_are_one_line_naming_the_option(grounding, tmp_path, tiny_model_dir, capsys, change, message):
    """Every one refused before a model loads."""
    options = {"--task": "grounding", "--model": str(tiny_model_dir("qwen2_5_vl")), "--data": str(grounding),
               "--out": str(tmp_path / "run")}
    options.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    assert main(["run", *[part for pair in options.items() for part in pair]]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=tmp_path)}\n"


def test_a_full_disk_is_named(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("eval.score.write_jsonl_atomic", full)
    assert _score(tmp_path, "forgery", "qwen2_vl", [{"prediction": "fake", "reference": "fake"}]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'o'}: cannot write samples.jsonl / metrics.json "
                                       "(No space left on device)\n")
