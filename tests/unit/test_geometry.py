import json
import subprocess

import pytest
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

from converters.geometry import (clip_box, llamafactory_prescale, resized_size, smart_resize,
                                 smart_resize_qwen_vl_utils, xywh_to_xyxy)
from converters.schema import Box

SIZES = [(640, 480), (1000, 750), (3000, 2000), (50, 30), (1001, 333), (4032, 3024), (97, 1201), (224, 224),
         (1920, 1080), (123, 77)]


@pytest.mark.parametrize("factor,low,high", [(28, 3136, 602112), (32, 4096, 786432), (28, 3136, 12845056)])
def test_smart_resize_equals_transformers(factor, low, high):
    for width in range(30, 4000, 137):
        for height in (31, 300, 767, 2049):
            assert smart_resize(height, width, factor, low, high) == hf_smart_resize(height, width, factor, low, high)


def test_qwen_vl_utils_flavour_differs_only_at_the_edges():
    # a 10 px side rounds to 0 in transformers' version, to one factor in qwen-vl-utils'
    assert smart_resize(10, 600, 28, 0, 10**8) == (0, 588)
    assert smart_resize_qwen_vl_utils(10, 600, 28, 0, 10**8) == (28, 588)
    assert smart_resize_qwen_vl_utils(480, 640, 28, 3136, 602112) == smart_resize(480, 640, 28, 3136, 602112)


def test_llamafactory_prescale_truncates_like_its_plugin():
    assert llamafactory_prescale(3000, 2000, 602112, 3136) == (950, 633)
    assert llamafactory_prescale(20, 500, 602112, 16) == (28, 500)  # Qwen2VLPlugin's 28 px minimum side


def test_resize_paths_diverge_above_max_pixels():
    sizes = {p: resized_size(3000, 2000, "qwen2_5_vl", p, min_pixels=3136, max_pixels=602112)
             for p in ("hf", "swift", "llamafactory")}
    assert sizes == {"hf": (924, 616), "swift": (924, 616), "llamafactory": (952, 644)}


def test_llamafactory_path_matches_its_plugin_and_processor():
    from types import SimpleNamespace

    from llamafactory.data.mm_plugin import get_mm_plugin
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")
    processor = SimpleNamespace(image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
                                image_max_pixels=602112, image_min_pixels=3136)
    for width, height in SIZES:
        grid = plugin._get_mm_inputs([Image.new("RGB", (width, height))], [], [], processor)["image_grid_thw"][0]
        seen = (int(grid[2]) * 14, int(grid[1]) * 14)
        assert seen == resized_size(width, height, "qwen2_5_vl", "llamafactory", min_pixels=3136,
                                    max_pixels=602112), (width, height)


SWIFT_SCRIPT = """
import json, os, sys
os.environ["MAX_PIXELS"], os.environ["MIN_PIXELS"] = sys.argv[1], sys.argv[2]
from swift.model.models.qwen import compat_qwen_vl_utils, patch_qwen_vl_utils
compat_qwen_vl_utils(image_patch_size=14)
from qwen_vl_utils import vision_process
patch_qwen_vl_utils(vision_process)
from PIL import Image
print(json.dumps([vision_process.fetch_image({"image": Image.new("RGB", tuple(s))}).size for s in json.loads(sys.argv[3])]))
"""


def test_swift_path_matches_swift_and_qwen_vl_utils(swift_bin):
    """ms-swift 4.6 turns MAX_PIXELS into a token count and resizes with qwen-vl-utils' fetch_image."""
    max_pixels = 602112 + 500  # not a multiple of 28*28: swift floors it to whole tokens
    result = subprocess.run([str(swift_bin / "python"), "-c", SWIFT_SCRIPT, str(max_pixels), "3136",
                             json.dumps(SIZES)], capture_output=True, text=True, check=True)
    seen = [tuple(s) for s in json.loads(result.stdout.strip().splitlines()[-1])]
    assert seen == [resized_size(w, h, "qwen2_5_vl", "swift", min_pixels=3136, max_pixels=max_pixels)
                    for w, h in SIZES]


def test_xywh_to_xyxy():
    assert xywh_to_xyxy(10, 20.5, 30, 40) == Box(10.0, 20.5, 40.0, 60.5)


def test_clip_box_within_tolerance_and_beyond():
    assert clip_box(Box(-1.5, 0, 101, 50), 100, 50, tolerance=2) == Box(0, 0, 100, 50)
    assert clip_box(Box(-3, 0, 50, 50), 100, 50, tolerance=2) is None
    assert clip_box(Box(10, 10, 5, 20), 100, 50) is None  # inverted
    assert clip_box(Box(100.5, 10, 101, 20), 100, 50) is None  # no area left after clipping
