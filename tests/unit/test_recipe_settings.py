"""Our features' settings as each trainer's recipe carries them: the keys errors name, the ENV variables of an
ms-swift recipe, and the paths that follow the run (dataset_dir / output_dir)."""
import re
import runpy
from pathlib import Path

import pytest

from custom_modules.forgery.settings import parse_settings as forgery_settings
from custom_modules.forgery.settings import resolve_paths as forgery_paths
from custom_modules.integrations.env_settings import read_settings, recipe_features
from custom_modules.recipe_keys import setting_key
from custom_modules.vision_encoder.settings import parse_settings as encoder_settings
from custom_modules.vision_encoder.settings import resolve_paths as encoder_paths

PLUGIN = Path(__file__).resolve().parents[2] / "custom_modules" / "integrations" / "swift_plugin.py"


def test_setting_key_spells_the_key_as_each_recipe_does():
    assert setting_key("qwenvl_recipes.forgery", "eval_file") == "qwenvl_recipes.forgery.eval_file"
    assert setting_key("QVR_VISION_ENCODER", "merger_path") == "QVR_VISION_ENCODER_MERGER_PATH"


def test_env_settings_are_read_as_yaml_per_feature():
    environment = {"QVR_FORGERY_MODE": "T3", "QVR_FORGERY_HEAD_BLOCKS": "[7, 15]", "QVR_SPEEDUPS_COMPILE_VISION": "true",
                   "QVR_VISION_ENCODER_ENCODER_PATH": "microsoft/rad-dino", "QVR_LLAMAFACTORY_VENV": "/elsewhere",
                   "PATH": "/bin"}
    assert read_settings(environment, "r.yaml") == {
        "forgery": {"mode": "T3", "head_blocks": [7, 15]}, "speedups": {"compile_vision": True},
        "vision_encoder": {"encoder_path": "microsoft/rad-dino"}}
    # the shell's value wins over the recipe's (swift exports ENV only where the shell has not set it)
    assert read_settings({"QVR_FORGERY_MASK_SIZE": "32"}, "r.yaml", {"QVR_FORGERY_MASK_SIZE": 64}) == {
        "forgery": {"mask_size": 32}}


def test_env_settings_typos_name_the_variable_and_the_recipe():
    with pytest.raises(ValueError, match=r"r\.yaml: ENV QVR_FORGERY_HEAD_BLOCK is not a forgery setting; "
                                         r"known: .*QVR_FORGERY_HEAD_BLOCKS"):
        read_settings({"QVR_FORGERY_HEAD_BLOCK": "[1]"}, "r.yaml")
    # a misspelt feature is caught in the recipe's own ENV block
    with pytest.raises(ValueError, match=r"r\.yaml: ENV QVR_FORGRY_MODE is not one of our settings; "
                                         r"they are QVR_FORGERY_\*"):
        read_settings({}, "r.yaml", {"QVR_FORGRY_MODE": "T1"})


def test_a_malformed_env_value_names_the_variable_and_the_recipe(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"^r\.yaml: ENV QVR_FORGERY_HEAD_BLOCKS='\[7, 15' is not a YAML value "
                                         r"\(expected ',' or '\]', but got '<stream end>'\)$"):
        read_settings({"QVR_FORGERY_HEAD_BLOCKS": "[7, 15"}, "r.yaml")
    # swift imports the plugin while it parses its arguments: the run stops with that one line, no traceback
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ENV:\n  QVR_FORGERY_MODE: T1\n")
    monkeypatch.setenv("SWIFT_CONFIG_FILE", str(recipe))
    monkeypatch.setenv("QVR_FORGERY_MASK_SIZE", "{32")
    with pytest.raises(SystemExit, match=rf"^{re.escape(str(recipe))}: ENV QVR_FORGERY_MASK_SIZE='{{32' is not a "):
        runpy.run_path(str(PLUGIN))


def test_recipe_features_from_callbacks_and_env():
    config = {"callbacks": ["speedups", "early_stop"], "ENV": {"MAX_PIXELS": 1, "QVR_FORGERY_MODE": "T1"}}
    assert recipe_features(config, "r.yaml") == {"forgery": {"mode": "T1"}, "speedups": {}}
    assert recipe_features({"ENV": {"MAX_PIXELS": 1}}, "r.yaml") is None


def test_forgery_paths_follow_dataset_dir_and_output_dir(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs" / "t4"  # out does not exist yet
    data.mkdir()
    (data / "forgery_val.jsonl").write_text("")
    (tmp_path / "runs" / "pretrain" / "best_by_AUROC").mkdir(parents=True)
    where = "qwenvl_recipes.forgery"
    settings = forgery_settings({"mode": "T4", "eval_file": "forgery_val.jsonl",
                                 "head_checkpoint": "../pretrain/best_by_AUROC"}, where)
    placed = forgery_paths(settings, where, data_dir=str(data), output_dir=str(out))
    assert placed.eval_file == str(data / "forgery_val.jsonl")
    assert placed.head_checkpoint == str(tmp_path / "runs" / "pretrain" / "best_by_AUROC")
    with pytest.raises(FileNotFoundError, match=r"qwenvl_recipes\.forgery\.eval_file: .*other/forgery_val\.jsonl "
                                                r"is not a file"):
        forgery_paths(settings, where, data_dir=str(tmp_path / "other"), output_dir=str(out))
    with pytest.raises(FileNotFoundError, match="QVR_FORGERY_HEAD_CHECKPOINT: ../pretrain/best_by_AUROC does not exist"):
        forgery_paths(forgery_settings({"mode": "T4", "head_checkpoint": "../pretrain/best_by_AUROC"}, "QVR_FORGERY"),
                      "QVR_FORGERY")  # ms-swift: relative to the working directory, as swift's own paths


def test_merger_path_follows_output_dir(tmp_path):
    (tmp_path / "stage1" / "vision_encoder").mkdir(parents=True)
    (tmp_path / "stage1" / "vision_encoder" / "merger.safetensors").write_bytes(b"")
    where = "qwenvl_recipes.vision_encoder"
    settings = encoder_settings({"encoder": "dinov2", "encoder_path": "microsoft/rad-dino", "stage": 2,
                                 "merger_path": "../stage1/vision_encoder"}, where)
    placed = encoder_paths(settings, where, output_dir=str(tmp_path / "stage2"))
    assert placed.merger_path == str(tmp_path / "stage1" / "vision_encoder")
    with pytest.raises(FileNotFoundError, match=r"qwenvl_recipes\.vision_encoder\.merger_path: no merger\.safetensors"):
        encoder_paths(settings, where, output_dir=str(tmp_path / "elsewhere" / "stage2"))


def test_unreachable_encoder_says_how_to_point_at_a_local_folder():
    from custom_modules.vision_encoder.encoders import dinov2_spec

    settings = encoder_settings({"encoder": "dinov2", "encoder_path": "microsoft/rad-dino"})
    with pytest.raises(OSError, match=r"hf download microsoft/rad-dino --local-dir DIR.*"
                                      r"qwenvl_recipes\.vision_encoder\.encoder_path.*QVR_VISION_ENCODER_ENCODER_PATH"):
        dinov2_spec(settings)  # the tests run offline (conftest): no hub
