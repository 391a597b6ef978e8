"""The worker side of the benchmark: one variant per process, in that trainer's environment. It runs the trainer
(or the seed loop) with a meter that times each micro-step and counts its tokens and patches."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from custom_modules.recipe_keys import BLOCK_KEY as CUSTOM_KEY
from tools.bench.records import GIB, batch_count_values, count_params, summarise
from tools.mfu import mfu, step_flops, training_mode

class Meter:
    """Micro-step end times and (samples, tokens, patches, positions) counts, plus the model facts the record needs:
    parameter counts and how the LM and the vision blocks are trained (tools.mfu.training_mode).

    Nothing here synchronises the host with the GPU inside the run (a sync would let the GPU idle while the host
    prepares the next step, which the trainers otherwise overlap): on a GPU each micro-step's end is a CUDA event
    and the counts stay on the device until `record()`. With `window` set, micro-steps after it are not measured;
    `profile` micro-steps after the window are traced with torch.profiler into `trace_path` (chrome trace, gzip)."""

    def __init__(self, window: int | None = None, profile: int = 0, trace_path: str | None = None):
        self.step_ends, self.counts = [], []
        self.n_lm = self.n_vis = self.n_trainable = self.n_with_grad = self.modes = None
        self.window, self.profile, self.trace_path, self.profiler = window, profile, trace_path, None

    def count(self, model, inputs):
        self.counts.append(batch_count_values(inputs))
        if self.n_lm is None:
            self.n_lm, self.n_vis = count_params(model)
            named = list(model.named_parameters())
            self.modes = {"lm": training_mode(named, ".language_model."),
                          "vision": training_mode(named, ".visual.blocks.")}

    def check_grads(self, model):
        """After the first backward: how many trainable tensors got a gradient (catches checkpointing that
        silently cuts LoRA out of the graph)."""
        if self.n_trainable is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            self.n_trainable = sum(p.numel() for p in trainable)
            self.n_with_grad = sum(p.numel() for p in trainable if p.grad is not None)

    def step_end(self):
        import torch

        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.step_ends.append(event)
        else:
            self.step_ends.append(time.perf_counter())
        done = len(self.step_ends)
        if self.profile and done == self.window:
            self.profiler = torch.profiler.profile(activities=profiler_activities())
            self.profiler.start()
        elif self.profiler is not None and done == self.window + self.profile:
            self.profiler.stop()
            write_trace(self.profiler, Path(self.trace_path))
            self.profiler = None

    def step_seconds(self) -> list[float]:
        """Micro-step end times in seconds (on a GPU: from the first event, after waiting for the last)."""
        import torch

        ends = self.step_ends[:self.window]
        if ends and not isinstance(ends[0], float):
            torch.cuda.synchronize()
            return [ends[0].elapsed_time(e) / 1e3 for e in ends]
        return ends

    def record(self, warmup: int) -> dict:
        import torch

        counts = [tuple(int(v) for v in c) for c in self.counts[:self.window]]
        rates = summarise(self.step_seconds(), counts, warmup)
        cuda = torch.cuda.is_available()
        flops = step_flops(self.n_lm, self.n_vis, rates["tokens"], rates["patches"], **self.modes)
        return dict(rates, n_lm=self.n_lm, n_vis=self.n_vis, n_trainable=self.n_trainable,
                    n_trainable_with_grad=self.n_with_grad, trained=self.modes, mfu=mfu(flops, rates["seconds"]),
                    peak_gib=torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
                    peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
                    device=torch.cuda.get_device_name(0) if cuda else "cpu",
                    tokens_per_sample=rates["tokens"] / max(rates["samples"], 1),
                    patches_per_sample=rates["patches"] / max(rates["samples"], 1))


def profiler_activities():
    import torch
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def write_trace(profiler, path: Path) -> None:
    """The profiler's chrome trace, gzipped, and the GPU idle-gap report of tools.gpu_gaps beside it (.txt)."""
    import gzip

    import torch

    from qwenvl_recipes.io import atomic_open, write_text_atomic
    from tools.gpu_gaps import analyse, format_report

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        profiler.export_chrome_trace(str(raw))
        data = raw.read_bytes()
    with atomic_open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as gz:
        gz.write(data)
    trace = json.loads(data)
    averages = profiler.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)
    if torch.cuda.is_available():  # where the GPU's own time goes, beside the host's
        table += "\n\n" + averages.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=70)
    try:
        gaps = format_report(analyse(trace))
    except ValueError as error:  # a CPU run has no kernels
        gaps = str(error)
    write_text_atomic(path.with_suffix("").with_suffix(".txt"), f"{gaps}\n\n{table}\n")


def install_meter(meter: Meter, on_train_end) -> None:
    """Make every transformers Trainer built from now on feed `meter` (both trainers subclass it), and call
    `on_train_end()` when its training loop ends."""
    from transformers import Trainer, TrainerCallback

    class StepTimer(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_train_end(self, args, state, control, **kwargs):
            on_train_end()

    original_init = Trainer.__init__

    @functools.wraps(original_init)  # ms-swift inspects the signature (tokenizer vs processing_class)
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepTimer())
        training_step = self.training_step

        def counted_training_step(model, inputs, *rest, **kw):
            meter.count(model, inputs)
            loss = training_step(model, inputs, *rest, **kw)
            meter.check_grads(model)
            return loss

        self.training_step = counted_training_step

    Trainer.__init__ = init


def run_trainer(trainer: str, config_path: Path) -> None:
    """Run the recipe as its header's Run line does, in this process: `qvr-llamafactory train` for a LLaMA-Factory
    recipe with a `qwenvl_recipes` block, else `llamafactory-cli train`; `swift sft` (a swift recipe names its
    plugins itself, in external_plugins)."""
    if trainer == "llamafactory" and CUSTOM_KEY in yaml.safe_load(config_path.read_text()):
        from custom_modules.integrations.llamafactory_cli import main as qvr_llamafactory

        qvr_llamafactory(["train", str(config_path)])
    elif trainer == "llamafactory":
        from llamafactory.cli import main as lf_main

        sys.argv = ["llamafactory-cli", "train", str(config_path)]
        lf_main()
    else:
        from swift.cli.main import parse_yaml_args
        from swift.pipelines import sft_main

        argv = [str(config_path)]
        parse_yaml_args(argv)
        sft_main(argv)


# The seed recipe's adapter: LoRA r64 on the language model's seven projections.
SEED_LORA = dict(r=64, lora_alpha=16, lora_dropout=0.05,
                 target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")


def encode_batch(processor, rows: list[dict], device: str):
    """(model inputs, labels) of benchmark rows, as a plain loop builds them: the chat template, the processor,
    padding masked out of the labels."""
    from PIL import Image

    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"},
                                      {"type": "text", "text": r["messages"][0]["content"][len("<image>"):]}]},
         {"role": "assistant", "content": [{"type": "text", "text": r["messages"][1]["content"]}]}],
        tokenize=False) for r in rows]
    images = [Image.open(r["images"][0]).convert("RGB") for r in rows]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(device)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.tokenizer.pad_token_id, -100)
    return inputs, labels


def seed_loop(ckpt: Path, data: Path, meter: Meter, total_steps: int, batch_size: int = 2, cpu: bool = False):
    """The seed-style plain transformers loop: LoRA r64/alpha16/dropout0.05 on the LM's linear layers, gradient
    checkpointing, AdamW, the processor called on each batch in the loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = "cpu" if cpu else "cuda"
    dtype = torch.float32 if cpu else torch.bfloat16
    processor = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa").to(device)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(**SEED_LORA))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = json.loads((data / "bench_train.json").read_text())
    for step in range(total_steps):
        batch = [rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)]
        inputs, labels = encode_batch(processor, batch, device)
        meter.count(model, inputs)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        meter.check_grads(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end()


def worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    meter = Meter(spec["window"], spec["profile"], spec["trace"])

    def write_record():
        Path(spec["record"]).write_text(json.dumps(meter.record(spec["warmup"])))

    if spec["trainer"] == "transformers":
        seed_loop(Path(spec["ckpt"]), Path(spec["data"]), meter, spec["window"] + spec["profile"], cpu=spec["cpu"])
        write_record()
        return

    def record_and_exit():
        # The figures are complete when the loop ends; saving the adapter and the trainers' teardown (over a
        # minute for LLaMA-Factory with persistent loader workers on the GPU machine) are not part of the benchmark.
        write_record()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    install_meter(meter, record_and_exit)
    run_trainer(spec["trainer"], Path(spec["config"]))
    raise RuntimeError(f"{spec['trainer']} returned without ending its training loop")
