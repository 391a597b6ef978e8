"""Training speed benchmark: seed loop vs the trainers' own example settings vs our recipes, in one job.

On the GPU machine, with full-size model configs and random weights (tools/random_checkpoint.py, no download),
data shaped like users' data (tools/bench_data.py: COCO's mix of image sizes, the task's range of text lengths;
`--data ideal` for the fixed-square best case, labelled so) and each variant run in its own process, it measures
steady-state samples/s, tokens/s, the padded share of the batches, peak GiB and MFU over >= 20 micro-steps after
warm-up, and prints one table with ratios to the seed loop, the faster trainer example and the faster plainly
tuned trainer.

    tools/prepare_gpu_wheels.sh                  # here: the wheels the GPU machine lacks, into .whl/
    python3 -m tools.bench run --model qwen2_5_vl_7b --out $OUT --wheels .whl     # there (make bench-gpu)
    python -m tools.bench report docs/performance.json OUT/bench_*.json --run "run U (...)" --docs docs

Variants (VARIANTS): `seed` (plain transformers loop, batch 2, gradient checkpointing), `lf_default` and
`swift_default` (LLaMA-Factory's and ms-swift's shipped Qwen2.5-VL LoRA example values), `lf_plain` and
`swift_plain` (the trainers plainly tuned: our fast recipe without our features (the `qwenvl_recipes` block; in
ms-swift the plugin, its callbacks and QVR_* settings), i.e. batch 16, no gradient checkpointing, Liger, the same LoRA, only the trainer's own options), `lf_ours`, `swift_ours`,
`lf_ours_24gib`, `swift_ours_24gib` (recipes/perf/...). A variant name may carry overrides for a
tuning sweep: `lf_ours:per_device_train_batch_size=12,enable_liger_kernel=false`; a dotted key sets a nested one
(`lf_ours:qwenvl_recipes.speedups.compile_language=true`, `swift_ours:ENV.QVR_SPEEDUPS_COMPILE_LANGUAGE=true`);
`ENV.<NAME>` of a LLaMA-Factory variant sets the worker's environment (`lf_ours:ENV.PYTORCH_CUDA_ALLOC_CONF=...`).

The trainers run through their own CLI entry points in the worker process (`llamafactory-cli train` runs
`run_exp` in-process on one GPU; `swift sft` re-executes `swift/cli/sft.py`, whose `sft_main` the worker
calls directly, its plugins named in the recipe), or `qvr-llamafactory` for recipes with a `qwenvl_recipes` block,
with a callback that times each micro-step (CUDA events: the host is never synchronised with the GPU inside the
run, which would take away the overlap the trainers have) and counts its tokens and image patches. The data holds
one epoch of every variant's micro-steps (rows_needed). `--profile N` traces N micro-steps after the measured window
(torch.profiler; tools/gpu_gaps.py reports where the GPU waited).

MFU: tools/mfu.py, the one formula (a frozen vision tower counts forward only). N_lm counts the LM's
non-embedding weights, N_vis the vision tower (encoder + merger); how each part is trained is read from the
model's trainable parameters.

A second `run` with `--append` into the same --out adds its variants to that job's records (ratios over all),
so long runs of some variants (`--steps 200`) and short runs of others share one table. `--repeat N` runs the
variants N times in turn (A B A B ...), for effects smaller than what one host varies over a job.
"""

from __future__ import annotations

import argparse
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

from tools.bench.records import add_ratios, check_record, format_rounds, format_table
from tools.bench.variants import (BENCH_MODELS, REPO_ROOT, VARIANTS, data_label, parse_variant, pop_worker_env,
                                  rows_needed, settings_text, trainer_config)
from tools.bench.worker import worker
from tools.bench_data import write_bench_data
from tools.model_configs import FAMILY_OF_MODEL


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


def run_variant(spec_name: str, args, ckpt: Path, data: Path, work: Path, log) -> dict:
    name, overrides = parse_variant(spec_name)
    kind, trainer, _, settings = VARIANTS[name]
    record = {"model": args.model, "trainer": trainer, "variant": kind, "name": spec_name,
              "date": datetime.now(timezone.utc).date().isoformat()}
    spec = {"trainer": trainer, "ckpt": str(ckpt), "data": str(data), "cpu": args.cpu,
            "record": str(work / f"record_{name}.json"), "profile": args.profile,
            "trace": str(Path(args.out) / f"trace_{re.sub(r'[^A-Za-z0-9_.-]', '-', spec_name)}.json.gz")}
    worker_env = {}
    if trainer == "transformers":
        spec["warmup"], spec["window"] = args.warmup, args.warmup + args.steps
        python, path = args.lf_python, args.lf_path
    else:
        config, spec["warmup"], spec["window"] = trainer_config(name, overrides, args.model, ckpt, data, work,
                                                                args.warmup, args.steps, args.cpu, args.profile)
        worker_env = pop_worker_env(trainer, config)
        config_path = work / f"config_{name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        spec["config"] = str(config_path)
        settings = settings or ""
        settings = "; ".join(filter(None, [settings, settings_text(config)]))
        python, path = (args.lf_python, args.lf_path) if trainer == "llamafactory" else (args.swift_python,
                                                                                         args.swift_path)
    record["settings"] = settings
    spec_path = work / f"spec_{name}.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["record"]).unlink(missing_ok=True)
    log.write(f"\n===== {spec_name} ({trainer}) =====\n")
    log.flush()
    start = time.time()
    env = trainer_env(path)
    env.update(worker_env)
    if trainer == "llamafactory":
        # LLaMA-Factory sizes every image while it tokenizes, in `preprocessing_num_workers` processes that each
        # keep torch's full thread pool: a 640x480 image took 75 ms with the pool and 7 ms with one thread on two
        # cores, and 3,280 rows ran at 8-10 rows/s on 16 processes of a 16-core host. One thread each, as torch's
        # own data loader workers have (ms-swift processes images there).
        env.setdefault("OMP_NUM_THREADS", "1")
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
    return dict(record, **json.loads(Path(spec["record"]).read_text()))


def install_wheels(wheels: Path, site_root: Path) -> tuple[str, str]:
    """pip-install the carried wheel sets of tools/prepare_gpu_wheels.sh (common, lf, swift) into
    site_root/site-<set>; return the PYTHONPATH prefixes of the LLaMA-Factory and ms-swift environments."""
    for name in ("common", "lf", "swift"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site_root / f"site-{name}"),
                        *map(str, sorted((wheels / name).glob("*.whl")))], check=True)
    common = str(site_root / "site-common")
    return (os.pathsep.join([str(site_root / "site-lf"), common]),
            os.pathsep.join([str(site_root / "site-swift"), common]))


def prepare(args, work: Path, rows: int) -> tuple[Path, Path]:
    """Build (or reuse) the random checkpoint in the LLaMA-Factory environment and write the task's data."""
    ckpt = Path(args.ckpt or work / "ckpt" / args.model)
    command = [args.lf_python, "-m", "tools.random_checkpoint", "--model", args.model, "--out", str(ckpt)]
    if args.cpu:
        command += ["--tiny", "--device", "cpu"]
    subprocess.run(command, cwd=REPO_ROOT, env=trainer_env(args.lf_path), check=True)
    task = BENCH_MODELS[args.model]
    data = write_bench_data(work / "data" / f"{args.data}_{rows}", task["task"], rows, FAMILY_OF_MODEL[args.model],
                            *task["pixels"], shape=args.data, resize=task["resize"])
    return ckpt, data


def run(args) -> list[dict]:
    out = Path(args.out)
    work = Path(args.work) / args.model
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    variants = args.variants or BENCH_MODELS[args.model]["variants"]
    rows = max(rows_needed(variants, args), args.rows or 0)  # also fails on a bad variant before the long work
    records_path = out / f"bench_{args.model}.json"
    records = json.loads(records_path.read_text()) if args.append and records_path.exists() else []
    if args.wheels:
        args.lf_path, args.swift_path = install_wheels(Path(args.wheels), Path(args.work))
    with open(out / f"bench_{args.model}.log", "a") as log:
        t0 = time.time()
        ckpt, data = prepare(args, work, rows)
        print(f"checkpoint + {rows} rows of data ready in {time.time() - t0:.0f}s: {ckpt}", flush=True)
        done = max((r.get("round", 0) for r in records), default=0)  # an appended run's rounds come after these
        for round_, spec in itertools.product(range(done + 1, done + args.repeat + 1), variants):  # A B A B ...
            record = dict(run_variant(spec, args, ckpt, data, work, log), data=data_label(args.model, args.data))
            if args.repeat > 1:
                record["round"] = round_
            records.append(record)
            add_ratios(records)
            records_path.write_text(json.dumps(records, indent=1))
            print(f"{spec}: " + (record.get("error") or f"{record['samples_per_s']:.2f} samples/s, "
                  f"{record['peak_gib']:.1f} GiB, MFU {record['mfu']:.1%}, {record['tokens_per_sample']:.0f} "
                  f"tok/sample, padding {record['padding_share']:.0%}, {record['steps']} steps, "
                  f"grads {record['n_trainable_with_grad']}/{record['n_trainable']}") +
                  f" ({record['wall_s']}s)", flush=True)
    table = format_table(records)
    if args.repeat > 1:
        table += "\n\n" + format_rounds(records)
    (out / f"bench_{args.model}.md").write_text(table + "\n")
    print(table)
    return records


def report(args) -> None:
    """Merge record files (bench_<model>.json, docs/performance.json) into docs/performance.json; print the table."""
    records = [r for path in args.records for r in json.loads(Path(path).read_text())]
    for r in records:
        check_record(r)
    if args.run:
        records = [r if "run" in r else dict(r, run=args.run) for r in records]
    measured = [r for r in records if not r.get("error")]  # failures stay in the printed table only
    docs = Path(args.docs)
    (docs / "performance.json").write_text(json.dumps(measured, indent=1) + "\n")
    print(format_table(records))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="benchmark one model's variants in one job (on the GPU machine)")
    p.add_argument("--model", required=True, choices=sorted(BENCH_MODELS))
    p.add_argument("--out", required=True, help="folder for bench_<model>.{json,md,log}")
    p.add_argument("--work", default="/tmp/qvr-bench", help="scratch folder: checkpoint, data, trainer outputs")
    p.add_argument("--ckpt", help="random checkpoint folder (default WORK/<model>/ckpt/<model>)")
    p.add_argument("--variants", nargs="+", help="VARIANTS names, each with optional :key=value,key=value "
                                                 "overrides (default: the model's set in BENCH_MODELS)")
    p.add_argument("--data", choices=("coco", "ideal"), default="coco",
                   help="coco: COCO's image-size mix and the task's text lengths (default); ideal: fixed squares and "
                        "fixed texts, the best case, labelled so (tools/bench_data.py)")
    p.add_argument("--append", action="store_true",
                   help="add to OUT/bench_<model>.json of an earlier run of this job instead of starting it anew")
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
    p.add_argument("--wheels", help="folder written by tools/prepare_gpu_wheels.sh: install its sets under WORK and "
                                    "use them as --lf-path / --swift-path")
    p.add_argument("--cpu", action="store_true", help="tiny model on CPU (tests the pipeline, not speed)")
    w = sub.add_parser("worker", help="internal: run one variant from its spec file")
    w.add_argument("spec")
    r = sub.add_parser("report", help="write docs/performance.json from bench_<model>.json files")
    r.add_argument("records", nargs="+")
    r.add_argument("--docs", default=str(REPO_ROOT / "docs"))
    r.add_argument("--run", help="label for the records that have none yet (the run letter, date, device and data), "
                                 "so docs/performance.json itself can be one of the record files")
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.repeat < 1:
            p.error(f"--repeat must be at least 1, got {args.repeat}")
        run(args)
    elif args.command == "worker":
        worker(Path(args.spec))
    else:
        report(args)


if __name__ == "__main__":
    main()
