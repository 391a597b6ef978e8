"""Learning, through each trainer's own CLI: the caption recipe on a tiny random Qwen2-VL, with the override set
of tools.learning, must caption held-out synthetic images (exact match and every attribute above the targets,
well above the constant-caption baseline, above the untrained model). The same runs make the demo's figures.

Timeouts are generous (this 2-core machine's speed varies 2-3x); the thresholds are the targets, never loosened.
"""
import pytest

from tools.learning import TASKS, missed_targets, run_learning
from tools.trainers import TRAINERS

TRAINING_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def caption_work(tmp_path_factory):
    return tmp_path_factory.mktemp("learning_caption")  # one converted dataset serves both trainers


@pytest.mark.parametrize("trainer", TRAINERS)
def test_caption_recipe_learns_to_caption_held_out_images(trainer, caption_work):
    result = run_learning("caption", trainer, caption_work, timeout=TRAINING_TIMEOUT_S)
    assert missed_targets(TASKS["caption"], result) == []
    assert result["base"]["exact_match"] == 0.0  # random weights: nothing right before training
    assert result["baseline"]["exact_match"] < 0.2  # a caption that ignores the image rarely matches
    losses = [loss for _, loss in result["loss_history"]]
    assert losses[-1] < 0.1 * losses[0]
