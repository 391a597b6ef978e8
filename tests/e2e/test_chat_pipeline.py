"""A chat-format file (multi-image, multi-turn, grounding and seed 001's inline rows) -> the chat converter -> one
training step through each trainer's own command, every row of the file reaching the trainer."""
import json
import math
import re
import subprocess
import sys

import pytest
from PIL import Image

from tools.learning import TASKS, location_overrides
from tools.offline import offline_env
from tools.trainers import REPO_ROOT, loss_history, run_logged, train_command, trainer_env

ROWS = [
    {"image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nWhich one is red?"}, {"from": "gpt", "value": "The first."},
        {"from": "human", "value": "And the other?"}, {"from": "gpt", "value": "Blue."}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "image", "image": "b.png"},
                                               {"type": "text", "text": "Colour?"}]},
                  {"role": "assistant", "content": "Blue."}]},
    {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nLocate the square, output its bbox coordinates using JSON format."},
        {"from": "gpt", "value": '```json\n[\n  {"bbox_2d": [8, 8, 40, 40], "label": "square"}\n]\n```'}]},
    {"id": "identity_1", "conversations": [{"from": "user", "value": "COCO Yes: <|vision_start|>b.png<|vision_end|>"},
                                           {"from": "assistant", "value": "A blue picture."}]},
]


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    work = tmp_path_factory.mktemp("chat")
    Image.new("RGB", (56, 56), (200, 0, 0)).save(work / "a.png")
    Image.new("RGB", (84, 56), (0, 0, 200)).save(work / "b.png")
    (work / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    out = work / "converted"
    subprocess.run([sys.executable, "-m", "converters", "chat", "--input", str(work / "chat.jsonl"), "--out", str(out),
                    "--task", "caption", "--boxes", "pixels", "--model", "qwen2_vl", "--strict"],
                   check=True, cwd=REPO_ROOT, env=offline_env())
    return out


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_chat_file_trains_one_step_in_each_trainer(trainer, chat_data, tiny_model_dir, tmp_path):
    output_dir = tmp_path / "out"
    recipe = REPO_ROOT / TASKS["caption"].recipes[trainer]
    overrides = location_overrides(trainer, tiny_model_dir("qwen2_vl"), chat_data, "chat", output_dir, 1)
    log = tmp_path / "train.log"
    run_logged(train_command(trainer, recipe, overrides), log, env=trainer_env(trainer), timeout=900)
    (step, loss), = loss_history(trainer, output_dir)
    assert step == 1 and math.isfinite(loss)
    # every row reached the trainer, and the step's 2 x 2 samples encoded: neither trainer dropped one it could not read
    text = log.read_text(encoding="utf-8")
    if trainer == "llamafactory":
        assert re.findall(r"Num examples = (\d+)", text) == [str(len(ROWS))]
    else:
        assert re.findall(r"train_dataset: Dataset\(\{\n.*\n    num_rows: (\d+)", text) == [str(len(ROWS))]
        assert "There are errors" not in text
