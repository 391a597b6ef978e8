"""`eval run` feeds a custom vision encoder the image each trainer handed its image processor in training:
checked against LLaMA-Factory's qwen3_vl plugin and ms-swift's qwen3_vl template themselves (pixel values equal)."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom_modules.vision_encoder.processing import encoder_image_processor
from custom_modules.vision_encoder.settings import parse_settings
from eval.infer import load_for_encoder
from eval.parse import BoxConvention
from tools.tiny_dinov2 import ensure_tiny_dinov2

REPO_ROOT = Path(__file__).resolve().parents[2]
# (width, height): a size no trainer changes, one each trainer rounds or scales, one under the minimum
SIZES = [(56, 56), (90, 70), (300, 130), (20, 40)]
PIXELS = (4 * 32 * 32, 36 * 32 * 32)  # min, max: the 300 x 130 image is over the maximum


@pytest.fixture(scope="module")
def encoder():
    return ensure_tiny_dinov2(REPO_ROOT / ".cache" / "tiny-dinov2")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder_images")
    paths = []
    for seed, (width, height) in enumerate(SIZES):
        path = folder / f"{width}x{height}.png"
        Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")).save(path)
        paths.append(str(path))
    return paths


def eval_pixels(paths, resize_path, image_processor) -> np.ndarray:
    convention = BoxConvention("qwen3_vl", *PIXELS, resize_path)
    fed = [load_for_encoder(p, convention, image_processor) for p in paths]
    return image_processor(fed)["pixel_values"]


def test_llamafactory_feed_is_its_plugins(encoder, images):
    from types import SimpleNamespace

    from llamafactory.data.mm_plugin import get_mm_plugin

    image_processor = encoder_image_processor(parse_settings({"encoder": "dinov2", "encoder_path": str(encoder)}), 2)
    plugin = get_mm_plugin(name="qwen3_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    processor = SimpleNamespace(image_processor=image_processor, image_min_pixels=PIXELS[0], image_max_pixels=PIXELS[1])
    trained = plugin._get_mm_inputs(images, [], [], processor)["pixel_values"].numpy()
    assert np.array_equal(eval_pixels(images, "llamafactory", image_processor), trained)
    # the pre-scale matters: the stored images straight into the encoder's processor are other pixels
    assert not np.array_equal(image_processor([Image.open(p).convert("RGB") for p in images])["pixel_values"], trained)


SWIFT_PIXELS = """
import json, os, sys
from swift.model import get_processor
from swift.template import get_template
os.environ.update(MIN_PIXELS=sys.argv[3], MAX_PIXELS=sys.argv[4], QVR_VISION_ENCODER_ENCODER="dinov2",
                  QVR_VISION_ENCODER_ENCODER_PATH=sys.argv[2])  # what a recipe's ENV block carries
import custom_modules.integrations.swift_plugin
from custom_modules.integrations.swift_vision_encoder import MODEL_TYPE
template = get_template(get_processor(sys.argv[1], model_type=MODEL_TYPE, check_model=False))
pixels = [template.encode({"messages": [{"role": "user", "content": "<image>Findings?"},
                                        {"role": "assistant", "content": "Clear."}], "images": [path]})["pixel_values"]
          for path in json.loads(sys.argv[5])]
print(json.dumps([p.tolist() for p in pixels]))
"""


def test_swift_feed_is_its_templates(encoder, images, tiny_model_dir, swift_bin):
    result = subprocess.run([str(swift_bin / "python"), "-c", SWIFT_PIXELS, str(tiny_model_dir("qwen3_vl")),
                             str(encoder), *map(str, PIXELS), json.dumps(images)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = np.concatenate(np.asarray(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32))
    image_processor = encoder_image_processor(parse_settings({"encoder": "dinov2", "encoder_path": str(encoder)}), 2)
    assert np.array_equal(eval_pixels(images, "swift", image_processor), trained)
    assert not np.array_equal(eval_pixels(images, "llamafactory", image_processor), trained)
