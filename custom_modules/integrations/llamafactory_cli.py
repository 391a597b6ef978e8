"""qvr-llamafactory: `llamafactory-cli` with this project's features (forgery, vision_encoder, speedups,
learning_rates).

    qvr-llamafactory train recipe.yaml [key=value ...]
    FORCE_TORCHRUN=1 NPROC_PER_NODE=4 qvr-llamafactory train recipe.yaml [key=value ...]

`train` takes exactly `llamafactory-cli train`'s arguments (a .yaml/.json recipe, then OmegaConf `key=value`
overrides; a dotted key reaches into our block: qwenvl_recipes.forgery.head_dim=64) and launches the same way:
through torchrun when FORCE_TORCHRUN is set or more than one GPU is visible, with NNODES, NODE_RANK,
NPROC_PER_NODE, MASTER_ADDR, MASTER_PORT (and RDZV_ID, MIN_NNODES, MAX_NNODES, MAX_RESTARTS for an elastic
launch) read as LLaMA-Factory reads them. Every other command (export,
chat, webui, ...) is llamafactory-cli's own, run unchanged.

OPTIM_TORCH (on unless set to 0) is LLaMA-Factory's switch for the torchrun workers' allocator, expandable
segments; `train` applies it in a single process too, unless PYTORCH_CUDA_ALLOC_CONF (or PYTORCH_ALLOC_CONF) is
already set: on images of varying size the caching allocator otherwise reserves far more than the live peak
(92 GiB reserved for 57 allocated, Qwen2.5-VL-7B's fast recipe on COCO-shaped data; docs/performance.md).

LLaMA-Factory 0.9.5 has no plugin hook and rejects unknown recipe keys, so this command reads the recipe,
pops its `qwenvl_recipes:` block and calls FEATURES[feature](settings, args) for each feature in it (checked
settings, paths placed in the run's dataset_dir / output_dir, patches of LLaMA-Factory's SFT workflow for
this process, and the TrainerCallbacks it returns); then `llamafactory.train.tuner.run_exp(args, callbacks)`,
which is what `llamafactory-cli train` runs. A recipe without the block trains exactly as under llamafactory-cli.
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys

from custom_modules.recipe_keys import BLOCK_KEY, block_where

# feature -> "module:function(settings, args) -> callbacks", imported only when a recipe uses the feature
FEATURES = {
    "forgery": "custom_modules.integrations.llamafactory_forgery:setup",
    "vision_encoder": "custom_modules.integrations.llamafactory_vision_encoder:install",
    "speedups": "custom_modules.integrations.llamafactory_speedups:setup",
    "learning_rates": "custom_modules.integrations.llamafactory_learning_rates:setup",
}


WORKER_MODULE = "custom_modules.integrations.llamafactory_cli"  # what each torchrun worker runs (`__main__` below)


class RecipeError(ValueError):
    """A user error of the run: a recipe's `qwenvl_recipes:` block is wrong (the message names the file and the
    key), or the checkpoint it resumes from holds a refused pickle (the message names that file)."""


def read_recipe(argv: list[str]) -> tuple[dict, dict]:
    """(LLaMA-Factory's arguments, our block) from `recipe.yaml key=value ...`, read as llamafactory-cli reads them."""
    from llamafactory.hparams.parser import read_args

    saved, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        args = read_args()
    finally:
        sys.argv = saved
    block = args.pop(BLOCK_KEY, None) or {}
    if not isinstance(block, dict):
        raise RecipeError(f"{argv[0]}: {BLOCK_KEY} must be a mapping of feature -> settings")
    return args, block


def feature_callbacks(recipe: str, block: dict, args: dict, features: dict[str, str] = FEATURES) -> list:
    callbacks = []
    for feature, settings in block.items():
        if feature not in features:
            raise RecipeError(f"{recipe}: {block_where(feature)}: unknown feature; known: {sorted(features)}")
        module, function = features[feature].split(":")
        try:
            callbacks.extend(getattr(importlib.import_module(module), function)(settings, args))
        except (ValueError, OSError) as error:
            raise RecipeError(f"{recipe}: {error}") from error
    return callbacks


def train(argv: list[str]) -> None:
    """Train in this process (a torchrun worker, or the only process)."""
    args, block = read_recipe(argv)
    callbacks = feature_callbacks(argv[0], block, args)
    from llamafactory.train.tuner import run_exp

    try:
        run_exp(args, callbacks=callbacks)
    except pickle.UnpicklingError as error:  # torch refused a resumed checkpoint's optimizer / scheduler / RNG state
        from custom_modules.checkpoints import refused_pickle

        raise RecipeError(str(refused_pickle(resumed_checkpoint(args), error))) from error


def resumed_checkpoint(args: dict) -> str:
    """The checkpoint a run resumes from: the recipe's resume_from_checkpoint, else (as LLaMA-Factory finds it) the
    last checkpoint-N in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    return args.get("resume_from_checkpoint") or get_last_checkpoint(args["output_dir"])


def distributed() -> bool:
    """LLaMA-Factory's own rule for launching `train` through torchrun."""
    from llamafactory.extras.misc import get_device_count, is_env_enabled, use_kt, use_ray

    if is_env_enabled("USE_MCA"):
        os.environ["FORCE_TORCHRUN"] = "1"
    return is_env_enabled("FORCE_TORCHRUN") or (get_device_count() > 1 and not use_ray() and not use_kt())


def torchrun_command(argv: list[str]) -> list[str]:
    """torchrun's options as llamafactory-cli builds them, elastic launch (RDZV_ID) included."""
    from llamafactory.extras.misc import find_available_port, get_device_count

    nnodes, nproc = os.getenv("NNODES", "1"), os.getenv("NPROC_PER_NODE", str(get_device_count()))
    address = os.getenv("MASTER_ADDR", "127.0.0.1")
    port = os.getenv("MASTER_PORT", str(find_available_port()))
    if os.getenv("RDZV_ID") is not None:
        if os.getenv("MIN_NNODES") is not None and os.getenv("MAX_NNODES") is not None:
            nnodes = f"{os.environ['MIN_NNODES']}:{os.environ['MAX_NNODES']}"
        options = {"nnodes": nnodes, "nproc-per-node": nproc, "rdzv-id": os.environ["RDZV_ID"],
                   "rdzv-backend": "c10d", "rdzv-endpoint": f"{address}:{port}",
                   "max-restarts": os.getenv("MAX_RESTARTS", "0")}
    else:
        options = {"nnodes": nnodes, "node_rank": os.getenv("NODE_RANK", "0"), "nproc_per_node": nproc,
                   "master_addr": address, "master_port": port}
    flags = [part for key, value in options.items() for part in (f"--{key}", value)]
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", WORKER_MODULE, *argv]


EXPANDABLE_SEGMENTS = "expandable_segments:True"


def optim_torch() -> bool:
    from llamafactory.extras.misc import is_env_enabled

    return is_env_enabled("OPTIM_TORCH", "1")


def torchrun_env() -> dict:
    """The workers' environment, tuned as llamafactory-cli tunes it (OPTIM_TORCH, on by default)."""
    env = dict(os.environ)
    if optim_torch():
        env.update(PYTORCH_CUDA_ALLOC_CONF=EXPANDABLE_SEGMENTS, TORCH_NCCL_AVOID_RECORD_STREAMS="1")
    return env


ALLOC_CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch reads either


def tune_allocator() -> None:
    """This process's allocator as the torchrun workers get it, unless the user chose one (either variable set,
    even empty). CUDA is initialised by the time this runs and reads the variable no more (set alone, it left the
    default allocator: docs/performance.md), so the setting goes to the allocator itself, before the model loads;
    the variable is set too, for the processes this one starts."""
    if not optim_torch() or any(name in os.environ for name in ALLOC_CONF_VARIABLES):
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE_SEGMENTS
    import torch

    if torch.cuda.is_available():
        torch._C._accelerator_setAllocatorSettings(EXPANDABLE_SEGMENTS)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command != "train" or not rest or not rest[0].endswith((".yaml", ".yml", ".json")):
        from llamafactory.cli import main as llamafactory_cli  # export, chat, `train -h`, ...: theirs, unchanged

        sys.argv = ["llamafactory-cli", *argv]
        llamafactory_cli()
        return
    try:
        if distributed():
            raise SystemExit(subprocess.run(torchrun_command(rest), env=torchrun_env()).returncode)
        tune_allocator()
        train(rest)
    except RecipeError as error:
        stop(error)


def stop(error: RecipeError) -> None:
    """A user error: one line, exit status 2."""
    print(f"qvr-llamafactory: {error}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":  # a torchrun worker: the launcher already decided
    try:
        train(sys.argv[1:])
    except RecipeError as error:
        stop(error)
