"""A trained ms-swift checkpoint answers through swift's own serving commands as `eval run` answers, with no flag:
the Qwen2.5-VL grounding recipe, trained two steps by its Run line with pixel limits that shrink the test images
(as a 602,112-pixel limit shrinks a photo), then `swift infer` and a `swift deploy` server on 127.0.0.1, both
started from a folder outside the repository without the limits in their environment. The model must see
training's image grid: the prompt's token count and the first answer token's log-probability are compared with
`eval run`'s inputs (an untrained model's answers alone would agree whatever the grid)."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from converters.geometry import resized_size
from eval.data import load_samples, read_manifest_entry
from eval.infer import TransformersGenerator
from eval.run import data_settings, run_eval
from tools.learning import adapter_dir, location_overrides
from tools.synthetic_data import make_refcoco
from tools.trainers import REPO_ROOT, run_logged, train_command, trainer_env, venv_bin

RECIPE = REPO_ROOT / "recipes/grounding/swift/qwen2_5_vl_7b_lora.yaml"
PIXELS = {"MIN_PIXELS": 3136, "MAX_PIXELS": 6272}  # 8 visual tokens at most: every test image shrinks
ROWS = 3  # val rows answered by each command
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def grounding(tmp_path_factory, tiny_model_dir):
    """(data dir, trained checkpoint, a folder outside the repository): the recipe through `swift sft`, from the
    repository root as its Run line, with the pixel limits given the way a shell overrides a recipe's ENV."""
    root = tmp_path_factory.mktemp("serving")
    data = root / "data"
    subprocess.run([sys.executable, "-m", "converters", "refcoco", "--input", str(make_refcoco(root / "src", n=12)),
                    "--out", str(data), "--model", "qwen2_5_vl", "--name", "refcocog",
                    "--min-pixels", str(PIXELS["MIN_PIXELS"]), "--max-pixels", str(PIXELS["MAX_PIXELS"])],
                   check=True, capture_output=True, cwd=REPO_ROOT)
    output_dir = root / "out"
    overrides = {**location_overrides("swift", tiny_model_dir("qwen2_5_vl"), data, "refcocog", output_dir, 2),
                 "dataloader_num_workers": 0, "dataset_num_proc": 1}
    run_logged(train_command("swift", RECIPE, overrides), root / "train.log", timeout=900,
               env=trainer_env("swift", **{k: str(v) for k, v in PIXELS.items()}))
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return data, adapter_dir("swift", output_dir), elsewhere


def serving_env() -> dict:
    env = trainer_env("swift")
    for name in (*PIXELS, "IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def eval_side(grounding, tiny_model_dir):
    """`eval run`'s answers, and per row (prompt tokens, log-probability of the first answer token) of its inputs."""
    data, checkpoint, elsewhere = grounding
    model = tiny_model_dir("qwen2_5_vl")
    val = data / "refcocog_val.jsonl"
    run_eval("grounding", str(model), val, elsewhere / "eval", adapter=str(checkpoint), limit=ROWS,
             max_new_tokens=NEW_TOKENS, java_metrics=False)
    answers = [json.loads(line)["prediction"] for line in (elsewhere / "eval" / "predictions.jsonl").open()]
    convention = data_settings("grounding", val, read_manifest_entry(val)).box_convention()
    generator = TransformersGenerator(str(model), str(checkpoint), convention=convention)
    samples = load_samples(val, "grounding")[:ROWS]
    firsts = []
    for sample in samples:
        inputs = generator.encode([sample])
        with torch.inference_mode():
            logits = generator.model(**inputs).logits[0, -1].float()
        firsts.append((inputs["input_ids"].shape[1], float(torch.log_softmax(logits, -1).max())))
    # the test means something only if swift's default limits would give these images another grid
    sizes = [tuple(s.image_size()) for s in samples]
    default = [resized_size(*size, "qwen2_5_vl", "swift", min_pixels=3136, max_pixels=16384 * 28 * 28)
               for size in sizes]
    assert all(convention.resized(size) != grid for size, grid in zip(sizes, default))
    return samples, answers, firsts


def test_checkpoint_records_what_serving_needs(grounding):
    _, checkpoint, _ = grounding
    saved = json.loads((checkpoint / "args.json").read_text())
    assert saved["model_kwargs"] == {k: str(v) for k, v in PIXELS.items()}
    assert saved["external_plugins"] == [str(REPO_ROOT / "custom_modules/integrations/swift_plugin.py")]


def test_swift_infer_sees_training_image_grid(grounding, eval_side):
    data, checkpoint, elsewhere = grounding
    samples, answers, firsts = eval_side
    rows = elsewhere / "rows.jsonl"
    rows.write_text("".join(line + "\n" for line in (data / "refcocog_val.jsonl").read_text().splitlines()[:ROWS]))
    result = elsewhere / "infer.jsonl"
    run_logged([str(venv_bin("swift") / "swift"), "infer", "--adapters", str(checkpoint), "--val_dataset", str(rows),
                "--max_new_tokens", str(NEW_TOKENS), "--temperature", "0", "--logprobs", "true",
                "--result_path", str(result)], elsewhere / "infer.log", env=serving_env(), cwd=elsewhere, timeout=600)
    infer = [json.loads(line) for line in result.read_text().splitlines()]
    assert [row["response"] for row in infer] == answers
    assert [row["logprobs"]["content"][0]["logprob"] for row in infer] == pytest.approx(
        [logprob for _, logprob in firsts], abs=1e-4)
    restored = ", ".join(f"{k}={v}" for k, v in PIXELS.items())
    assert f"qwenvl-recipes: from {checkpoint / 'args.json'}: {restored}" in (elsewhere / "infer.log").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def test_swift_deploy_answers_an_openai_request_as_eval_run(grounding, eval_side):
    _, checkpoint, elsewhere = grounding
    samples, answers, firsts = eval_side
    port = free_port()
    with open(elsewhere / "deploy.log", "w") as log:
        server = subprocess.Popen([str(venv_bin("swift") / "swift"), "deploy", "--adapters", str(checkpoint),
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=elsewhere, env=serving_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (elsewhere / "deploy.log").read_text()[-3000:]
            try:
                models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5))
                break
            except OSError:
                assert time.monotonic() < deadline, "swift deploy did not start"
                time.sleep(2)
        sample = samples[0]
        image = base64.b64encode(Path(sample.images[0]).read_bytes()).decode()
        text = sample.prompt[0]["content"].replace("<image>", "")
        reply = post(f"http://127.0.0.1:{port}/v1/chat/completions", {
            "model": models["data"][0]["id"], "max_tokens": NEW_TOKENS, "temperature": 0, "logprobs": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
                {"type": "text", "text": text}]}]})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    choice = reply["choices"][0]
    assert choice["message"]["content"] == answers[0]
    assert reply["usage"]["prompt_tokens"] == firsts[0][0]
    assert choice["logprobs"]["content"][0]["logprob"] == pytest.approx(firsts[0][1], abs=1e-4)
