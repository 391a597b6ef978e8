"""The CPU-testable parts of tools/bench/ and tools/mfu.py: MFU arithmetic, counting, step windows, ratios,
table, schema, variant parsing, the configs every benchmark's variants get (recipes, Unsloth's calls, the seed
loops), the wheel sets and the worker's processes."""

import gzip
import json
import sys
from pathlib import Path

import pytest
import torch

from tools.bench import orchestrator, records, variants, worker
from tools.mfu import mfu, step_flops, training_mode


def test_step_flops_count_a_frozen_tower_forward_only():
    # LoRA LM: 4 per weight and token; a frozen tower 2 per weight and patch, 4 with LoRA in it, 6 fully trained
    assert step_flops(7_000_000_000, 600_000_000, 300, 1024) == 4 * 7e9 * 300 + 2 * 6e8 * 1024
    assert step_flops(10, 2, 3, 5, vision="lora") == 4 * 10 * 3 + 4 * 2 * 5
    assert step_flops(10, 2, 3, 5, lm="full", vision="full") == 6 * 10 * 3 + 6 * 2 * 5
    assert step_flops(10, 2, 3, 5, lm="frozen") == step_flops(10, 2, 3, 5)  # still passes gradients back
    with pytest.raises(ValueError, match="vision='trained'"):
        step_flops(10, 2, 3, 5, vision="trained")


def test_mfu_against_h100_peak():
    # 989e12 FLOPs of work in one second is 100% of the H100 bf16 dense peak
    assert mfu(989e12, seconds=1.0) == pytest.approx(1.0)
    assert mfu(4 * 1e9 * 247_250, seconds=4.0) == pytest.approx(0.25)


def test_mfu_of_a_reference_row_by_the_forward_only_tower():
    # Qwen2.5-VL-7B, plain loop batch 2 with checkpointing, 3.68 samples/s: 4.3% MFU when the frozen tower was
    # credited with a backward pass (4 per patch), 3.8% counting its forward only. 333 tokens and 1024 patches a
    # sample; N_lm = 7.07e9 - 0.545e9 input embedding, N_vis = 0.676e9 (architecture counts).
    tokens, patches = int(333 * 3.68 * 1000), int(1024 * 3.68 * 1000)
    assert mfu(4 * 6_525_000_000 * tokens + 4 * 676_000_000 * patches, 1000.0) == pytest.approx(0.043, abs=0.002)
    assert mfu(step_flops(6_525_000_000, 676_000_000, tokens, patches), 1000.0) == pytest.approx(0.038, abs=0.002)


def test_training_mode_reads_the_trainable_weights():
    named = [("base_model.model.model.language_model.layers.0.q_proj.lora_A.default.weight",
              torch.nn.Parameter(torch.ones(1))),
             ("base_model.model.model.language_model.layers.0.q_proj.base_layer.weight",
              torch.nn.Parameter(torch.ones(1), requires_grad=False)),
             ("base_model.model.model.visual.blocks.0.mlp.weight",
              torch.nn.Parameter(torch.ones(1), requires_grad=False)),
             ("base_model.model.model.visual.merger.mlp.weight", torch.nn.Parameter(torch.ones(1)))]
    assert training_mode(named, ".language_model.") == "lora"
    assert training_mode(named, ".visual.blocks.") == "frozen"  # a trained merger leaves the blocks forward-only
    assert training_mode(named, ".visual.") == "full"


class TinyVL(torch.nn.Module):
    """Names like a peft-wrapped Qwen VL model: a visual tower, LM layers, LoRA weights, tied or untied head."""

    def __init__(self, tied: bool):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(100, 8)
        self.visual = torch.nn.Linear(4, 8)                       # 32 + 8 = 40
        self.layers = torch.nn.Linear(8, 8)                       # 64 + 8 = 72
        self.lora_A = torch.nn.Linear(8, 2, bias=False)           # excluded
        self.lm_head = torch.nn.Linear(8, 100, bias=False)        # excluded
        if tied:
            self.lm_head.weight = self.embed_tokens.weight

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head


@pytest.mark.parametrize("tied", [True, False])
def test_count_params_excludes_embeddings_and_lora(tied):
    assert records.count_params(TinyVL(tied)) == (72, 40)


def test_count_params_counts_a_modules_to_save_copy_once():
    # the custom encoder's merger trains as a modules_to_save copy; peft keeps the untrained original beside it
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(TinyVL(tied=False), LoraConfig(r=2, target_modules=["layers"], modules_to_save=["visual"]))
    assert records.count_params(wrapped) == (72, 40)


def test_count_params_on_a_real_tiny_qwen(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl"))
    n_lm, n_vis = records.count_params(model)
    visual = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()  # the tiny models tie the head to it
    assert n_vis == visual > 0
    assert n_lm == total - visual - embed > 0


def test_batch_counts_padding_packing_and_images():
    ids = torch.ones(2, 5, dtype=torch.long)
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
              "image_grid_thw": torch.tensor([[1, 4, 4], [1, 2, 2]])}
    assert records.batch_counts(padded) == (2, 8, 20, 10)
    packed = {"input_ids": torch.ones(1, 6, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 2, 2, 2, 0]]),
              "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]])}
    assert records.batch_counts(packed) == (2, 5, 8, 6)
    padding_free = {"input_ids": torch.ones(1, 7, dtype=torch.long), "position_ids": torch.arange(7)[None]}
    assert records.batch_counts(padding_free) == (1, 7, 0, 7)


def test_batch_counts_leave_out_the_padding_of_block_diagonal_masks():
    from llamafactory.data.collator import prepare_4d_attention_mask

    segments = torch.tensor([[1, 1, 2, 2, 2, 0, 0], [1, 2, 2, 3, 0, 0, 0]])
    grid = torch.tensor([[1, 2, 2]] * 5)
    for dtype in (torch.bfloat16, torch.float32):
        packed = {"input_ids": torch.ones(2, 7, dtype=torch.long), "image_grid_thw": grid,
                  "attention_mask": prepare_4d_attention_mask(segments, dtype)}
        assert records.batch_counts(packed) == (5, 9, 20, 14)
    boolean = prepare_4d_attention_mask(segments, torch.float32) == 0
    assert records.batch_counts(dict(packed, attention_mask=boolean)) == (5, 9, 20, 14)


def test_summarise_window_after_warmup():
    ends = [10.0, 11.0, 11.5, 12.0, 12.5]
    counts = [(2, 100, 50, 125)] * 5
    summary = records.summarise(ends, counts, warmup=2)
    assert summary["steps"] == 3 and summary["seconds"] == pytest.approx(1.5)
    assert summary["padding_share"] == pytest.approx(0.2)
    assert summary["samples_per_s"] == pytest.approx(4.0)
    assert summary["tokens_per_s"] == pytest.approx(200.0)
    with pytest.raises(ValueError):
        records.summarise(ends, counts, warmup=5)
    with pytest.raises(ValueError):
        records.summarise(ends, counts[:4], warmup=1)


@pytest.mark.parametrize("warmup,steps,accum,profile,expected", [
    (5, 20, 1, 0, (5, 25, 25)), (5, 20, 8, 0, (8, 32, 4)), (3, 8, 2, 0, (4, 12, 6)), (5, 20, 1, 2, (5, 25, 27)),
    (5, 20, 8, 2, (8, 32, 5))])
def test_micro_steps_cover_whole_optimizer_steps(warmup, steps, accum, profile, expected):
    warm, window, max_steps = variants.micro_steps(warmup, steps, accum, profile)
    assert (warm, window, max_steps) == expected
    assert warm >= warmup and window - warm >= steps and max_steps * accum - window >= profile


def record(variant, rate, trainer="llamafactory", **extra):
    return dict(model="qwen2_5_vl_7b", trainer=trainer, variant=variant, samples_per_s=rate, tokens_per_s=rate and rate * 330,
                peak_gib=20.0, mfu=0.1, device="NVIDIA H100 80GB HBM3", date="2026-11-25", data="coco, grounding text",
                **extra)


def test_ratios_against_seed_faster_example_and_faster_tuned_trainer():
    rows = records.add_ratios([record("seed_loop", 2.0, "transformers"), record("trainer_default", 2.5),
                          record("trainer_default", 3.0, "ms-swift"), record("trainer_tuned", 8.0),
                          record("trainer_tuned", 6.0, "ms-swift"), record("ours", 12.0)])
    assert [r["ratio_vs_seed"] for r in rows] == [1.0, 1.25, 1.5, 4.0, 3.0, 6.0]
    assert rows[-1]["ratio_vs_best_default"] == pytest.approx(4.0)
    assert rows[-1]["ratio_vs_best_tuned"] == pytest.approx(1.5)


def test_ratios_skip_failed_baselines():
    failed = record("seed_loop", None, "transformers", error="exit 1")
    rows = records.add_ratios([failed, record("ours", 12.0)])
    assert rows[1]["ratio_vs_seed"] is None and rows[1]["ratio_vs_best_default"] is None
    assert rows[1]["ratio_vs_best_tuned"] is None


@pytest.mark.parametrize("with_grad,failed", [(67026178, False), (11486464, True), (None, False)])
def test_a_row_that_trained_less_than_its_recipe_is_a_failure(with_grad, failed):
    measured = record("ours", 33.14, n_trainable=67026178, n_trainable_with_grad=with_grad)
    row = records.without_partial_training(measured)
    assert (row.get("error") is not None) == failed
    if failed:
        assert row["error"].startswith("only 11,486,464 of 67,026,178 trainable values got a gradient (measured 33.14")
        assert row["samples_per_s"] is None and row["mfu"] is None
        assert records.add_ratios([record("trainer_tuned", 20.0), row])[1]["ratio_vs_best_tuned"] is None
    else:
        assert row == measured


def test_table_rows_and_failures():
    rows = records.add_ratios([record("seed_loop", 2.0, "transformers", settings="batch 2"),
                          record("ours", 12.0, settings="batch 16", steps=20, padding_share=0.25),
                          record("ours_24gib", None, error="exit 1: CUDA out of memory", settings="batch 8")])
    lines = records.format_table(rows).splitlines()
    assert lines[0].startswith("| model | data | trainer | variant |") and lines[0].endswith("| x best Unsloth |")
    assert lines[3] == ("| qwen2_5_vl_7b | coco, grounding text | llamafactory | ours | batch 16 | 20 | 12.00 | 3960 | "
                        "25% | 20.0 | 10.0% | 6.00 | - | - | - |")
    assert "failed: exit 1: CUDA out of memory" in lines[4]


def test_record_schema():
    records.check_record(record("ours", 12.0))
    with pytest.raises(ValueError, match="lacks"):
        records.check_record({k: v for k, v in record("ours", 1.0).items() if k != "device"})
    with pytest.raises(ValueError, match="lacks \\['data'\\]"):
        records.check_record({k: v for k, v in record("ours", 1.0).items() if k != "data"})
    with pytest.raises(ValueError, match="variant"):
        records.check_record(record("fast", 1.0))
    with pytest.raises(ValueError, match="fraction"):
        records.check_record(dict(record("ours", 1.0), mfu=35.0))


def test_report_writes_performance_json(tmp_path):
    source = tmp_path / "bench_qwen2_5_vl_7b.json"
    source.write_text(json.dumps([record("seed_loop", 2.0, "transformers"), record("ours", 12.0),
                                  record("ours_24gib", None, error="timeout after 150s")]))
    orchestrator.main(["report", str(source), "--docs", str(tmp_path)])
    written = json.loads((tmp_path / "performance.json").read_text())
    assert [r["variant"] for r in written] == ["seed_loop", "ours"]


def test_report_labels_new_records_and_keeps_the_earlier_labels(tmp_path):
    earlier = tmp_path / "performance.json"
    earlier.write_text(json.dumps([dict(record("ours", 12.0), run="run T")]))
    new = tmp_path / "bench_qwen2_5_vl_7b.json"
    new.write_text(json.dumps([record("ours", 13.0)]))
    orchestrator.main(["report", str(earlier), str(new), "--run", "run U", "--docs", str(tmp_path)])
    written = json.loads(earlier.read_text())
    assert [(r["samples_per_s"], r["run"]) for r in written] == [(12.0, "run T"), (13.0, "run U")]


GROUNDING_7B = variants.BENCHES["qwen2_5_vl_7b", "grounding"]


def test_parse_variant_overrides():
    assert variants.parse_variant("lf_ours", GROUNDING_7B) == ("lf_ours", {})
    assert variants.parse_variant("lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false",
                                  GROUNDING_7B) == ("lf_ours", {"per_device_train_batch_size": 12,
                                                                "enable_liger_kernel": False})
    with pytest.raises(ValueError, match="unknown variant 'fastest' of the qwen2_5_vl_7b grounding benchmark"):
        variants.parse_variant("fastest", GROUNDING_7B)
    with pytest.raises(ValueError, match="unknown variant 'lf_t1'"):  # a forgery variant, not a grounding one
        variants.parse_variant("lf_t1", GROUNDING_7B)
    with pytest.raises(ValueError, match="key=value"):
        variants.parse_variant("lf_ours:batch", GROUNDING_7B)
    assert variants.parse_variant("swift_ours:callbacks=[forgery,speedups],lora_rank=8", GROUNDING_7B) == (
        "swift_ours", {"callbacks": ["forgery", "speedups"], "lora_rank": 8})


def test_bench_of_a_model_defaults_to_its_perf_task_and_names_the_tasks_it_has():
    assert variants.bench_of("qwen2_vl_2b").task == "caption"
    assert variants.bench_of("qwen2_5_vl_7b").task == "grounding"
    assert variants.bench_of("qwen3_vl_2b", "microscopy").images_per_sample == 2
    with pytest.raises(ValueError, match="no 'forgery' benchmark of qwen3_vl_8b; its tasks: grounding, microscopy, "
                                         "report"):
        variants.bench_of("qwen3_vl_8b", "forgery")


@pytest.mark.parametrize("bench", variants.BENCH_LIST, ids=lambda b: f"{b.model}-{b.task}")
def test_every_variant_of_every_benchmark_builds_its_config(bench, tmp_path):
    """Every variant (not only the defaults), on the GPU and on CPU: its recipe exists, whole optimizer steps
    surround the window, the checkpoint is the benchmark's."""
    assert set(bench.default) <= set(bench.variants)
    for name in bench.variants:
        for cpu in (False, True):
            config, warm, window = variants.trainer_config(bench, name, {}, tmp_path / "ckpt", tmp_path / "data",
                                                           tmp_path, warmup=5, steps=20, cpu=cpu)
            accum = config.get("gradient_accumulation_steps", 1)
            assert warm % accum == 0 and warm >= 5
            assert config["max_steps"] * accum == window and window - warm >= 20
            if bench.variants[name].trainer != "transformers":
                assert config.get("model_name_or_path", config.get("model")) == str(tmp_path / "ckpt")
            assert "deepspeed" not in config  # one GPU


def test_variant_overrides_reach_nested_settings(tmp_path):
    name, overrides = variants.parse_variant("lf_ours:qwenvl_recipes.speedups.compile_language=true,"
                                             "per_device_train_batch_size=24", GROUNDING_7B)
    config, _, _ = variants.trainer_config(GROUNDING_7B, name, overrides, tmp_path / "ckpt", tmp_path / "data",
                                           tmp_path, warmup=5, steps=20, cpu=False)
    assert config["qwenvl_recipes"] == {"speedups": {"compile_vision": True, "compile_language": True}}
    assert config["per_device_train_batch_size"] == 24


@pytest.mark.parametrize("spec, worker_env, config_env", [
    ("lf_ours_24gib:ENV.PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
     {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, None),
    ("swift_ours_24gib:ENV.QVR_SPEEDUPS_SKIP_CUDNN_ATTENTION=false", {}, False),
])
def test_env_overrides_go_to_the_worker_for_llamafactory_and_to_the_env_block_for_swift(spec, worker_env, config_env,
                                                                                          tmp_path):
    name, overrides = variants.parse_variant(spec, GROUNDING_7B)
    config, _, _ = variants.trainer_config(GROUNDING_7B, name, overrides, tmp_path / "ckpt", tmp_path / "data",
                                           tmp_path, warmup=5, steps=20, cpu=False)
    trainer = GROUNDING_7B.variants[name].trainer
    assert variants.pop_worker_env(trainer, config) == worker_env
    assert "ENV" not in config if config_env is None else config["ENV"]["QVR_SPEEDUPS_SKIP_CUDNN_ATTENTION"] is False


@pytest.mark.parametrize("model_id", ["qwen2_5_vl_7b", "qwen3_vl_8b"])
def test_plainly_tuned_variant_is_the_fast_recipe_without_our_block(model_id, tmp_path):
    bench = variants.bench_of(model_id)
    args = dict(ckpt=tmp_path / "ckpt", data=tmp_path / "data", work=tmp_path, warmup=5, steps=20, cpu=False)
    lf_plain, _, _ = variants.trainer_config(bench, "lf_plain", {}, **args)
    lf_ours, _, _ = variants.trainer_config(bench, "lf_ours", {}, **args)
    assert "qwenvl_recipes" in lf_ours and "qwenvl_recipes" not in lf_plain
    assert {k: v for k, v in lf_ours.items() if k not in ("qwenvl_recipes", "output_dir")} == {
        k: v for k, v in lf_plain.items() if k != "output_dir"}
    # ms-swift: our features are the plugin, its callback and the ENV block's QVR_* settings
    swift_plain, _, _ = variants.trainer_config(bench, "swift_plain", {}, **args)
    swift_ours, _, _ = variants.trainer_config(bench, "swift_ours", {}, **args)
    assert swift_ours["external_plugins"] == ["custom_modules/integrations/swift_plugin.py"]
    assert swift_ours["callbacks"] == ["speedups"] and swift_ours["ENV"]["QVR_SPEEDUPS_COMPILE_VISION"] is True
    theirs = {k: v for k, v in swift_ours.items() if k not in ("external_plugins", "callbacks", "ENV", "output_dir")}
    assert theirs == {k: v for k, v in swift_plain.items() if k not in ("ENV", "output_dir")}
    assert swift_plain["ENV"] == {k: v for k, v in swift_ours["ENV"].items() if not k.startswith("QVR_")}


def test_random_checkpoint_loads_with_real_pixel_limits_and_is_reused(tmp_path):
    from transformers import AutoConfig, AutoProcessor

    from tools.model_configs import tiny_config
    from tools.random_checkpoint import REAL_PIXELS, build_random_checkpoint

    out = build_random_checkpoint("qwen2_5_vl_7b", tmp_path / "ckpt", config=tiny_config("qwen2_5_vl"), device="cpu")
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "qwen2_5_vl" and config.image_token_id == 151655
    processor = AutoProcessor.from_pretrained(out)
    size = processor.image_processor.size  # transformers 5 keeps the pixel limits as shortest/longest edge
    assert (size["shortest_edge"], size["longest_edge"]) == REAL_PIXELS["qwen2_5_vl"]
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    build_random_checkpoint("qwen2_5_vl_7b", out, config=tiny_config("qwen2_5_vl"), device="cpu")
    assert weights.stat().st_mtime_ns == before


def test_tiny_random_checkpoint_is_fp32(tmp_path):
    # CPU checks load it in LLaMA-Factory, which keeps a checkpoint's dtype on CPU (bf16 is emulated on many CPUs)
    from safetensors import safe_open

    from tools.random_checkpoint import main

    main(["--model", "qwen2_5_vl_7b", "--out", str(tmp_path / "tiny"), "--tiny", "--device", "cpu"])
    with safe_open(tmp_path / "tiny" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}
    assert json.loads((tmp_path / "tiny" / "random_checkpoint.json").read_text())["dtype"] == "float32"


def test_meter_measures_the_window_and_traces_the_steps_after_it(tmp_path):
    trace = tmp_path / "trace_x.json.gz"
    meter = worker.Meter(window=4, profile=2, trace_path=str(trace))
    model = torch.nn.Linear(3, 3)
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long),
             "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]])}
    meter.n_lm = meter.n_vis = 1
    meter.modes = {"lm": "lora", "vision": "frozen"}
    for step in range(7):
        meter.counts.append(records.batch_count_values(batch))
        loss = model(torch.randn(4, 3)).sum() * 0 + step
        loss.backward()
        meter.loss(loss)
        meter.step_end()
    record = meter.record(warmup=1)
    assert record["steps"] == 3 and record["samples"] == 6 and record["tokens"] == 30 and record["patches"] == 24
    assert record["losses"] == [0.0, 1.0, 2.0, 3.0]  # the window's micro-steps, warm-up included
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(e.get("name") == "aten::linear" for e in events)  # the two traced steps
    report = (tmp_path / "trace_x.txt").read_text()
    assert "no GPU kernels" in report and "aten::linear" in report  # CPU run: no gaps, the operator table


def test_bench_rows_hold_every_variant_in_one_epoch():
    from types import SimpleNamespace

    args = SimpleNamespace(warmup=5, steps=20, profile=2, cpu=False)
    # our batch-16 recipes run 27 optimizer steps of 16: the window must not cross an epoch boundary
    assert variants.rows_needed(GROUNDING_7B, ["seed", "lf_default", "lf_ours"], args) == 16 * 27
    assert variants.rows_needed(GROUNDING_7B, ["seed"], args) == 128
    with pytest.raises(ValueError, match="unknown variant"):
        variants.rows_needed(GROUNDING_7B, ["lf_fast"], args)


@pytest.mark.parametrize("timeout", [30, 2])
def test_a_variant_leaves_no_process_behind(timeout, tmp_path, monkeypatch):
    """What the worker started (the trainers' persistent data-loader workers) is stopped with it, also when the
    worker times out: left running, they compete with the next variant's start for host cores."""
    import time
    from pathlib import Path
    from types import SimpleNamespace

    pid_file = tmp_path / "child.pid"
    fake_python = tmp_path / "python"
    # argv: -m tools.bench worker SPEC; a child that outlives the worker, then the record (or a hang)
    fake_python.write_text(f"""#!/bin/sh
sleep 300 &
echo $! > {pid_file}
[ "$QVR_TEST_HANG" = 1 ] && sleep 300
exec {sys.executable} -c 'import json, sys; json.dump({{"samples_per_s": 1.0}}, open(json.load(open(sys.argv[1]))["record"], "w"))' "$4"
""")
    fake_python.chmod(0o755)
    monkeypatch.setenv("QVR_TEST_HANG", "1" if timeout == 2 else "0")
    args = SimpleNamespace(cpu=True, profile=0, out=str(tmp_path), warmup=1, steps=1, lf_python=str(fake_python),
                           lf_path=None, timeout=timeout)
    with open(tmp_path / "log", "w") as log:
        record = orchestrator.run_variant("seed", variants.bench_of("qwen2_vl_2b"), args, tmp_path / "ckpt",
                                          tmp_path / "data", tmp_path, log)
    assert record.get("error") == (f"timeout after {timeout}s" if timeout == 2 else None), record
    stat = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    for _ in range(50):  # SIGKILL is delivered asynchronously; a killed orphan is gone or a zombie ("Z")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{stat.parent.name}, started by the worker, is still running")


def test_a_terminated_run_stops_its_running_variant(tmp_path):
    """SIGTERM (`timeout` around a device command) ends the run and the variant's worker session with it: the
    worker runs in a session of its own, which would outlive the run and hold the GPU for the next command."""
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "child.pid"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    fake_python.chmod(0o755)
    script = (f"from pathlib import Path\nfrom tools.bench import orchestrator\n"
              f"orchestrator.prepare = lambda bench, args, work, rows: (work / 'ckpt', work / 'data')\n"
              f"orchestrator.main(['run', '--cpu', '--model', 'qwen2_vl_2b', '--variants', 'seed', '--out', "
              f"'{tmp_path}', '--work', '{tmp_path}', '--lf-python', '{fake_python}', '--timeout', '300'])\n")
    run = subprocess.Popen([sys.executable, "-c", script], cwd=variants.REPO_ROOT)
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    child = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 128 + signal.SIGTERM
    for _ in range(50):
        if not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{child.parent.name}, started by the variant's worker, outlived the terminated run")


def test_rounds_table_gives_each_variant_per_round_median_and_spread():
    rows = [dict(name="a", round=1, samples_per_s=10.0), dict(name="b", round=1, samples_per_s=8.0),
            dict(name="a", round=2, samples_per_s=12.0), dict(name="b", round=2, samples_per_s=None, error="exit 1"),
            dict(name="a", round=3, samples_per_s=11.0), dict(name="b", round=3, samples_per_s=9.0),
            dict(name="seed", samples_per_s=1.0)]  # an appended record of a run without rounds
    assert records.format_rounds(rows).splitlines() == [
        "| variant | round 1 | round 2 | round 3 | median samples/s | spread |",
        "|---|---|---|---|---|---|",
        "| a | 10.00 | 12.00 | 11.00 | 11.00 | 18.2% |",
        "| b | 8.00 | - | 9.00 | 8.50 | 11.8% |"]


def test_loss_gap_compares_block_means_with_the_first_variant_that_ran_the_same_batches():
    bf16 = [4.0] * 20 + [2.0] * 20 + [1.0] * 5  # the 5-step tail is no whole block: left out
    fp8 = [4.1] * 20 + [2.0] * 20 + [9.0] * 5
    rows = records.add_loss_gaps([
        dict(trainer="llamafactory", name="lf_ours", losses=bf16, batch_digest="a"),
        dict(trainer="ms-swift", name="swift_ours", losses=[3.0] * 40, batch_digest="a"),
        dict(trainer="llamafactory", name="lf_ours_fp8", losses=fp8, batch_digest="a"),
        dict(trainer="llamafactory", name="lf_plain", losses=fp8, batch_digest="b"),  # other batches: no reference
        dict(trainer="llamafactory", name="failed", error="exit 1")])
    assert [r.get("loss_gap") for r in rows] == [None, None, pytest.approx(0.025), None, None]
    assert rows[2]["loss_reference"] == "lf_ours" and "loss_reference" not in rows[1]
    table = records.format_losses(rows).splitlines()
    assert table[0] == "| trainer | variant | steps 1-20 | steps 21-40 | largest gap | reference |"
    assert table[2] == "| llamafactory | lf_ours | 4.0000 | 2.0000 | - | - |"
    assert table[4] == "| llamafactory | lf_ours_fp8 | 4.1000 | 2.0000 | 2.50% | lf_ours |"
    assert len(table) == 6 and records.format_losses([dict(trainer="x", name="y", losses=[1.0] * 19)]) == ""


def test_batch_digest_tells_apart_rows_and_batching():
    steps = [(16, 5000, 4096, 5200), (16, 5100, 4096, 5200)]
    assert worker.batch_digest(steps) == worker.batch_digest(list(steps))
    assert worker.batch_digest(steps) != worker.batch_digest(steps[::-1])
    assert worker.batch_digest(steps) != worker.batch_digest([(8, 2500, 2048, 2600)] * 4)


def test_report_keeps_the_loss_gap_but_not_the_curve(tmp_path):
    source = tmp_path / "bench_qwen2_5_vl_7b.json"
    source.write_text(json.dumps([dict(record("ours", 12.0), losses=[1.0] * 40, loss_gap=0.0)]))
    orchestrator.main(["report", str(source), "--docs", str(tmp_path)])
    (written,) = json.loads((tmp_path / "performance.json").read_text())
    assert written["loss_gap"] == 0.0 and "losses" not in written


def test_repeat_interleaves_the_variants(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(orchestrator, "prepare", lambda bench, args, work, rows: (tmp_path / "ckpt", tmp_path / "data"))
    monkeypatch.setattr(orchestrator, "run_variant", lambda spec, *a: order.append(spec) or dict(
        model="qwen2_vl_2b", trainer="llamafactory", variant="ours", name=spec, samples_per_s=float(len(order)),
        tokens_per_s=1.0, peak_gib=1.0, mfu=0.1, tokens_per_sample=1.0, padding_share=0.0, steps=1, wall_s=0,
        n_trainable=1, n_trainable_with_grad=1))
    orchestrator.main(["run", "--model", "qwen2_vl_2b", "--out", str(tmp_path), "--work", str(tmp_path), "--cpu",
                       "--repeat", "2", "--variants", "lf_ours", "swift_ours"])
    assert order == ["lf_ours", "swift_ours", "lf_ours", "swift_ours"]
    saved = json.loads((tmp_path / "bench_qwen2_vl_2b_caption.json").read_text())
    assert [r["round"] for r in saved] == [1, 1, 2, 2]
    assert "| lf_ours | 1.00 | 3.00 | 2.00 | 100.0% |" in (tmp_path / "bench_qwen2_vl_2b_caption.md").read_text()
    orchestrator.main(["run", "--model", "qwen2_vl_2b", "--out", str(tmp_path), "--work", str(tmp_path), "--cpu",
                       "--append", "--repeat", "2", "--variants", "lf_ours"])
    saved = json.loads((tmp_path / "bench_qwen2_vl_2b_caption.json").read_text())
    assert [r["round"] for r in saved] == [1, 1, 2, 2, 3, 4]  # appended rounds follow, none is overwritten
    assert "| lf_ours | 1.00 | 3.00 | 5.00 | 6.00 | 4.00 | 125.0% |" in (tmp_path / "bench_qwen2_vl_2b_caption.md").read_text()
    with pytest.raises(SystemExit):
        orchestrator.main(["run", "--model", "qwen2_vl_2b", "--out", str(tmp_path), "--repeat", "0"])


def test_unsloth_calls_follow_its_notebook_and_the_tuned_settings(tmp_path):
    args = dict(ckpt=tmp_path / "ckpt", data=tmp_path / "data", work=tmp_path, warmup=5, steps=20, cpu=False)
    notebook, warm, window = variants.trainer_config(GROUNDING_7B, "unsloth_default", {}, **args)
    assert (warm, window, notebook["max_steps"]) == (8, 28, 7)  # whole optimizer steps of 2 x 4
    calls = worker.unsloth_calls(notebook)
    assert calls["load"] == dict(model_name=str(tmp_path / "ckpt"), max_seq_length=2048, load_in_4bit=False,
                                 use_gradient_checkpointing="unsloth", local_files_only=True,
                                 use_exact_model_name=True)
    assert calls["peft"] == dict(finetune_vision_layers=False, finetune_language_layers=True,
                                 finetune_attention_modules=True, finetune_mlp_modules=True, r=64, lora_alpha=16,
                                 lora_dropout=0.0, bias="none", random_state=3407, use_gradient_checkpointing="unsloth")
    assert calls["collator"] == {"resize": "max"}  # images not shrunk to 512 px: the processor's limits apply
    assert calls["pixels"] == {"min_pixels": 3136, "max_pixels": 200704}  # the 7B recipes' limits
    assert calls["sft"] == dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, optim="adamw_8bit",
                                learning_rate=2e-4, warmup_steps=5, weight_decay=0.001, lr_scheduler_type="linear",
                                dataloader_num_workers=0, output_dir=str(tmp_path / "out" / "unsloth_default"),
                                max_steps=7, logging_steps=7, save_strategy="no", report_to="none", bf16=True,
                                gradient_checkpointing=True, remove_unused_columns=False, dataset_text_field="",
                                dataset_kwargs={"skip_prepare_dataset": True}, max_length=2048)
    tuned = worker.unsloth_calls(variants.trainer_config(GROUNDING_7B, "unsloth_tuned", {}, **args)[0])
    assert tuned["load"]["use_gradient_checkpointing"] is False and tuned["peft"]["use_gradient_checkpointing"] is False
    assert {k: tuned["sft"][k] for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                         "dataloader_num_workers", "gradient_checkpointing", "max_steps")} == dict(
        per_device_train_batch_size=16, gradient_accumulation_steps=1, dataloader_num_workers=8,
        gradient_checkpointing=False, max_steps=25)


FORGERY_7B = variants.BENCHES["qwen2_5_vl_7b", "forgery"]


@pytest.mark.parametrize("cpu", [False, True])
def test_forgery_recipes_read_the_bench_head_and_evaluate_nothing(cpu, tmp_path):
    args = dict(ckpt=tmp_path / "ckpt", data=tmp_path / "data", work=tmp_path, warmup=5, steps=20, cpu=cpu)
    lf, _, _ = variants.trainer_config(FORGERY_7B, "lf_t4", {}, **args)
    block = lf["qwenvl_recipes"]["forgery"]
    assert block["head_checkpoint"] == str(tmp_path / "forgery_head") and block["eval_file"] is None
    swift, _, _ = variants.trainer_config(FORGERY_7B, "swift_t5", {}, **args)
    assert swift["ENV"]["QVR_FORGERY_HEAD_CHECKPOINT"] == str(tmp_path / "forgery_head")
    assert swift["ENV"]["QVR_FORGERY_EVAL_FILE"] == "null"  # exported as text, read back as YAML: None
    t1, _, _ = variants.trainer_config(FORGERY_7B, "lf_t1", {}, **args)
    assert "head_checkpoint" not in t1["qwenvl_recipes"]["forgery"]  # only the frozen-head modes load one
    seed, _, _ = variants.trainer_config(FORGERY_7B, "seed_t3", {}, **args)
    assert seed["qwenvl_recipes"]["forgery"]["mode"] == "hybrid" and (seed["lora_rank"], seed["lora_alpha"]) == (16, 32)
    for name in ("lf_t3", "swift_t5"):  # the LM modes' recipes carry T1's levers, with their own settings
        fast, _, _ = variants.trainer_config(FORGERY_7B, name, {}, **args)
        assert (fast["per_device_train_batch_size"], fast["gradient_accumulation_steps"]) == (16, 1)
        assert not fast.get("gradient_checkpointing") and fast["use_liger_kernel"] is not cpu
        if name.startswith("lf"):
            assert fast["disable_gradient_checkpointing"] and "compile_vision" in fast["qwenvl_recipes"]["speedups"]
            assert fast["qwenvl_recipes"]["forgery"]["mode"] == "hybrid"
        else:
            assert fast["callbacks"] == ["forgery", "speedups"] and fast["ENV"]["QVR_SPEEDUPS_COMPILE_VISION"]
            assert fast["ENV"]["QVR_FORGERY_MODE"] == "frozen_head_hybrid"
    for name in ("lf_t4", "swift_t4"):  # the frozen-head ViT mode at T1's levers too
        t4, _, _ = variants.trainer_config(FORGERY_7B, name, {}, **args)
        assert (t4["per_device_train_batch_size"], t4["gradient_accumulation_steps"]) == (16, 1)
        assert not t4.get("gradient_checkpointing") and t4["dataloader_num_workers"] == (2 if cpu else 8)
        if name.startswith("lf"):
            assert t4["qwenvl_recipes"]["speedups"]["compile_vision"]
        else:
            assert t4["ENV"]["QVR_SPEEDUPS_COMPILE_VISION"]
    seed_t1, _, _ = variants.trainer_config(FORGERY_7B, "seed_t1", {}, **args)
    assert list(seed_t1["qwenvl_recipes"]) == ["forgery"]  # the T1 recipe's speed-ups are not the seed's loop's
    if cpu:  # the tiny ViT's two blocks in place of 7/15/23/31, in the head and the LoRA targets
        assert block["head_blocks"] == [0, 1] and seed["qwenvl_recipes"]["forgery"]["head_blocks"] == [0, 1]
        assert lf["lora_target"] == ",".join(f"blocks.{b}.{m}" for b in (0, 1) for m in (
            "attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
        assert swift["target_regex"].startswith(r"^(.*\.)?(blocks\.0\.attn\.qkv|") and "self_attn\\.q_proj" in swift[
            "target_regex"]
    else:
        assert block["head_blocks"] == [7, 15, 23, 31] and "blocks.31.mlp.down_proj" in lf["lora_target"]


def test_forgery_plainly_tuned_trainer_is_the_t2_recipe_without_our_plugin(tmp_path):
    args = dict(ckpt=tmp_path / "ckpt", data=tmp_path / "data", work=tmp_path, warmup=5, steps=20, cpu=False)
    lf, _, _ = variants.trainer_config(FORGERY_7B, "lf_plain", {}, **args)
    assert "qwenvl_recipes" not in lf and lf["lora_target"] == "self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,self_attn.o_proj"
    assert (lf["per_device_train_batch_size"], lf["gradient_accumulation_steps"], lf["use_liger_kernel"],
            lf["disable_gradient_checkpointing"], lf["gradient_checkpointing"]) == (16, 1, True, True, False)
    swift, _, _ = variants.trainer_config(FORGERY_7B, "swift_plain", {}, **args)
    # without our plugin its template does not exist: the family's own, and no forgery callback or settings
    assert (swift["model_type"], swift["template"]) == ("qwen2_5_vl", "qwen2_5_vl")
    assert "external_plugins" not in swift and "callbacks" not in swift
    assert not [k for k in swift["ENV"] if k.startswith("QVR_")]


def test_microscopy_8b_runs_on_one_gpu_and_report_recipes_read_a_random_encoder(tmp_path):
    args = dict(ckpt=tmp_path / "ckpt", data=tmp_path / "data", work=tmp_path, warmup=5, steps=20, cpu=False)
    micro = variants.BENCHES["qwen3_vl_8b", "microscopy"]
    lf, _, _ = variants.trainer_config(micro, "lf_ours", {}, **args)
    assert "deepspeed" not in lf and lf["per_device_train_batch_size"] == 2  # the recipe's per-GPU batch
    assert variants.trainer_config(micro, "swift_plain", {}, **args)[0]["per_device_train_batch_size"] == 2
    report = variants.BENCHES["qwen3_vl_4b", "report"]
    stage2, _, _ = variants.trainer_config(report, "lf_stage2", {}, **args)
    encoder = stage2["qwenvl_recipes"]["vision_encoder"]
    assert encoder["encoder_path"] == str(tmp_path / "encoder") and encoder["merger_path"] is None
    swift, _, _ = variants.trainer_config(report, "swift_stage2_tuned", {}, **args)
    assert swift["ENV"]["QVR_VISION_ENCODER_ENCODER_PATH"] == str(tmp_path / "encoder")
    assert swift["ENV"]["QVR_VISION_ENCODER_MERGER_PATH"] == "null"
    assert swift["model_type"] == "qwen3_vl_vision_encoder" and swift["per_device_train_batch_size"] == 4
    assert swift["gradient_checkpointing"] is False and swift["use_liger_kernel"] is True
    fast, _, _ = variants.trainer_config(report, "swift_stage2_fast", {}, **args)
    assert fast["callbacks"] == ["vision_encoder_save", "speedups"]
    assert fast["ENV"]["QVR_VISION_ENCODER_MERGER_PATH"] == "null"
    assert "speedups" in variants.trainer_config(report, "lf_stage2_fast", {}, **args)[0]["qwenvl_recipes"]
    report_8b = variants.BENCHES["qwen3_vl_8b", "report"]
    assert variants.trainer_config(report_8b, "lf_stage2_tuned", {}, **args)[0]["per_device_train_batch_size"] == 2
    assert "lf_stage2_fast" not in report_8b.variants  # no 8B fast recipe yet


def test_fp8_variant_switches_fp8_on_and_gets_torchao(tmp_path):
    from types import SimpleNamespace

    config, _, _ = variants.trainer_config(GROUNDING_7B, "lf_ours_fp8", {}, tmp_path / "ckpt", tmp_path / "data",
                                           tmp_path, warmup=5, steps=20, cpu=False)
    assert (config["fp8"], config["fp8_backend"]) == (True, "torchao") and "qwenvl_recipes" in config
    args = SimpleNamespace(lf_python="py-lf", lf_path="/w/site-lf:/w/site-common", fp8_path="/w/site-fp8",
                           swift_python="py-swift", swift_path="/w/site-swift", unsloth_python="py", unsloth_path="/u")
    assert orchestrator.worker_python("llamafactory", config, args) == (
        "py-lf", "/w/site-fp8:/w/site-lf:/w/site-common")
    assert orchestrator.worker_python("llamafactory", {}, args) == ("py-lf", "/w/site-lf:/w/site-common")
    assert orchestrator.worker_python("unsloth", {}, args) == ("py", "/u")


def test_install_wheels_installs_each_set_once_and_gives_each_trainer_its_path(tmp_path, monkeypatch):
    for folder, name in (("whl", "common"), ("whl", "lf"), ("whl", "swift"), ("whl-unsloth", "unsloth")):
        (tmp_path / folder / name).mkdir(parents=True)
        (tmp_path / folder / name / f"{name}-1.0-py3-none-any.whl").write_text("")
    installs = []

    def pip(command, check):  # installs the wheels named last into --target
        Path(command[command.index("--target") + 1]).mkdir(parents=True)
        installs.extend(command[command.index("--target") + 2:])

    monkeypatch.setattr(orchestrator.subprocess, "run", pip)
    site = tmp_path / "work"
    paths = orchestrator.install_wheels([tmp_path / "whl", tmp_path / "whl-unsloth"], site)
    assert paths == {"llamafactory": f"{site}/site-lf:{site}/site-common", "ms-swift": f"{site}/site-swift:{site}/site-common",
                     "unsloth": f"{site}/site-unsloth"}  # no fp8 set: LLaMA-Factory's fp8 variant has no torchao
    assert sorted(Path(p).name for p in installs) == ["common-1.0-py3-none-any.whl", "lf-1.0-py3-none-any.whl",
                                                      "swift-1.0-py3-none-any.whl", "unsloth-1.0-py3-none-any.whl"]
    installs.clear()  # a second command on the same machine: the sets are there already
    assert orchestrator.install_wheels([tmp_path / "whl-unsloth"], site) == {"unsloth": f"{site}/site-unsloth"}
    assert installs == []
    (tmp_path / "whl-unsloth" / "unsloth" / "trl-2.0-py3-none-any.whl").write_text("")  # another set: reinstalled
    orchestrator.install_wheels([tmp_path / "whl-unsloth"], site)
    assert sorted(Path(p).name for p in installs) == ["trl-2.0-py3-none-any.whl", "unsloth-1.0-py3-none-any.whl"]


class TinyTower(torch.nn.Module):
    """Module names of a Qwen VL model: `model.visual`, `model.language_model`; the LM runs when `lm` is on."""

    def __init__(self, lm: bool, encoder_adapter: bool = False):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.visual = torch.nn.Linear(2, 2)
        self.model.language_model = torch.nn.Linear(2, 2)
        if encoder_adapter:  # custom_modules.vision_encoder's adapter: one token per merge_size**2 grid cells
            self.model.visual.tokens_per_image, self.model.visual.spatial_merge_size = 16, 2
        self.lm = lm

    def forward(self, x):
        x = self.model.visual(x)
        return self.model.language_model(x) if self.lm else x


@pytest.mark.parametrize("lm, adapter, images_per_sample, expected", [
    (True, False, 1, dict(lm="lora", samples=4, patches=32)),
    (False, False, 1, dict(lm="not_run", samples=4, patches=32)),  # the forgery head's ViT-only modes
    (True, True, 2, dict(lm="lora", samples=2, patches=8)),  # two images a sample; the encoder's own tokens
])
def test_meter_reads_how_the_step_runs_the_model(lm, adapter, images_per_sample, expected, monkeypatch):
    monkeypatch.setattr(worker, "count_params", lambda model: (10, 2))
    monkeypatch.setattr(worker, "training_mode", lambda named, prefix: "lora" if "language" in prefix else "frozen")
    meter = worker.Meter(window=2, images_per_sample=images_per_sample)
    model = TinyTower(lm, adapter)
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "image_grid_thw": torch.tensor([[1, 2, 2]] * 4)}
    for _ in range(2):
        meter.count(model, batch)
        model(torch.randn(3, 2)).sum().backward()
        meter.check_grads(model)
        meter.step_end()
    record = meter.record(warmup=1)
    assert record["trained"]["lm"] == expected["lm"]
    assert (record["samples"], record["patches"]) == (expected["samples"], expected["patches"] // 2)
    tokens_flops = 0 if expected["lm"] == "not_run" else 4 * 10 * record["tokens"]
    assert record["mfu"] == pytest.approx(mfu(tokens_flops + 2 * 2 * record["patches"], record["seconds"]))
