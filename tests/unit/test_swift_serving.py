"""What the ms-swift plugin keeps in a run's args.json for serving, and reads back (custom_modules.integrations
.swift_serving); swift itself runs in tests/e2e/test_serving.py."""
import json

from custom_modules.integrations.swift_serving import importing_arguments, recorded_variables, serving_variables


def test_serving_variables_are_the_image_limits_and_our_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage1" / "vision_encoder").mkdir(parents=True)
    environment = {"MAX_PIXELS": "602112", "MIN_PIXELS": "3136", "HOME": "/root", "QVR_LLAMAFACTORY_VENV": "/v",
                   "QVR_FORGERY_MODE": "hybrid", "QVR_FORGERY_EVAL_FILE": "data/missing.jsonl",
                   "QVR_VISION_ENCODER_MERGER_PATH": "stage1/vision_encoder",
                   "QVR_VISION_ENCODER_ENCODER_PATH": "microsoft/rad-dino"}
    assert serving_variables(environment) == {
        "MIN_PIXELS": "3136", "MAX_PIXELS": "602112", "QVR_FORGERY_EVAL_FILE": "data/missing.jsonl",
        "QVR_FORGERY_MODE": "hybrid", "QVR_VISION_ENCODER_ENCODER_PATH": "microsoft/rad-dino",
        # a path relative to where training ran, for a server started anywhere
        "QVR_VISION_ENCODER_MERGER_PATH": str(tmp_path / "stage1" / "vision_encoder")}


def test_recorded_variables_read_the_run_s_model_kwargs(tmp_path):
    for saved, expected in (({"max_pixels": 6272, "QVR_FORGERY_MODE": "T1"}, {"MAX_PIXELS": "6272",
                                                                           "QVR_FORGERY_MODE": "T1"}),
                            ('{"MIN_PIXELS": 3136}', {"MIN_PIXELS": "3136"}), (None, {})):
        (tmp_path / "args.json").write_text(json.dumps({"model": "m", "model_kwargs": saved}))
        assert recorded_variables(tmp_path) == expected


def test_the_arguments_importing_the_plugin_are_swift_s_caller():
    class Arguments:  # swift imports external plugins from BaseArguments._import_external_plugins(self)
        def _import_external_plugins(self):
            return importing_arguments()

    arguments = Arguments()
    assert arguments._import_external_plugins() is arguments
    assert importing_arguments() is None  # imported any other way
