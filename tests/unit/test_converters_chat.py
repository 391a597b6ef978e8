"""The chat converter: every chat form people write for Qwen-VL, as written, into both trainers' files; boxes into
each family's convention; seeded held-out splits; eval reads the result as the task it names."""
import json
from pathlib import Path

import pytest
from PIL import Image

from converters.__main__ import main
from converters.check import read_output_rows
from converters.schema import Box, SkipRecord
from converters.sources.chat import ChatOptions, to_sample
from converters.sources.conversations import ChatRow, parse_row

PIXELS = {"qwen2_vl": (3136, 602112), "qwen2_5_vl": (3136, 602112), "qwen3_vl": (4096, 786432)}

SINGLE = {"id": "a1", "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "A red square."}]}
MULTI_IMAGE = {"image": ["a.png", "sub/b.png"], "conversations": [
    {"from": "human", "value": "<image>\n<image>\nWhich one is larger?"}, {"from": "gpt", "value": "The second."}]}
MULTI_TURN = {"messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And <image> this one?"}, {"role": "assistant", "content": "Blue."}],
    "images": ["a.png", "sub/b.png"]}
TYPED = {"messages": [
    {"role": "user", "content": [{"type": "image", "image": "sub/b.png"}, {"type": "text", "text": "Describe it."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A blue bar."}]}]}
GROUNDING = {"image": "big.png", "conversations": [
    {"from": "human", "value": "<image>\nLocate the house, output its bbox coordinates using JSON format."},
    {"from": "gpt", "value": '```json\n[\n  {"bbox_2d": [300, 200, 1500, 1000], "label": "house"}\n]\n```'}]}
# seed 001's data_vl.json: the image path inline in the user text, the prompt "COCO Yes:"
INLINE = {"id": "identity_1", "conversations": [
    {"from": "user", "value": "COCO Yes: <|vision_start|>sub/b.png<|vision_end|>"},
    {"from": "assistant", "value": "A blue bar on white."}]}


def rows(path: Path) -> list:
    return [row for _, row in read_output_rows(path)]


def make_images(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (40, 80), (0, 0, 200)).save(folder / "sub" / "b.png")
    Image.new("RGB", (3000, 2000), (0, 120, 0)).save(folder / "big.png")
    return folder


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.mark.parametrize("row, expected", [
    (SINGLE, ChatRow("conversations", (("user", "<image>\nWhat is in the picture?"), ("assistant", "A red square.")),
                     ("a.png",), ("image[0]",))),
    (MULTI_IMAGE, ChatRow("conversations", (("user", "<image>\n<image>\nWhich one is larger?"),
                                            ("assistant", "The second.")), ("a.png", "sub/b.png"),
                          ("image[0]", "image[1]"))),
    (MULTI_TURN, ChatRow("messages", (("system", "You are terse."), ("user", "<image>Colour?"), ("assistant", "Red."),
                                      ("user", "And <image> this one?"), ("assistant", "Blue.")),
                         ("a.png", "sub/b.png"), ("images[0]", "images[1]"))),
    (TYPED, ChatRow("messages", (("user", "<image>Describe it."), ("assistant", "A blue bar.")), ("sub/b.png",),
                    ("messages[0].content[0].image",))),
    (INLINE, ChatRow("conversations", (("user", "COCO Yes: <image>"), ("assistant", "A blue bar on white.")),
                     ("sub/b.png",), ("conversations[0].value",))),
], ids=["single", "multi-image", "multi-turn", "typed", "inline"])
def test_every_form_reads_as_written_with_one_placeholder_per_image(row, expected):
    assert parse_row(row) == expected
    assert sum(text.count("<image>") for _, text in expected.turns) == len(expected.image_names)


def _bad(row: dict, change) -> dict:
    row = json.loads(json.dumps(row))
    change(row)
    return row


@pytest.mark.parametrize("row, field, reason", [
    (_bad(SINGLE, lambda r: r.update(image=["a.png", "a.png"])), "image", "1 <image> placeholder(s) but 2 image(s)"),
    (_bad(MULTI_TURN, lambda r: r["messages"].pop()), "messages", "ending with the assistant's, got roles "
                                                                  "['system', 'user', 'assistant', 'user']"),
    (_bad(MULTI_TURN, lambda r: r["messages"].insert(3, r["messages"][3])), "messages", "got roles"),
    (_bad(SINGLE, lambda r: r["conversations"][1].update(value="<image>")), "conversations[1]",
     "an <image> in the assistant turn"),
    (_bad(SINGLE, lambda r: r["conversations"][0].update({"from": "robot"})), "conversations[0].from",
     "role must be one of"),
    (_bad(SINGLE, lambda r: r["conversations"][1].update(value="  ")), "conversations[1]", "empty assistant answer"),
    (_bad(TYPED, lambda r: r.update(images=["a.png"])), "images", "images given twice"),
    (_bad(TYPED, lambda r: r["messages"][0]["content"][0].update(resized_height=280)),
     "messages[0].content[0].resized_height", "per-image resize settings ['resized_height']"),
    (_bad(TYPED, lambda r: r["messages"][0]["content"].append({"type": "video", "video": "v.mp4"})),
     "messages[0].content[2]", "content part must be"),
    (_bad(SINGLE, lambda r: r.update(video="v.mp4")), "video", "video rows are not converted"),
    (_bad(INLINE, lambda r: r["conversations"][0].update(value="<|vision_start|><|image_pad|><|vision_end|>Hi")),
     "conversations[0].value", "holds no image path"),
    (_bad(SINGLE, lambda r: r.update(messages=[])), "conversations", "this one ['conversations', 'messages']"),
], ids=["count", "order", "two-users", "assistant-image", "role", "empty-answer", "twice", "resize", "part", "video",
        "inline-pad", "two-lists"])
def test_bad_rows_are_skipped_naming_the_field(row, field, reason):
    with pytest.raises(SkipRecord) as info:
        parse_row(row)
    assert info.value.field == field and reason in info.value.reason


def grounding_record(text: str, size=(3000, 2000)) -> dict:
    return {"id": "g", "key": "conversations", "turns": [("user", "<image>Locate the house."), ("assistant", text)],
            "images": ["/d/big.png"], "sizes": [size]}


def options(family: str, task: str = "grounding", boxes: str | None = "pixels") -> ChatOptions:
    return ChatOptions(task, family, *PIXELS[family], boxes=boxes)


@pytest.mark.parametrize("family, resize_path, answer", [
    ("qwen2_vl", "hf", "<|object_ref_start|>house<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"),
    ("qwen3_vl", "hf", '```json\n[\n\t{"bbox_2d": [100, 100, 500, 500], "label": "house"}\n]\n```'),
    # Qwen2.5-VL: pixels of the image as each trainer resizes 3000x2000 (ms-swift 924x616, LLaMA-Factory 952x644)
    ("qwen2_5_vl", "swift", '```json\n[\n\t{"bbox_2d": [92, 62, 462, 308], "label": "house"}\n]\n```'),
    ("qwen2_5_vl", "llamafactory", '```json\n[\n\t{"bbox_2d": [95, 64, 476, 322], "label": "house"}\n]\n```'),
])
def test_grounding_boxes_in_each_family_convention(family, resize_path, answer):
    sample = to_sample(grounding_record(GROUNDING["conversations"][1]["value"]), options(family), resize_path)
    assert [t.content for t in sample.turns] == ["<image>Locate the house.", answer]
    assert sample.objects == (("house", Box(300, 200, 1500, 1000)),)


def test_every_box_of_an_answer_and_the_text_around_it():
    text = ('Two: ```json\n[{"bbox_2d": [0, 0, 30, 20], "label": "a"}, {"bbox_2d": [10, 10, 40, 40], "label": "b"}]'
            '\n``` done')
    sample = to_sample(grounding_record(text, (100, 50)), options("qwen3_vl"))
    assert sample.turns[1].content == ('Two: ```json\n[\n\t{"bbox_2d": [0, 0, 300, 400], "label": "a"},\n\t'
                                       '{"bbox_2d": [100, 200, 400, 800], "label": "b"}\n]\n``` done')
    assert [label for label, _ in sample.objects] == ["a", "b"]
    # a bare object answer (no fence) and 0-1000 input boxes
    bare = to_sample(grounding_record('{"bbox_2d": [100, 200, 400, 800], "label": "b"}', (100, 50)),
                     options("qwen2_vl", boxes="relative"))
    assert bare.turns[1].content == "<|object_ref_start|>b<|object_ref_end|><|box_start|>(100,200),(400,800)<|box_end|>"
    assert bare.objects == (("b", Box(10, 10, 40, 40)),)


@pytest.mark.parametrize("text, opts, reason", [
    (GROUNDING["conversations"][1]["value"], options("qwen3_vl", task="caption", boxes=None),
     "say how to read them, --boxes pixels"),
    ('{"bbox_2d": [300, 200, 3500, 1000], "label": "house"}', options("qwen3_vl"), "outside the 3000x2000 image"),
    ('{"bbox_2d": [300, 200, 1500], "label": "house"}', options("qwen3_vl"), "4 finite numbers"),
    ('{"point_2d": [300, 200], "bbox_2d": [1, 2, 3, 4], "label": "house"}', options("qwen3_vl"),
     "holds bbox_2d and a non-empty label, nothing else"),
    ('```json\n{"bbox_2d": [1, 2, 3, 4], "label": "a"}\n``` and {"bbox_2d": [5, 6, 7, 8]}', options("qwen3_vl"),
     "bbox_2d outside a ```json block"),
    ("The house.", options("qwen3_vl"), "no bbox_2d box in the last answer"),
])
def test_boxes_that_cannot_be_converted_are_skipped(text, opts, reason):
    with pytest.raises(SkipRecord, match=reason.replace("[", r"\[").replace("(", r"\(")) as info:
        to_sample(grounding_record(text), opts)
    assert info.value.field == "conversations[1]"


def test_a_prompt_naming_the_box_key_is_no_box():
    record = grounding_record('{"bbox_2d": [300, 200, 1500, 1000], "label": "house"}')
    record["turns"][0] = ("user", '<image>Answer as ```json\n[{"bbox_2d": [x1, y1, x2, y2], "label": name}]\n```')
    sample = to_sample(record, options("qwen3_vl"))
    assert sample.turns[0].content == record["turns"][0][1]
    assert sample.turns[1].content == '```json\n[\n\t{"bbox_2d": [100, 100, 500, 500], "label": "house"}\n]\n```'


def test_boxes_in_a_multi_image_row_are_skipped():
    record = grounding_record('{"bbox_2d": [1, 2, 3, 4], "label": "a"}') | {"images": ["/a", "/b"],
                                                                          "sizes": [(9, 9), (9, 9)]}
    record["turns"][0] = ("user", "<image><image>Locate.")
    with pytest.raises(SkipRecord, match="without exactly one image"):
        to_sample(record, options("qwen3_vl"))


def test_microscopy_task_answers_must_be_the_json_move():
    record = grounding_record("move up") | {"sizes": [(9, 9)]}
    with pytest.raises(SkipRecord, match="not JSON"):
        to_sample(record, options("qwen3_vl", task="microscopy", boxes=None))
    record["turns"][1] = ("assistant", '{"analysis": "x", "direction": "+", "distance": 3}')
    assert to_sample(record, options("qwen3_vl", task="microscopy", boxes=None)).turns[1].content.endswith("3}")


def test_held_out_file_of_every_form_converts_unchanged_into_both_trainers_files(tmp_path):
    data = make_images(tmp_path / "data")
    source = write_jsonl(data / "chat.jsonl", [SINGLE, MULTI_IMAGE, MULTI_TURN, TYPED, GROUNDING, INLINE])
    out = tmp_path / "out"
    assert main(["chat", "--input", str(source), "--out", str(out), "--task", "caption", "--boxes", "pixels",
                 "--model", "qwen2_5_vl", "--strict"]) == 0
    a, b, big = (str(data / name) for name in ("a.png", "sub/b.png", "big.png"))

    def row(turns, images):
        return {"messages": [{"role": role, "content": text} for role, text in turns], "images": images}
    common = [row(SINGLE_TURNS, [a]), row(MULTI_IMAGE_TURNS, [a, b]), row(MULTI_TURN_TURNS, [a, b]),
              row([("user", "<image>Describe it."), ("assistant", "A blue bar.")], [b])]
    inline = row([("user", "COCO Yes: <image>"), ("assistant", "A blue bar on white.")], [b])
    prompt = ("user", "<image>\nLocate the house, output its bbox coordinates using JSON format.")
    grounding = {trainer: row([prompt, ("assistant", f'```json\n[\n\t{{"bbox_2d": {box}, "label": "house"}}\n]\n```')],
                              [big])
                 for trainer, box in (("llamafactory", [95, 64, 476, 322]), ("swift", [92, 62, 462, 308]))}
    assert rows(out / "chat_train.json") == [*common, grounding["llamafactory"], inline]
    assert rows(out / "chat_train.jsonl") == [*common, grounding["swift"], inline]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["chat_train"]["columns"] == {"messages": "messages", "images": "images"}
    entry = json.loads((out / "manifest.json").read_text())["datasets"]["chat_train"]
    assert (entry["task"], entry["converter"], entry["count"], entry["options"]["boxes"]) == (
        "caption", "chat", 6, "pixels")
    assert main(["check", str(out)]) == 0


SINGLE_TURNS = [("user", "<image>\nWhat is in the picture?"), ("assistant", "A red square.")]
MULTI_IMAGE_TURNS = [("user", "<image>\n<image>\nWhich one is larger?"), ("assistant", "The second.")]
MULTI_TURN_TURNS = [("system", "You are terse."), ("user", "<image>Colour?"), ("assistant", "Red."),
                    ("user", "And <image> this one?"), ("assistant", "Blue.")]


def test_seed_data_vl_json_converts_with_its_paths_relative_to_its_folder(tmp_path):
    data = make_images(tmp_path / "seed")
    rows_ = [INLINE, _bad(INLINE, lambda r: r["conversations"][0].update(
        value="COCO Yes: <|vision_start|>missing.png<|vision_end|>"))]
    (data / "data_vl.json").write_text(json.dumps(rows_), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["chat", "--input", str(data / "data_vl.json"), "--out", str(out), "--task", "caption",
                 "--model", "qwen2_vl"]) == 0
    assert rows(out / "chat_train.json") == [
        {"messages": [{"role": "user", "content": "COCO Yes: <image>"},
                      {"role": "assistant", "content": "A blue bar on white."}], "images": [str(data / "sub/b.png")]}]
    (skip,) = json.loads((out / "manifest.json").read_text())["datasets"]["chat_train"]["skipped"]
    assert skip == {"id": "row1", "reason": f"missing image {data / 'missing.png'}", "source": "data_vl.json[1]",
                    "field": "conversations[0].value"}


def test_grounding_task_needs_to_be_told_how_to_read_boxes(tmp_path, capsys):
    source = write_jsonl(make_images(tmp_path) / "g.jsonl", [GROUNDING])
    assert main(["chat", "--input", str(source), "--out", str(tmp_path / "out"), "--task", "grounding"]) == 2
    assert capsys.readouterr().err == ("error: --task grounding: say how the bbox_2d values are to be read, "
                                       "--boxes pixels or --boxes relative\n")
    assert not (tmp_path / "out").exists()


def test_images_outside_the_data_root_and_urls_are_skipped(tmp_path):
    data = make_images(tmp_path / "data")
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
    source = write_jsonl(data / "chat.jsonl", [SINGLE, _bad(SINGLE, lambda r: r.update(image="../elsewhere.png")),
                                               _bad(SINGLE, lambda r: r.update(image="https://x.org/a.png"))])
    out = tmp_path / "out"
    assert main(["chat", "--input", str(source), "--out", str(out), "--task", "caption"]) == 0
    skipped = json.loads((out / "manifest.json").read_text())["datasets"]["chat_train"]["skipped"]
    assert [(s["id"], s["field"]) for s in skipped] == [("row2", "image[0]"), ("row3", "image[0]")]
    assert "outside the data root" in skipped[0]["reason"] and "is not a local file" in skipped[1]["reason"]


def test_a_wrong_images_folder_stops_naming_the_one_to_pass(tmp_path, capsys):
    data = make_images(tmp_path / "set")
    (data / "list").mkdir()
    source = write_jsonl(data / "list" / "chat.jsonl", [SINGLE, TYPED])  # paths relative to set/, file in set/list/
    assert main(["chat", "--input", str(source), "--out", str(tmp_path / "out"), "--task", "caption"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source}: none of the first 2 image(s) it names is in {data / 'list'}")
    assert err.rstrip().endswith(f"pass --images {data}, from which the names resolve")


class ReferenceAnswers:
    """Stands in for the model in `eval run`: answers each sample with its own reference."""

    def __init__(self, model, adapter, *, convention, device=None, dtype=None):
        self.family, self.adapter = "qwen2_5_vl", None

    def generate(self, batch, max_new_tokens, score_words=None):
        from eval.infer import Generation

        return [Generation(s.reference[0] if isinstance(s.reference, list) else s.reference) for s in batch]


@pytest.mark.parametrize("task, extra, data_file, metric", [
    ("caption", [], "chat_train.json", "exact_match"),
    ("grounding", ["--boxes", "pixels"], "chat_train.json", "acc@0.5"),
    ("grounding", ["--boxes", "pixels"], "chat_train.jsonl", "acc@0.5"),
])
def test_eval_run_scores_chat_data_as_the_task_it_was_converted_for(task, extra, data_file, metric, tmp_path,
                                                                    monkeypatch):
    import eval.infer
    from eval.run import run_eval

    data = make_images(tmp_path / "data")
    second = _bad(GROUNDING, lambda r: r["conversations"][1].update(
        value='{"bbox_2d": [2000, 1500, 2900, 1990], "label": "tree"}'))
    items = [SINGLE, MULTI_TURN, TYPED, INLINE] if task == "caption" else [GROUNDING, second]
    source = write_jsonl(data / "chat.jsonl", items)
    out = tmp_path / "out"
    assert main(["chat", "--input", str(source), "--out", str(out), "--task", task, "--model", "qwen2_5_vl",
                 *extra, "--strict"]) == 0
    monkeypatch.setattr(eval.infer, "TransformersGenerator", ReferenceAnswers)
    metrics = run_eval(task, "Qwen/Qwen2.5-VL-7B-Instruct", out / data_file, tmp_path / "eval", split="train",
                       java_metrics=False)
    assert (metrics["task"], metrics["n"], metrics[metric]) == (task, len(items), 1.0)
    other = "grounding" if task == "caption" else "caption"
    with pytest.raises(ValueError, match=f"holds '{task}' data \\(converter 'chat'\\), not '{other}' data"):
        run_eval(other, "Qwen/Qwen2.5-VL-7B-Instruct", out / data_file, tmp_path / "other", split="train")
