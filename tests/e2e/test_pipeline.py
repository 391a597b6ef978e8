"""The product's spine end to end: sample data -> converter CLI -> each trainer's own CLI on the seed caption
recipe -> an adapter that loads for generation; all offline, with any hub request caught."""

import json
import math
import socket
import subprocess
import sys
import threading

import pytest
import torch
from PIL import Image

from tools.learning import TASKS, adapter_dir, location_overrides
from tools.offline import offline_env
from tools.synthetic_data import make_coco_caption
from tools.tiny_models import FAMILIES, token_id_mismatches
from tools.trainers import REPO_ROOT, loss_history, run_logged, train_command, trainer_env


class ConnectionTrap:
    """A local TCP listener that every proxy and hub endpoint points at; it keeps the first line of each
    request (e.g. `CONNECT modelscope.cn:443`) so a failure says who tried to go out."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                first_line = conn.recv(256).split(b"\r\n")[0].decode(errors="replace")
            except OSError:
                first_line = "<nothing sent>"
            self.requests.append(first_line)
            conn.close()

    def env_vars(self) -> dict:
        """Proxy and hub endpoint variables that send every outgoing request here."""
        url = f"http://127.0.0.1:{self.port}"
        return dict(HTTP_PROXY=url, HTTPS_PROXY=url, ALL_PROXY=url, http_proxy=url, https_proxy=url,
                           NO_PROXY="", no_proxy="", HF_ENDPOINT=url, MODELSCOPE_DOMAIN=f"127.0.0.1:{self.port}")

    def close(self):
        self.server.close()


@pytest.fixture(scope="module")
def hub_trap():
    trap = ConnectionTrap()
    yield trap
    trap.close()


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory):
    work = tmp_path_factory.mktemp("caption")
    source = make_coco_caption(work / "source", n=8, seed=0)
    out = work / "coco_caption"
    subprocess.run([sys.executable, "-m", "converters", "coco-caption", "--input", str(source), "--out", str(out),
                    "--model", "qwen2_vl"], check=True, cwd=REPO_ROOT, env=offline_env())
    return out


def test_hub_trap_counts_a_proxied_request(hub_trap):
    # The trap must see a client that honours the proxy variables, or its zero count below proves nothing.
    probe = ("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.invalid/', timeout=5)\n"
             "except Exception:\n    pass\n")
    before = len(hub_trap.requests)
    subprocess.run([sys.executable, "-c", probe], env=offline_env(**hub_trap.env_vars()), check=True, timeout=60)
    assert hub_trap.requests[before:] == ["GET http://example.invalid/ HTTP/1.1"]


def tensorboard_losses(output_dir) -> list[tuple[int, float]]:
    """(step, training loss) pairs of the one TensorBoard event file under `output_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = output_dir.glob("runs/**/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events)).Reload()
    return [(event.step, event.value) for event in accumulator.Scalars("train/loss")]


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
def test_seed_caption_recipe_trains_two_steps_offline(trainer, caption_data, tiny_model_dir, hub_trap, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_model_dir("qwen2_vl")
    output_dir = tmp_path / "out"
    before = len(hub_trap.requests)
    recipe = REPO_ROOT / TASKS["caption"].recipes[trainer]
    command = train_command(trainer, recipe, location_overrides(trainer, model_dir, caption_data, "coco_caption",
                                                                output_dir, 2))
    run_logged(command, tmp_path / "train.log", env=trainer_env(trainer, **hub_trap.env_vars()), timeout=900)
    assert hub_trap.requests[before:] == [], "training tried to reach the network"

    history = loss_history(trainer, output_dir)
    assert [step for step, _ in history] == [1, 2]
    assert all(math.isfinite(loss) for _, loss in history)
    # the recipe's report_to: tensorboard, its event file under the output folder
    logged = tensorboard_losses(output_dir)
    assert [step for step, _ in logged] == [1, 2]
    assert [loss for _, loss in logged] == pytest.approx([loss for _, loss in history], rel=1e-4)
    checkpoint = output_dir / "checkpoint-2"  # saved at the last step, the model alone: a learning run is not resumed
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "optimizer.pt").exists()

    adapter = adapter_dir(trainer, output_dir)
    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, adapter).eval()
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the adapter's LoRA B weights never moved"

    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "COCO Yes:"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (96, 96), (20, 120, 200))], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_token_ids_agree_with_tokenizer(family, tiny_model_dir):
    assert token_id_mismatches(tiny_model_dir(family)) == []


def test_token_id_check_catches_a_drifted_config(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoConfig

    drifted = tmp_path / "drifted"
    shutil.copytree(tiny_model_dir("qwen2_vl"), drifted)
    config = AutoConfig.from_pretrained(drifted)
    config.image_token_id = 151654
    config.save_pretrained(drifted)
    assert token_id_mismatches(drifted) == [
        "config.image_token_id=151654 but tokenizer maps <|image_pad|> to 151655"]


def test_tiny_models_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from tools.tiny_models import STAMP, build_tiny_model

    first = load_file(build_tiny_model("qwen2_vl", tmp_path / "a") / "model.safetensors")
    second = load_file(build_tiny_model("qwen2_vl", tmp_path / "b") / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    # the stamp comes with the committed folder: a test process that finds it never reads a half-built model
    assert json.loads((tmp_path / "a" / STAMP).read_text())["name"] == "qwen2_vl"
