"""What our checkpoints hold and how they load: a frozen base saves only what trains and still resumes through the
Trainer's own code; a resumed forgery run takes its modules from the checkpoint and its best AUROC from the log;
a refused pickle is one line naming the file, in both trainers."""
import logging
import pickle
import subprocess
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, Trainer, TrainingArguments

from custom_modules.checkpoints import load_adapter, save_trained_parts_only, transformers_model
from custom_modules.forgery.attach import find_modules
from custom_modules.forgery.callbacks import BEST_KEY, ForgeryCallback
from custom_modules.forgery.checkpoint import HEAD_FILE, save_checkpoint
from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.settings import parse_settings
from qwenvl_recipes.io import InputError
from tools.trainers import REPO_ROOT, trainer_env, venv_bin

TINY = {"head_blocks": [0, 1], "head_dim": 16, "fusion_tokens": 2, "mask_size": 16}


def build(tiny_model_dir, mode):
    path = tiny_model_dir("qwen2_5_vl")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path)
    return prepare_model(model, parse_settings(dict(TINY, mode=mode)), AutoTokenizer.from_pretrained(path))


def moved(modules):
    """The modules' trainable parameters moved off their current values (as training would)."""
    with torch.no_grad():
        for param in modules.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))


def trainer_warnings() -> tuple[logging.Handler, list[str]]:
    """A handler catching what transformers' Trainer warns (transformers' loggers do not reach pytest's caplog)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    return handler, records


def test_frozen_base_saves_the_trained_parameters_and_resumes_through_the_trainer(tiny_model_dir, tmp_path):
    model, modules = build(tiny_model_dir, "head_pretrain")
    assert save_trained_parts_only(model, [modules])
    moved(modules)
    model.save_pretrained(tmp_path / "checkpoint-1")  # what both trainers' checkpoints call for a non-adapter model
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    saved = load_file(tmp_path / "checkpoint-1" / "model.safetensors")
    assert set(saved) == trained and all(name.startswith("forgery.head.") for name in trained)
    expected = {name: param.detach().clone() for name, param in modules.state_dict().items()}

    moved(modules)  # a fresh head, as a resumed run builds it
    handler, warnings = trainer_warnings()
    logging.getLogger("transformers.trainer").addHandler(handler)
    try:
        trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    finally:
        logging.getLogger("transformers.trainer").removeHandler(handler)
    assert all(torch.equal(modules.state_dict()[name], value) for name, value in expected.items())
    assert not [w for w in warnings if "missing keys" in w or "unexpected keys" in w], warnings


@pytest.mark.parametrize("case", ["lora_trains", "a_base_layer_trains"])
def test_the_base_is_saved_whole_when_any_of_it_trains(tiny_model_dir, case):
    model, modules = build(tiny_model_dir, "vit_lora_head" if case == "lora_trains" else "head_pretrain")
    if case == "a_base_layer_trains":
        model.lm_head.requires_grad_(True)
    assert not save_trained_parts_only(model, [modules])
    assert "_keys_to_ignore_on_save" not in vars(transformers_model(model))


def test_resume_only_model_of_a_frozen_base_is_refused(tiny_model_dir, tmp_path):
    """ms-swift's resume_only_model (full tuner) loads the model from the checkpoint, which holds no base weights."""
    model, modules = build(tiny_model_dir, "head_pretrain")
    args = SimpleNamespace(resume_from_checkpoint=str(tmp_path / "checkpoint-2"), resume_only_model=True)
    with pytest.raises(ValueError, match=r"resume_only_model: .*checkpoint-2 holds only the trained parameters"):
        save_trained_parts_only(model, [modules], args)


@pytest.mark.parametrize("mode", ["vit_lora_head", "hybrid"])
def test_a_resumed_run_takes_the_forgery_modules_from_its_checkpoint(tiny_model_dir, tmp_path, mode):
    model, modules = build(tiny_model_dir, mode)
    moved(modules)
    save_checkpoint(model, tmp_path / "checkpoint-3")
    saved = load_file(tmp_path / "checkpoint-3" / HEAD_FILE)
    resumed, resumed_modules = build(tiny_model_dir, mode)  # head and fusion freshly initialised
    callback = ForgeryCallback(resumed_modules.settings, processor=lambda: None)
    args = SimpleNamespace(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    callback.on_init_end(args, None, None, model=resumed)
    assert find_modules(resumed) is resumed_modules
    assert saved.keys() == resumed_modules.state_dict().keys()
    assert all(torch.equal(resumed_modules.state_dict()[name], value) for name, value in saved.items())

    # the best AUROC before the interruption stays the one to beat
    history = [{"loss": 1.0}, {BEST_KEY: 0.75}, {BEST_KEY: 0.8}]
    callback.on_train_begin(args, SimpleNamespace(log_history=history), None, model=resumed)
    assert callback.best_auroc == 0.8
    callback.on_train_begin(args, SimpleNamespace(log_history=[]), None, model=resumed)
    assert callback.best_auroc is None


class Payload:
    def __reduce__(self):
        return (exec, ("open('ran', 'w')",))


def test_a_pickle_torch_refuses_is_one_line_naming_the_file(tiny_model_dir, tmp_path, monkeypatch):
    model, _ = build(tiny_model_dir, "vit_lora_head")
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save({"weights": Payload()}, tmp_path / "adapter" / "adapter_model.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as refused:
        load_adapter(AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl")), tmp_path / "adapter")
    assert str(refused.value) == (f"{tmp_path / 'adapter' / 'adapter_model.bin'}: refused to unpickle (it names "
                                  f"exec; only tensors and plain data are loaded)")
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    assert not (tmp_path / "ran").exists()


def test_evaluating_a_refused_checkpoint_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    from custom_modules.forgery.evaluate import main

    model, _ = build(tiny_model_dir, "vit_lora_head")
    save_checkpoint(model, tmp_path / "best_by_AUROC")
    (tmp_path / "best_by_AUROC" / "adapter_model.safetensors").unlink()
    torch.save({"weights": Payload()}, tmp_path / "best_by_AUROC" / "adapter_model.bin")
    with pytest.raises(SystemExit) as exit_status:
        main(["--model", str(tiny_model_dir("qwen2_5_vl")), "--checkpoint", str(tmp_path / "best_by_AUROC"),
              "--data", str(tmp_path / "val.jsonl"), "--out", str(tmp_path / "report"), "--device", "cpu"])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err  # after transformers' loading progress bars
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"error: {tmp_path / 'best_by_AUROC' / 'adapter_model.bin'}: refused to unpickle "
                                    f"(it names exec; only tensors and plain data are loaded)")


def test_resuming_from_a_refused_checkpoint_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """qvr-llamafactory names the file of the checkpoint LLaMA-Factory resumed from that torch refused."""
    import llamafactory.train.tuner as tuner

    from custom_modules.integrations.llamafactory_cli import main

    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    torch.save({"state": {}}, checkpoint / "scheduler.pt")
    torch.save({"state": Payload()}, checkpoint / "optimizer.pt")

    def run_exp(args, callbacks):  # the Trainer's resume loads the checkpoint's optimizer state weights-only
        torch.load(checkpoint / "optimizer.pt", weights_only=True)
    monkeypatch.setattr(tuner, "run_exp", run_exp)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit) as exit_status:
        main(["train", str(recipe)])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == (f"qvr-llamafactory: {checkpoint / 'optimizer.pt'}: refused to unpickle (it "
                                       f"names exec; only tensors and plain data are loaded)\n")


RESUME_IN_SWIFT = """import sys
from pathlib import Path

import torch

from custom_modules.integrations.swift_plugin import name_refused_pickles

name_refused_pickles(sys.argv[1])  # what the plugin does for `swift sft --resume_from_checkpoint`
print("resuming", flush=True)
torch.load(Path(sys.argv[1]) / "optimizer.pt", weights_only=True)  # as the Trainer's resume loads it
"""


def test_resuming_from_a_refused_checkpoint_in_swift_is_one_line_and_exit_2(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    torch.save({"state": Payload()}, checkpoint / "optimizer.pt")
    resumed = subprocess.run([venv_bin("swift") / "python", "-c", RESUME_IN_SWIFT, str(checkpoint)], cwd=REPO_ROOT,
                             env=trainer_env("swift", PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 2 and resumed.stdout == "resuming\n"
    assert "Traceback" not in resumed.stderr  # swift's own import logs come before the line
    assert resumed.stderr.splitlines()[-1] == (f"swift: {checkpoint / 'optimizer.pt'}: refused to unpickle (it names "
                                               f"exec; only tensors and plain data are loaded)")
    assert not (tmp_path / "ran").exists() and not (REPO_ROOT / "ran").exists()
