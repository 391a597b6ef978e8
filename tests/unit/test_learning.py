"""The pure parts of tools.learning: baselines, target checks and the overrides a CPU run adds."""
import yaml

from tools.learning import TASKS, best_fixed_box, missed_targets
from tools.trainers import REPO_ROOT, TRAINERS, gpu_only_overrides


def test_best_fixed_box_is_the_one_right_most_often():
    left, right = (0.0, 0.0, 0.4, 0.4), (0.6, 0.6, 1.0, 1.0)
    boxes = [left, right, (0.62, 0.6, 1.0, 1.0), (0.6, 0.62, 1.0, 0.98)]
    assert best_fixed_box(boxes) in boxes[1:]


def test_missed_targets_names_every_miss():
    task = TASKS["caption"]
    good = {"exact_match": 0.8, "colour_acc": 1.0, "shape_acc": 0.9, "background_acc": 0.9}
    result = {"tuned": good, "base": {k: 0.0 for k in good}, "baseline": {"exact_match": 0.05}}
    assert missed_targets(task, result) == []
    weak = {**good, "shape_acc": 0.5}
    assert missed_targets(task, {**result, "tuned": weak}) == ["shape_acc 0.500 < 0.6"]
    strong_baseline = {**result, "baseline": {"exact_match": 0.6}}
    assert missed_targets(task, strong_baseline) == ["exact_match 0.800 < 1.5 x baseline 0.600"]
    no_gain = {**result, "base": good}
    assert len(missed_targets(task, no_gain)) == len(task.targets)


def test_forgery_tasks_select_the_best_val_checkpoint_and_score_the_test_split():
    for name in ("forgery_t1", "forgery_t3"):
        task = TASKS[name]
        assert task.select_key == {"llamafactory": "qwenvl_recipes.forgery.eval_file"}
        assert task.select_env == {"swift": "QVR_FORGERY_EVAL_FILE"} and task.selected_dir == "best_by_AUROC"
        assert task.targets == {"auroc": 0.9}
        assert task.overrides["llamafactory"]["qwenvl_recipes.forgery.head_blocks"] == "[0, 1]"
        assert task.env["swift"]["QVR_FORGERY_HEAD_BLOCKS"] == "[0, 1]"
    assert TASKS["forgery_t3"].env["swift"]["QVR_FORGERY_FUSION_TOKENS"] == "2"
    assert "QVR_FORGERY_FUSION_TOKENS" not in TASKS["forgery_t1"].env["swift"]
    assert "qwenvl_recipes.forgery.fusion_tokens" not in TASKS["forgery_t1"].overrides["llamafactory"]


def test_learning_runs_switch_off_the_gpu_only_kernels_their_recipes_switch_on():
    """Forgery T3 sets Liger (Triton, GPU only): its CPU learning run trains without it; T1 and the caption recipe
    set nothing to switch off."""
    def overrides(name: str, trainer: str) -> dict:
        return gpu_only_overrides(yaml.safe_load((REPO_ROOT / TASKS[name].recipes[trainer]).read_text()))

    for trainer in TRAINERS:
        assert overrides("forgery_t3", trainer) == {"use_liger_kernel": False}
        assert overrides("forgery_t1", trainer) == overrides("caption", trainer) == {}
