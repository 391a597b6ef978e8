"""A trained checkpoint answers through the trainers' own serving commands as `eval run` answers it.

The Qwen2.5-VL grounding recipes, trained two steps by their Run lines with pixel limits that shrink the test images
(as a 602,112-pixel limit shrinks a photo). ms-swift: `swift infer` and a `swift deploy` server on 127.0.0.1, both
started from a folder outside the repository with no pixel limit in their environment or on their command line.
LLaMA-Factory: `llamafactory-cli api` with the keys docs/serving.md gives. The model must see training's image grid:
the prompt's token count and the first answer token's log-probability are compared with `eval run`'s inputs (an
untrained model's answers alone would agree whatever the grid)."""
from __future__ import annotations

import base64
import contextlib
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
from eval.run import data_settings, run_eval, with_model_processor
from tools.learning import adapter_dir, location_overrides
from tools.synthetic_data import make_refcoco
from tools.trainers import REPO_ROOT, run_logged, train_command, trainer_env, venv_bin

RECIPES = {t: REPO_ROOT / f"recipes/grounding/{t}/qwen2_5_vl_7b_lora.yaml" for t in ("llamafactory", "swift")}
PIXELS = {"MIN_PIXELS": 3136, "MAX_PIXELS": 6272}  # 8 visual tokens at most: every test image shrinks
ROWS = 3  # val rows answered by swift infer
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    out = root / "data"
    subprocess.run([sys.executable, "-m", "converters", "refcoco", "--input", str(make_refcoco(root / "src", n=12)),
                    "--out", str(out), "--model", "qwen2_5_vl", "--name", "refcocog",
                    "--min-pixels", str(PIXELS["MIN_PIXELS"]), "--max-pixels", str(PIXELS["MAX_PIXELS"])],
                   check=True, capture_output=True, cwd=REPO_ROOT)
    (root / "elsewhere").mkdir()
    return out


@pytest.fixture(scope="module")
def trained(data, tiny_model_dir):
    """trained(trainer) -> its checkpoint of the recipe, run from the repository root as its Run line; the pixel
    limits given as a user overrides them (ms-swift: in the shell, over the recipe's ENV; LLaMA-Factory: keys)."""
    done = {}

    def train(trainer: str) -> Path:
        if trainer not in done:
            output_dir = data.parent / f"out-{trainer}"
            overrides = location_overrides(trainer, tiny_model_dir("qwen2_5_vl"), data, "refcocog", output_dir, 2)
            env = trainer_env(trainer)
            if trainer == "swift":
                overrides.update(dataloader_num_workers=0, dataset_num_proc=1)
                env.update({k: str(v) for k, v in PIXELS.items()})
            else:
                overrides.update(preprocessing_num_workers=1, image_min_pixels=PIXELS["MIN_PIXELS"],
                                 image_max_pixels=PIXELS["MAX_PIXELS"])
            run_logged(train_command(trainer, RECIPES[trainer], overrides), data.parent / f"train-{trainer}.log",
                       env=env, timeout=900)
            done[trainer] = adapter_dir(trainer, output_dir)
        return done[trainer]
    return train


def eval_inputs(model: Path, checkpoint: Path, data_file: Path) -> tuple[list, list[tuple[int, float]]]:
    """The first val samples, each with (prompt tokens, log-probability of the first answer token) of the inputs
    `eval run` builds for it; checks that the trainer's default limits would give these images another grid."""
    settings = data_settings("grounding", data_file, read_manifest_entry(data_file))
    samples = load_samples(data_file, "grounding")[:ROWS]
    convention = with_model_processor(settings, "grounding", str(model), data_file, samples).box_convention()
    generator = TransformersGenerator(str(model), str(checkpoint), convention=convention)
    firsts = []
    for sample in samples:
        inputs = generator.encode([sample])
        with torch.inference_mode():
            logits = generator.model(**inputs).logits[0, -1].float()
        firsts.append((inputs["input_ids"].shape[1], float(torch.log_softmax(logits, -1).max())))
    # the test means something only where serving at the trainer's default limits would feed another grid
    path, default_min, default_max = (("swift", 4 * 28 * 28, 16384 * 28 * 28) if convention.resize_path == "swift"
                                      else ("llamafactory", 32 * 32, 768 * 768))
    for size in (tuple(s.image_size()) for s in samples):
        default = resized_size(*size, "qwen2_5_vl", path, min_pixels=default_min, max_pixels=default_max,
                               processor_pixels=convention.processor_pixels)
        assert convention.resized(size) != default
    return samples, firsts


@pytest.fixture(scope="module")
def expected(trained, data, tiny_model_dir):
    """expected(trainer) -> (samples, [(prompt tokens, first-token log-probability)], eval run's answers) on the val
    split file of that trainer's checkpoint."""
    done = {}

    def get(trainer: str):
        if trainer not in done:
            model, checkpoint = tiny_model_dir("qwen2_5_vl"), trained(trainer)
            val = data / f"refcocog_val.{'jsonl' if trainer == 'swift' else 'json'}"
            samples, firsts = eval_inputs(model, checkpoint, val)
            out = data.parent / f"eval-{trainer}"
            run_eval("grounding", str(model), val, out, adapter=str(checkpoint), limit=ROWS,
                     max_new_tokens=NEW_TOKENS, java_metrics=False)
            answers = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").open()]
            done[trainer] = samples, firsts, answers
        return done[trainer]
    return get


def serving_env(trainer: str, **extra) -> dict:
    env = trainer_env(trainer, **extra)
    for name in (*PIXELS, "IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM"):
        env.pop(name, None)
    return env


def test_swift_checkpoint_records_what_serving_needs(trained):
    saved = json.loads((trained("swift") / "args.json").read_text())
    assert saved["model_kwargs"] == {k: str(v) for k, v in PIXELS.items()}
    assert saved["external_plugins"] == [str(REPO_ROOT / "custom_modules/integrations/swift_plugin.py")]


def test_swift_infer_sees_training_image_grid(trained, expected, data):
    checkpoint, elsewhere, val = trained("swift"), data.parent / "elsewhere", data / "refcocog_val.jsonl"
    _, firsts, answers = expected("swift")
    rows = elsewhere / "rows.jsonl"
    rows.write_text("".join(line + "\n" for line in val.read_text().splitlines()[:ROWS]))
    result = elsewhere / "infer.jsonl"
    run_logged([str(venv_bin("swift") / "swift"), "infer", "--adapters", str(checkpoint), "--val_dataset", str(rows),
                "--max_new_tokens", str(NEW_TOKENS), "--temperature", "0", "--logprobs", "true",
                "--result_path", str(result)], elsewhere / "infer.log", env=serving_env("swift"), cwd=elsewhere,
               timeout=600)
    infer = [json.loads(line) for line in result.read_text().splitlines()]
    assert [row["logprobs"]["content"][0]["logprob"] for row in infer] == pytest.approx(
        [logprob for _, logprob in firsts], abs=1e-4)
    assert [row["response"] for row in infer] == answers
    restored = ", ".join(f"{k}={v}" for k, v in PIXELS.items())
    assert f"qwenvl-recipes: from {checkpoint / 'args.json'}: {restored}" in (elsewhere / "infer.log").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict, log: Path):
    """An OpenAI-style server on 127.0.0.1:`port`, up; stopped with every process it started (its group)."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env,
                                   start_new_session=True)
    try:
        deadline, model = time.monotonic() + 600, None
        while model is None:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                    model = json.load(response)["data"][0]["id"]
            except OSError:
                assert time.monotonic() < deadline, f"no server on port {port} after 600 s"
                time.sleep(2)
        yield model
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ask(port: int, model: str, sample, **options) -> dict:
    """One chat request: the sample's image as base64 and its prompt text, as docs/serving.md writes it."""
    image = base64.b64encode(Path(sample.images[0]).read_bytes()).decode()
    body = {"model": model, "max_tokens": NEW_TOKENS, **options, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
        {"type": "text", "text": sample.prompt[0]["content"].replace("<image>", "")}]}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def test_swift_deploy_answers_an_openai_request_as_eval_run(trained, expected, data):
    checkpoint, elsewhere = trained("swift"), data.parent / "elsewhere"
    samples, firsts, answers = expected("swift")
    port = free_port()
    with server([str(venv_bin("swift") / "swift"), "deploy", "--adapters", str(checkpoint), "--host", "127.0.0.1",
                 "--port", str(port)], port, serving_env("swift"), elsewhere / "deploy.log") as model:
        reply = ask(port, model, samples[0], temperature=0, logprobs=True)
    choice = reply["choices"][0]
    assert choice["message"]["content"] == answers[0]
    assert reply["usage"]["prompt_tokens"] == firsts[0][0]
    assert choice["logprobs"]["content"][0]["logprob"] == pytest.approx(firsts[0][1], abs=1e-4)


def test_llamafactory_api_with_the_recipe_keys_answers_as_eval_run(trained, expected, data, tiny_model_dir):
    checkpoint, elsewhere, model_dir = trained("llamafactory"), data.parent / "elsewhere", tiny_model_dir("qwen2_5_vl")
    samples, firsts, answers = expected("llamafactory")
    port = free_port()
    command = [str(venv_bin("llamafactory") / "llamafactory-cli"), "api", "--model_name_or_path", str(model_dir),
               "--adapter_name_or_path", str(checkpoint), "--template", "qwen2_vl",
               "--image_max_pixels", str(PIXELS["MAX_PIXELS"]), "--image_min_pixels", str(PIXELS["MIN_PIXELS"])]
    with server(command, port, serving_env("llamafactory", API_HOST="127.0.0.1", API_PORT=str(port)),
                elsewhere / "api.log") as model:
        reply = ask(port, model, samples[0], do_sample=False)
    assert reply["choices"][0]["message"]["content"] == answers[0]
    assert reply["usage"]["prompt_tokens"] == firsts[0][0]
