"""The worker side of the benchmark: one variant per process, in that trainer's environment. It runs the trainer
(or the seed loop) with a meter that times each micro-step and counts its tokens and patches."""

from __future__ import annotations

import functools
import hashlib
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
    `profile` micro-steps after the window are traced with torch.profiler into `trace_path` (chrome trace, gzip).
    Each micro-step's loss is kept as the trainer returns it (detached, on the device) and read back in `record()`,
    so an A/B of numerics (FP8) compares the two loss curves of one job."""

    def __init__(self, window: int | None = None, profile: int = 0, trace_path: str | None = None,
                 images_per_sample: int = 1):
        self.step_ends, self.counts, self.losses = [], [], []
        self.n_lm = self.n_vis = self.n_trainable = self.n_with_grad = self.modes = None
        self.window, self.profile, self.trace_path, self.profiler = window, profile, trace_path, None
        self.images_per_sample, self.patches_per_grid_cell = images_per_sample, 1.0
        self.lm_calls, self.lm_hook = 0, None

    def count(self, model, inputs):
        self.counts.append(batch_count_values(inputs, self.images_per_sample))
        if self.n_lm is None:
            self.n_lm, self.n_vis = count_params(model)
            named = list(model.named_parameters())
            self.modes = {"lm": training_mode(named, ".language_model."),
                          "vision": training_mode(named, ".visual.blocks.")}
            modules = dict(model.named_modules())
            # Whether the step runs the LM at all (the forgery head's ViT-only modes do not), seen on the first
            # micro-step: the hook is removed after it.
            language_model = next(m for name, m in modules.items() if name.endswith("language_model"))
            self.lm_hook = language_model.register_forward_pre_hook(self.lm_called)
            # A custom encoder behind Qwen3-VL's visual API announces merge_size**2 grid cells per token it runs
            # (custom_modules/vision_encoder/adapter.py).
            visual = next(m for name, m in modules.items() if name.endswith("visual"))
            if hasattr(visual, "tokens_per_image"):
                self.patches_per_grid_cell = 1 / visual.spatial_merge_size ** 2

    def loss(self, value):
        self.losses.append(value.detach())

    def lm_called(self, module, args):
        self.lm_calls += 1

    def check_grads(self, model):
        """After the first backward: how many trainable tensors got a gradient (catches checkpointing that
        silently cuts LoRA out of the graph), and whether the LM ran."""
        if self.n_trainable is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            self.n_trainable = sum(p.numel() for p in trainable)
            self.n_with_grad = sum(p.numel() for p in trainable if p.grad is not None)
            self.lm_hook.remove()
            if not self.lm_calls:
                self.modes["lm"] = "not_run"

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

        counts = [(samples, tokens, round(patches * self.patches_per_grid_cell), positions)
                  for samples, tokens, patches, positions in (map(int, c) for c in self.counts[:self.window])]
        rates = summarise(self.step_seconds(), counts, warmup)
        cuda = torch.cuda.is_available()
        flops = step_flops(self.n_lm, self.n_vis, rates["tokens"], rates["patches"], **self.modes)
        losses = torch.stack(self.losses[:self.window]).float().tolist() if self.losses else []
        return dict(rates, losses=losses, batch_digest=batch_digest(counts), n_lm=self.n_lm, n_vis=self.n_vis,
                    n_trainable=self.n_trainable, n_trainable_with_grad=self.n_with_grad, trained=self.modes,
                    mfu=mfu(flops, rates["seconds"]),
                    peak_gib=torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
                    peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
                    device=torch.cuda.get_device_name(0) if cuda else "cpu",
                    tokens_per_sample=rates["tokens"] / max(rates["samples"], 1),
                    patches_per_sample=rates["patches"] / max(rates["samples"], 1))


def batch_digest(counts: list[tuple]) -> str:
    """A digest of the micro-steps' (samples, tokens, patches, positions): equal for two variants that saw the same
    rows batched the same way, so their loss curves can be compared step by step."""
    return hashlib.sha1(repr(counts).encode()).hexdigest()[:12]


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
            meter.loss(loss)
            meter.check_grads(model)
            return loss

        self.training_step = counted_training_step

    Trainer.__init__ = init


def run_trainer(trainer: str, config_path: Path) -> None:
    """Run the recipe as its header's Run line does, in this process: `qvr-llamafactory train` for a LLaMA-Factory
    recipe with a `qwenvl_recipes` block, else `llamafactory-cli train`; `swift sft` (a swift recipe names its
    plugins itself, in external_plugins)."""
    if trainer == "unsloth":
        run_unsloth(yaml.safe_load(config_path.read_text()))
    elif trainer == "llamafactory" and CUSTOM_KEY in yaml.safe_load(config_path.read_text()):
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


def pixel_limited(processor, ckpt: Path, min_pixels: int, max_pixels: int):
    """`processor` with an image processor of the checkpoint that resizes to the recipes' pixel limits (the random
    checkpoints carry the published processors' limits, far above what the recipes train on)."""
    processor.image_processor = type(processor.image_processor).from_pretrained(ckpt, min_pixels=min_pixels,
                                                                                max_pixels=max_pixels)
    return processor


def encode_batch(processor, rows: list[dict], device: str):
    """(model inputs, labels) of converter rows, as a plain loop builds them: the chat template (a row's `<image>`
    tags as image parts), the processor, padding masked out of the labels."""
    from PIL import Image

    from eval.infer import chat_messages

    texts = [processor.apply_chat_template(chat_messages(r["messages"]), tokenize=False) for r in rows]
    images = [Image.open(path).convert("RGB") for r in rows for path in r["images"]]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(device)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.tokenizer.pad_token_id, -100)
    return inputs, labels


def encoded(processor, rows: list[dict]) -> dict:
    """encode_batch's inputs and labels as one batch (on the host: the loop moves it)."""
    inputs, labels = encode_batch(processor, rows, "cpu")
    return dict(inputs, labels=labels)


def lm_loop_setup(config: dict, ckpt: Path, dtype):
    """The seed recipes' loop: LoRA on the LM (config["lora"]), gradient checkpointing, the processor called on
    each batch."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = pixel_limited(AutoProcessor.from_pretrained(ckpt), ckpt, config["min_pixels"], config["max_pixels"])
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(**config["lora"]))
    params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return model, params, lambda rows: encoded(processor, rows)


def forgery_loop_setup(config: dict, ckpt: Path, dtype):
    """The seed study's forgery loop (tools/forgery_loop.py's batches): the mode's LoRA and head from the recipe's
    settings, the forgery collator."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from custom_modules.forgery.data import Collator
    from custom_modules.forgery.lora import prepare_model
    from custom_modules.forgery.settings import parse_settings

    settings = parse_settings(config[CUSTOM_KEY]["forgery"])
    processor = pixel_limited(AutoProcessor.from_pretrained(ckpt), ckpt, config["min_pixels"], config["max_pixels"])
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, modules = prepare_model(model, settings, processor.tokenizer, lora_rank=config["lora_rank"],
                                   lora_alpha=config["lora_alpha"])
    params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return model, params, Collator(processor, settings.mask_size, with_answer=modules.spec.lm)


def vision_encoder_loop_setup(config: dict, ckpt: Path, dtype):
    """The custom encoder's stage 2 in a plain loop: encoder + merger in place of the ViT, LoRA on the LM and the
    merger trained whole, the stage's learning rates."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from custom_modules.vision_encoder.adapter import qwen3_vl_core
    from custom_modules.vision_encoder.processing import attach_image_processor
    from custom_modules.vision_encoder.settings import parse_settings
    from custom_modules.vision_encoder.training import apply_stage, param_groups, prepare_model

    settings = parse_settings(config[CUSTOM_KEY]["vision_encoder"])
    model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    prepare_model(model, settings)
    processor = attach_image_processor(AutoProcessor.from_pretrained(ckpt), settings,
                                       qwen3_vl_core(model).visual.spatial_merge_size)
    if config["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=config["lora_rank"], lora_alpha=config["lora_alpha"],
                                             lora_dropout=config["lora_dropout"],
                                             target_modules=config["lora_target"].split(","), modules_to_save=["merger"]))
    apply_stage(model, settings)
    return model, param_groups(model, settings, config["learning_rate"]), lambda rows: encoded(processor, rows)


SEED_LOOPS = {"lm": lm_loop_setup, "forgery": forgery_loop_setup, "vision_encoder": vision_encoder_loop_setup}


def seed_loop(config: dict, ckpt: Path, data: Path, meter: Meter, cpu: bool = False) -> None:
    """A seed's own way of training its family, in plain PyTorch: the loop `config["loop"]` sets the model up,
    then AdamW over `max_steps` batches of `per_device_train_batch_size` rows, one optimizer step each."""
    import torch

    device = "cpu" if cpu else "cuda"
    model, params, collate = SEED_LOOPS[config["loop"]](config, ckpt, torch.float32 if cpu else torch.bfloat16)
    model.to(device).train()
    optimizer = torch.optim.AdamW(params, lr=config["learning_rate"])
    rows = json.loads((data / "bench_train.json").read_text())
    batch_size = config["per_device_train_batch_size"]
    for step in range(config["max_steps"]):
        batch = [rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)]
        inputs = {k: v.to(device) for k, v in collate(batch).items()}
        meter.count(model, inputs)
        loss = model(**inputs).loss
        loss.backward()
        meter.loss(loss)
        meter.check_grads(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end()


# trl SFTConfig fields a bench config of Unsloth's variants carries as they are.
UNSLOTH_SFT_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "optim", "learning_rate",
                    "warmup_steps", "weight_decay", "lr_scheduler_type", "dataloader_num_workers", "output_dir",
                    "max_steps", "logging_steps", "save_strategy", "report_to", "bf16")


def unsloth_calls(config: dict) -> dict:
    """The keyword arguments of Unsloth's calls for a bench config (variants.UNSLOTH_NOTEBOOK, UNSLOTH_TUNED):
    `load` FastVisionModel.from_pretrained (bf16 weights: 16-bit LoRA), `peft` FastVisionModel.get_peft_model
    (LoRA on the LM's attention and MLP, vision frozen), `collator` UnslothVisionDataCollator (images kept whole:
    its default "min" resize shrinks images wider than 512 px below the recipes' limits), `pixels` the
    processor's limits (the recipes'), `sft` trl's SFTConfig (Unsloth's vision recipe: the collator builds the
    batches, trl prepares no dataset; trl's own gradient checkpointing follows Unsloth's switch)."""
    checkpointing = config["use_gradient_checkpointing"]
    return {
        "load": dict(model_name=config["model"], max_seq_length=config["max_seq_length"], load_in_4bit=False,
                     use_gradient_checkpointing=checkpointing, local_files_only=True, use_exact_model_name=True),
        "peft": dict(finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
                     finetune_mlp_modules=True, r=config["lora_rank"], lora_alpha=config["lora_alpha"],
                     lora_dropout=config["lora_dropout"], bias="none", random_state=3407,
                     use_gradient_checkpointing=checkpointing),
        "collator": dict(resize="max"),
        "pixels": dict(min_pixels=config["min_pixels"], max_pixels=config["max_pixels"]),
        "sft": dict({k: config[k] for k in UNSLOTH_SFT_KEYS if k in config}, gradient_checkpointing=bool(checkpointing),
                    remove_unused_columns=False, dataset_text_field="", dataset_kwargs={"skip_prepare_dataset": True},
                    max_length=config["max_seq_length"]),
    }


def import_unsloth() -> None:
    """Import Unsloth before anything imports transformers' Trainer (it patches transformers, peft and trl as it
    is imported, as its notebooks do first)."""
    try:
        import unsloth  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"unsloth variants need Unsloth's wheel set: run tools/prepare_gpu_wheels.sh here and pass "
                         f"--wheels .whl-unsloth there ({error})") from None


def run_unsloth(config: dict) -> None:
    """Unsloth's own vision fine-tuning path, as its notebooks run it: FastVisionModel, its LoRA, its collator,
    trl's SFTTrainer; the rows are the benchmark's, each image a path the collator opens."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastVisionModel
    from unsloth.trainer import UnslothVisionDataCollator

    from eval.infer import chat_messages

    calls = unsloth_calls(config)
    model, processor = FastVisionModel.from_pretrained(**calls["load"])
    pixel_limited(processor, Path(config["model"]), **calls["pixels"])
    model = FastVisionModel.get_peft_model(model, **calls["peft"])
    FastVisionModel.for_training(model)
    # trl's SFTTrainer takes a datasets.Dataset (1.x refuses a list); the collator drops the None keys Arrow adds
    # to the content parts
    rows = Dataset.from_list([{"messages": chat_messages(r["messages"]), "images": r["images"]}
                              for r in json.loads(Path(config["dataset"]).read_text())])
    trainer = SFTTrainer(model=model, processing_class=processor, train_dataset=rows,
                         data_collator=UnslothVisionDataCollator(model, processor, **calls["collator"]),
                         args=SFTConfig(**calls["sft"]))
    trainer.train()


def worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    meter = Meter(spec["window"], spec["profile"], spec["trace"], spec["images_per_sample"])
    config = yaml.safe_load(Path(spec["config"]).read_text())

    def write_record():
        Path(spec["record"]).write_text(json.dumps(meter.record(spec["warmup"])))

    if spec["trainer"] == "transformers":
        seed_loop(config, Path(spec["ckpt"]), Path(spec["data"]), meter, cpu=spec["cpu"])
        write_record()
        return

    def record_and_exit():
        # The figures are complete when the loop ends; saving the adapter and the trainers' teardown (over a
        # minute for LLaMA-Factory with persistent loader workers on the GPU machine) are not part of the benchmark.
        write_record()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    if spec["trainer"] == "unsloth":
        import_unsloth()
    install_meter(meter, record_and_exit)
    run_trainer(spec["trainer"], Path(spec["config"]))
    raise RuntimeError(f"{spec['trainer']} returned without ending its training loop")
