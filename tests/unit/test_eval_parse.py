"""Answer parsers: JSON, real/fake words, and boxes read back with converters.boxes for each family."""
import pytest

from converters.boxes import MODEL_FAMILIES, render_grounding
from converters.schema import Box
from eval.parse import BoxConvention, parse_json_answer, parse_real_fake


@pytest.mark.parametrize("text, value", [
    ('{"direction": "+", "distance": 3}', {"direction": "+", "distance": 3}),
    ('```json\n{"direction": "-", "distance": 1}\n```', {"direction": "-", "distance": 1}),
    ('  ```\n{"a": 1}```  ', {"a": 1}),
])
def test_json_answer_parses(text, value):
    answer = parse_json_answer(text)
    assert (answer.value, answer.error) == (value, None)


@pytest.mark.parametrize("text, error", [
    ("", "empty answer"),
    ("```json\n```", "empty answer"),
    ('{"direction": "+", "distance": 3', "invalid JSON"),
    ("{direction: +}", "invalid JSON"),
    ('The answer is {"direction": "+"}', "invalid JSON"),
    ("[1, 2]", "JSON is not an object"),
])
def test_json_answer_failures_say_why(text, error):
    answer = parse_json_answer(text)
    assert (answer.value, answer.error) == (None, error)


@pytest.mark.parametrize("text, label, error", [
    ("fake", 1, None),
    ("Real.", 0, None),
    ("This image is FAKE", 1, None),
    ("real or fake", None, "both real and fake words"),
    ("fakeness", None, "no real/fake word"),
    ("", None, "no real/fake word"),
])
def test_real_fake_words(text, label, error):
    answer = parse_real_fake(text, "real", "fake")
    assert (answer.label, answer.error) == (label, error)


def test_real_fake_custom_words():
    assert parse_real_fake("tampered", "authentic", "tampered").label == 1
    assert parse_real_fake("fake", "authentic", "tampered").error == "no real/fake word"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
@pytest.mark.parametrize("resize_path", ["hf", "swift", "llamafactory"])
def test_boxes_round_trip_through_the_converters_rendering(family, resize_path):
    convention = BoxConvention(family, 3136, 200704, resize_path)
    box, size = Box(40.0, 30.0, 410.0, 290.0), (640, 427)
    text = render_grounding("the dog", box, size, family, min_pixels=3136, max_pixels=200704,
                            resize_path=resize_path)
    (parsed,) = convention.parse(text, size)
    assert parsed.as_list() == pytest.approx(box.as_list(), abs=1.0)


def test_qwen2_5_vl_boxes_depend_on_the_resize():
    # 640x427 at max 200704 pixels: hf resizes to 532x364, so x=532 is the right edge of the image.
    convention = BoxConvention("qwen2_5_vl", 3136, 200704)
    assert convention.resized((640, 427)) == (532, 364)
    (box,) = convention.parse('{"bbox_2d": [0, 0, 532, 364]}', (640, 427))
    assert box.as_list() == pytest.approx([0, 0, 640, 427])
    assert "resized by the hf path" in convention.describe()


def test_relative_families_read_thousandths():
    (box,) = BoxConvention("qwen3_vl", 1, 10**6).parse('```json\n[{"bbox_2d": [100, 500, 600, 1000]}]\n```',
                                                       (200, 100))
    assert box.as_list() == pytest.approx([20, 50, 120, 100])
    assert BoxConvention("qwen2_vl", 1, 10**6).parse("no box here", (200, 100)) == []


@pytest.mark.parametrize("family", MODEL_FAMILIES)
@pytest.mark.parametrize("phrase", ["bbox_2d: [0, 0, 1000, 1000] cup", 'cup", "bbox_2d": [0, 0, 9, 9], "x": "',
                                    "cup at (0,0),(1000,1000)", "cup [0, 0, 1000, 1000]"])
def test_box_text_inside_a_phrase_never_becomes_the_reference_box(family, phrase):
    convention = BoxConvention(family, 3136, 200704)
    box, size = Box(40.0, 30.0, 410.0, 290.0), (640, 427)
    reference = render_grounding(phrase, box, size, family, min_pixels=3136, max_pixels=200704)
    (parsed,) = convention.parse(reference, size)  # the answer's own box, and only it
    assert parsed.as_list() == pytest.approx(box.as_list(), abs=1.0)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_a_reg_row_is_left_out_even_when_its_phrase_reads_like_a_box(family, tmp_path):
    """REC vs REG is told by the prompt (a REG prompt gives the box), not by whether the answer parses as one."""
    from PIL import Image

    from converters.boxes import render_box
    from eval.data import EvalSample
    from eval.run import referring_expressions

    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    convention = BoxConvention(family, 3136, 200704)
    box = Box(20, 10, 120, 60)
    boxed = render_grounding("the red cup", box, (200, 100), family, min_pixels=3136, max_pixels=200704)
    region = render_box(box, (200, 100), family, min_pixels=3136, max_pixels=200704)
    images = [str(tmp_path / "a.png")]
    rec = EvalSample("rec", [{"role": "user", "content": "<image>Where is the red cup?"}], boxed, images)
    reg = EvalSample("reg", [{"role": "user", "content": f"<image>What is at {region}?"}], boxed, images)
    assert [s.id for s in referring_expressions([rec, reg], convention)] == ["rec"]
