"""The GPU benchmark's pipeline on CPU: the 24 GiB recipes of both trainers, their `speedups` block applied by our
entry points, timed and counted by the benchmark worker (tiny model, one measured step each, one traced after it)."""

import ast
import gzip
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.offline import offline_env
from tools.trainers import venv_bin

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_speedup_recipes_through_both_trainers(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tools.bench", "run", "--cpu", "--model", "qwen2_5_vl_7b",
               "--variants", "lf_ours_24gib", "swift_ours_24gib", "--steps", "1", "--warmup", "1", "--profile", "1",
               "--timeout", "400",
               "--out", str(out), "--work", str(tmp_path / "work"),
               "--lf-python", str(venv_bin("llamafactory") / "python"),
               "--swift-python", str(venv_bin("swift") / "python")]
    temp_before = sorted(Path(tempfile.gettempdir()).glob("qvr*"))
    result = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    records = json.loads((out / "bench_qwen2_5_vl_7b.json").read_text())
    assert [(r["trainer"], r["variant"]) for r in records] == [("llamafactory", "ours_24gib"),
                                                               ("ms-swift", "ours_24gib")]
    for r in records:
        assert not r.get("error") and r["samples_per_s"] > 0 and r["steps"] >= 1
        assert r["n_trainable_with_grad"] == r["n_trainable"] > 0
        # COCO-shaped grounding rows: texts of varying length, so some positions of a batch are padding
        assert r["data"] == "coco, grounding text" and r["patches_per_sample"] > 0
        assert 100 < r["tokens_per_sample"] < 500
        # both 24 GiB recipes run micro-batch 16: texts of different lengths in one batch pad the shorter ones
        assert 0 < r["padding_share"] < 0.5, r
        assert r["trained"] == {"lm": "lora", "vision": "frozen"}
    # each trainer applied the recipe's speedups to the tiny tower (one vision config, depth-2 MLPs of width 64) and
    # to the model object its Trainer counts parameters on
    applied = re.findall(r"speedups applied: (\{.*?\})", (out / "bench_qwen2_5_vl_7b.log").read_text())
    assert len(applied) == 2
    for changed in map(ast.literal_eval, applied):
        assert changed["vision_attention"] == 1 and changed["vision_mlp"] == 2 and "compile_vision" not in changed
        assert changed["parameter_count"] == 1
        assert changed["lora_addmm"] == 7 * 2  # q, k, v, o, gate, up, down of the tiny LM's two layers
    # the workers leave with os._exit; the temporary folder they wrote in (swift's launcher recipe) is gone
    assert sorted(Path(tempfile.gettempdir()).glob("qvr*")) == temp_before
    # --profile 1: one traced micro-step after the measured window, inside each trainer's loop
    for name in ("lf_ours_24gib", "swift_ours_24gib"):
        events = json.loads(gzip.decompress((out / f"trace_{name}.json.gz").read_bytes()))["traceEvents"]
        assert any(e.get("name") == "aten::scaled_dot_product_attention" for e in events), name
        assert "Self CPU" in (out / f"trace_{name}.txt").read_text()


def test_profile_step_runs_each_lever_on_the_tiny_model(tmp_path):
    command = [sys.executable, "-m", "tools.profile_step", "--tiny", "--model", "qwen2_5_vl_7b", "--batch", "2",
               "--steps", "1", "--warmup", "1", "--levers", "sdpa", "vision_attention", "vision_mlp", "lora_input",
               "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "profile_qwen2_5_vl_7b.json").read_text())
    assert [r["lever"] for r in rows] == ["sdpa", "vision_attention", "vision_mlp", "lora_input"]
    # transformers' loop makes one sdpa call per window and image; batched, one per distinct segment length
    calls = [r["sdpa_calls_per_step"] for r in rows]
    assert calls[0] > calls[1] and calls[1:] == [calls[1]] * 3
    assert all(r["step_s"] > 0 and r["samples_per_s"] > 0 for r in rows)
