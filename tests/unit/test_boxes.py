import random

import pytest

from converters.boxes import (MODEL_FAMILIES, default_pixels, parse_boxes, render_box, render_grounding,
                              to_model_coords)
from converters.geometry import FACTORS, RESIZE_PATHS
from converters.schema import Box

BOX = Box(10.2, 20.0, 300.0, 400.7)


def pixels(family):
    low, high = default_pixels(family)
    return dict(min_pixels=low, max_pixels=high)


def test_render_qwen2_vl_special_tokens_relative_1000():
    text = render_grounding("the cat", BOX, (640, 480), "qwen2_vl", **pixels("qwen2_vl"))
    assert text == "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(16,42),(469,835)<|box_end|>"


def test_render_qwen2_5_vl_absolute_pixels_of_resized_image():
    # 640x480 -> smart_resize -> 644x476: x scales by 644/640, y by 476/480
    text = render_grounding('a "red" cat', BOX, (640, 480), "qwen2_5_vl", **pixels("qwen2_5_vl"))
    assert text == '```json\n[\n\t{"bbox_2d": [10, 20, 302, 397], "label": "a \\"red\\" cat"}\n]\n```'


def test_render_qwen3_vl_json_relative_1000():
    text = render_grounding("猫", BOX, (640, 480), "qwen3_vl", **pixels("qwen3_vl"))
    assert text == '```json\n[\n\t{"bbox_2d": [16, 42, 469, 835], "label": "猫"}\n]\n```'


def test_qwen2_5_vl_render_follows_the_trainer_resize_path():
    big = (3000, 2000)
    box = Box(1500, 1000, 3000, 2000)
    lf = to_model_coords(box, big, "qwen2_5_vl", resize_path="llamafactory", **pixels("qwen2_5_vl"))
    sw = to_model_coords(box, big, "qwen2_5_vl", resize_path="swift", **pixels("qwen2_5_vl"))
    assert lf == [476, 322, 952, 644] and sw == [462, 308, 924, 616]


def test_render_box_for_prompts():
    assert render_box(BOX, (640, 480), "qwen2_vl", **pixels("qwen2_vl")) == "<|box_start|>(16,42),(469,835)<|box_end|>"
    assert render_box(BOX, (640, 480), "qwen3_vl", **pixels("qwen3_vl")) == "[16, 42, 469, 835]"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
@pytest.mark.parametrize("resize_path", RESIZE_PATHS)
def test_round_trip_within_one_pixel(family, resize_path):
    rng = random.Random(f"{family}{resize_path}")
    for _ in range(300):
        width, height = rng.randint(40, 1000), rng.randint(40, 1000)
        x1, y1 = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        box = Box(x1, y1, rng.uniform(x1 + 1, width), rng.uniform(y1 + 1, height))
        text = render_grounding("thing", box, (width, height), family, resize_path=resize_path, **pixels(family))
        (parsed,) = parse_boxes(text, family, (width, height), resize_path=resize_path, **pixels(family))
        for got, want in zip(parsed.as_list(), box.as_list()):
            assert abs(got - want) <= 1.0, (family, width, height, box, text, parsed)


def test_parse_tolerates_fences_lists_and_prose():
    text = ('Sure! ```json\n[{"bbox_2d": [0, 0, 500, 500], "label": "a"},\n {"bbox_2d":[500,500,1000,1000],'
            '"label":"b"}]\n```')
    assert parse_boxes(text, "qwen3_vl", (200, 100), **pixels("qwen3_vl")) == [Box(0, 0, 100, 50),
                                                                               Box(100, 50, 200, 100)]
    single = "{'bbox_2d': [10, 20, 30, 40]}"  # python-style quotes, no fence
    assert parse_boxes(single, "qwen3_vl", (1000, 1000), **pixels("qwen3_vl")) == [Box(10, 20, 30, 40)]


def test_parse_qwen2_vl_special_tokens_and_bare_pairs():
    text = ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(0,0),(500,1000)<|box_end|> and "
            "<|box_start|>( 500 , 0 ),( 1000 , 500 )<|box_end|>")
    assert parse_boxes(text, "qwen2_vl", (300, 200), **pixels("qwen2_vl")) == [Box(0, 0, 150, 200),
                                                                              Box(150, 0, 300, 100)]
    assert parse_boxes("(100,100),(200,200)", "qwen2_vl", (1000, 1000), **pixels("qwen2_vl")) == [
        Box(100, 100, 200, 200)]
    assert parse_boxes("box: [1, 2, 3, 4]", "qwen3_vl", (1000, 1000), **pixels("qwen3_vl")) == [Box(1, 2, 3, 4)]


def test_parse_returns_empty_when_nothing_parses():
    for text in ["", "no box here", '{"bbox_2d": [1, 2, 3]}', "(1,2)"]:
        assert parse_boxes(text, "qwen2_5_vl", (640, 480), **pixels("qwen2_5_vl")) == []


def test_default_pixels_are_whole_tokens_and_documented_values():
    assert {f: default_pixels(f) for f in MODEL_FAMILIES} == {
        "qwen2_vl": (3136, 602112), "qwen2_5_vl": (3136, 602112), "qwen3_vl": (4096, 786432)}
    for family in MODEL_FAMILIES:
        low, high = default_pixels(family)
        assert low % FACTORS[family] ** 2 == 0 and high % FACTORS[family] ** 2 == 0


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown model family"):
        default_pixels("qwen9")
