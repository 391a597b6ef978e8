"""Reading converter output, adapter directories, resumable prediction files (no model needed)."""
import json

import pytest
from PIL import Image

from eval.data import find_split_file, load_image, load_samples, read_manifest_entry, trainer_resize_path
from eval.infer import chat_messages, passthrough_size, resolve_adapter
from eval.run import read_done
from qwenvl_recipes.io import InputError


def _adapter(path):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_adapter_dir_of_either_trainer(tmp_path):
    llamafactory = _adapter(tmp_path / "saves" / "lora")
    assert resolve_adapter(llamafactory) == llamafactory
    swift = tmp_path / "output"
    for run in ("v0-20260101-000000", "v1-20260102-000000"):
        for step in (10, 20, 5):
            _adapter(swift / run / f"checkpoint-{step}")
    assert resolve_adapter(swift) == swift / "v1-20260102-000000" / "checkpoint-20"
    assert resolve_adapter(swift / "v0-20260101-000000") == swift / "v0-20260101-000000" / "checkpoint-20"
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        resolve_adapter(tmp_path / "saves")


def test_sharegpt_messages_become_chat_template_content():
    assert chat_messages([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "<image><image>Which is sharper?"}]) == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is sharper?"}]},
    ]


def test_processor_limits_keep_resized_images():
    images = [Image.new("RGB", (56, 28)), Image.new("RGB", (112, 84))]
    assert passthrough_size(images) == {"size": {"shortest_edge": 56 * 28, "longest_edge": 112 * 84}}
    assert passthrough_size([]) == {}


def _write_split(tmp_path, name, rows, files=None, options=None):
    (tmp_path / name).write_text(json.dumps(rows))
    entry = {"task": "caption", "converter": "coco-caption", "files": files or {"llamafactory": name},
             "options": options or {"model": "qwen2_vl"}}
    manifest = {"datasets": {name.rsplit(".", 1)[0]: entry}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_split_choice_and_manifest_entry(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"d_{split}.json").write_text("[]")
    assert find_split_file(tmp_path, None).name == "d_test.json"  # no val: test before train
    assert find_split_file(tmp_path, "train").name == "d_train.json"
    with pytest.raises(FileNotFoundError, match="no <name>_val.json"):
        find_split_file(tmp_path, "val")
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": {"d_test": {
        "files": {"llamafactory": "d_test.json", "swift": "d_test.jsonl"}, "options": {"model": "qwen3_vl"}}}}))
    entry = read_manifest_entry(tmp_path / "d_test.json")
    assert entry["options"]["model"] == "qwen3_vl"
    assert trainer_resize_path(tmp_path / "d_test.json", entry) == "llamafactory"
    assert trainer_resize_path(tmp_path / "d_test.jsonl", entry) == "swift"
    with pytest.raises(ValueError, match="no dataset entry lists d_train.json"):
        read_manifest_entry(tmp_path / "d_train.json")


def test_without_val_or_test_the_split_is_asked_for(tmp_path):
    for name in ("r_testA.json", "r_train.json", "dataset_info.json"):
        (tmp_path / name).write_text("[]")
    with pytest.raises(ValueError, match=r"no val or test split; it holds r_testA.json, r_train.json: pass --split to "
                                         r"choose one \(the training rows are scored only with --split train\)"):
        find_split_file(tmp_path, None)
    assert find_split_file(tmp_path, "testA").name == "r_testA.json"


def test_captions_of_one_image_are_pooled(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    row = lambda image, caption: {"messages": [{"role": "user", "content": "<image>Describe."},
                                               {"role": "assistant", "content": caption}], "images": [image]}
    _write_split(tmp_path, "c_val.json", [row("a.png", "one"), row("b.png", "two"), row("a.png", "three")])
    samples = load_samples(tmp_path / "c_val.json", "caption")
    assert [(s.id, s.reference, s.image_size()) for s in samples] == [
        ("c_val-000000", ["one", "three"], [8, 8]), ("c_val-000001", ["two"], [8, 8])]
    assert samples[0].images == [str((tmp_path / "a.png").resolve())]


@pytest.mark.parametrize("row, error", [
    ({"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}], "images": []},
     "record 0: 1 <image> placeholders but 0 images"),
    ({"messages": [{"role": "user", "content": "hi"}], "images": []}, "record 0: the last message must be"),
    ({"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}],
      "images": ["gone.png"]}, "record 0: image 'gone.png' not found"),
    ("a caption", "record 0: expected a JSON object \\(a sharegpt record\\), got str"),
    ({"messages": ["hi", {"role": "assistant", "content": "x"}]},
     "record 0: messages\\[0\\] must be an object with a 'role' and a 'content' text"),
    ({"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]},
     "record 0: messages\\[0\\] must be an object"),
    ({"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}], "images": "a.png"},
     "record 0: 'images' must be a list of paths"),
])
def test_bad_records_are_named(tmp_path, row, error):
    _write_split(tmp_path, "c_val.json", [row])
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        load_samples(tmp_path / "c_val.json", "microscopy")


def test_two_records_of_one_id_are_refused(tmp_path):
    row = {"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    _write_split(tmp_path, "c_val.json", [row, row])
    with pytest.raises(ValueError, match="c_val.json: two records have the id 'x'; ids must be unique"):
        load_samples(tmp_path / "c_val.json", "microscopy")


@pytest.mark.parametrize("content, cause", [
    (b"not an image", "cannot identify image file"),
    ("truncated", "image file is truncated"),
])
def test_an_image_that_cannot_be_decoded_is_named(tmp_path, content, cause):
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.effect_noise((64, 64), 50).convert("RGB").save(path)
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"broken.png: cannot read the image \(.*{cause}"):
        load_image(path)


def test_a_line_cut_by_an_interruption_is_dropped(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "predic')
    assert read_done(predictions) == [{"id": "a"}, {"id": "b"}]
    assert predictions.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    predictions.write_text('{"id": "a"}\n{"id": "b"}')  # cut before its newline: the next answer would join it
    assert read_done(predictions) == [{"id": "a"}]
    assert predictions.read_text() == '{"id": "a"}\n'
    predictions.write_text('{"id": "a"}\n{"id\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="predictions.jsonl:2: corrupt line in the middle"):
        read_done(predictions)


def test_an_image_that_does_not_decode_is_named_with_its_record(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from tests.unit.test_converters_bad_input import truncated_jpeg

    truncated_jpeg(tmp_path / "cut.jpg")
    row = {"messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "x"}],
           "images": ["cut.jpg"]}
    _write_split(tmp_path, "c_val.json", [row])
    with pytest.raises(ValueError) as error:
        load_samples(tmp_path / "c_val.json", "caption")
    assert str(error.value).startswith(f"{tmp_path / 'c_val.json'}, record 0: image {(tmp_path / 'cut.jpg').resolve()} "
                                       "does not decode (OSError: image file is truncated")
