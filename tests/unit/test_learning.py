"""The pure parts of tools.learning: baselines and target checks."""
from tools.learning import TASKS, best_fixed_box, missed_targets


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


def test_plain_recipes_run_through_the_trainer_cli_forgery_recipes_through_our_entry():
    from tools.learning import recipe_command
    from tools.trainers import REPO_ROOT, venv_bin

    caption = recipe_command("swift", REPO_ROOT / TASKS["caption"].recipes["swift"], {"max_steps": 5})
    assert caption[:2] == [str(venv_bin("swift") / "swift"), "sft"] and caption[-2:] == ["--max_steps", "5"]
    recipe = REPO_ROOT / TASKS["forgery_t3"].recipes["llamafactory"]
    forgery = recipe_command("llamafactory", recipe, {"qwenvl_recipes.forgery.head_dim": 32})
    assert forgery == [str(venv_bin("llamafactory") / "python"), "-m", "custom_modules.integrations.llamafactory_entry",
                       str(recipe), "qwenvl_recipes.forgery.head_dim=32"]
    recipe = REPO_ROOT / TASKS["forgery_t1"].recipes["swift"]
    assert recipe_command("swift", recipe, {"max_steps": 5}) == [
        str(venv_bin("swift") / "python"), "-m", "custom_modules.integrations.swift_plugin", "sft", str(recipe),
        "--max_steps", "5"]


def test_forgery_tasks_select_the_best_val_checkpoint_and_score_the_test_split():
    for name in ("forgery_t1", "forgery_t3"):
        task = TASKS[name]
        assert task.select_key == "qwenvl_recipes.forgery.eval_file" and task.selected_dir == "best_by_AUROC"
        assert task.targets == {"auroc": 0.9}
        for trainer in ("llamafactory", "swift"):
            assert task.overrides[trainer]["qwenvl_recipes.forgery.head_blocks"] == "[0, 1]"
    assert "qwenvl_recipes.forgery.fusion_tokens" in TASKS["forgery_t3"].overrides["swift"]
    assert "qwenvl_recipes.forgery.fusion_tokens" not in TASKS["forgery_t1"].overrides["swift"]
