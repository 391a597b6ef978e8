"""What a checkpoint needs to be served as it was trained, kept in the args.json that ms-swift writes beside it.

ms-swift 4.6 restores from a checkpoint's args.json (`swift infer|deploy|export --adapters CKPT`, or `--model` a
merged folder) only a fixed list of its own keys: model, model_type, template, system, external_plugins, ... Not
`model_kwargs`, not its `max_pixels` argument, not the recipe's ENV block. Yet the image grid of a Qwen-VL model
follows environment variables (MAX_PIXELS / MIN_PIXELS: qwen-vl-utils' smart_resize, 12.8 Mpx at most by
default), and so do our features' settings (QVR_*). So every ms-swift recipe names this project's plugin, and:

- training (`swift sft`): the plugin adds the variables in effect to the run's `model_kwargs` (which swift saves in
  args.json, and itself exports to the environment: the same values) and makes the plugin paths absolute, so the
  checkpoint's args.json names a plugin file that imports from any directory;
- serving (swift's other commands): swift imports the plugin named in the checkpoint's args.json, which exports
  the checkpoint's recorded variables before any model or processor loads. A variable set in the shell, or given
  in `--model_kwargs`, wins, as with a recipe's ENV block.

swift's own `max_pixels` argument is not used: it shrinks the image proportionally before smart_resize (a grid of
its own, not training's, unless it equals the limit smart_resize saw), has no minimum, and is not restored either.

The plugin learns which run it serves from the swift arguments being built: swift imports external plugins from
`BaseArguments._import_external_plugins`, after it has found the checkpoint (`ckpt_dir`) and read its args.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping, MutableMapping

from custom_modules.integrations.env_settings import setting_variables

# What swift's Qwen-VL image path reads from the environment (swift.model.models.qwen.patch_qwen_vl_utils,
# compat_qwen_vl_utils: pixel limits, in pixels or in tokens) and how its templates render boxes.
IMAGE_VARIABLES = ("MIN_PIXELS", "MAX_PIXELS", "IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM", "MAX_RATIO",
                   "SPATIAL_MERGE_SIZE", "QWENVL_BBOX_FORMAT")


def importing_arguments():
    """The swift arguments whose construction is importing this plugin; None when the import comes from elsewhere
    (a dataloader worker replaying the plugins, a plain import)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_import_external_plugins" and "self" in frame.f_locals:
            return frame.f_locals["self"]
        frame = frame.f_back
    return None


def serving_variables(environment: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environment` that change what a trained model sees: the image ones and our settings (a
    value naming a file or folder relative to the working directory made absolute: swift resolves those against the
    working directory, which serving need not share with training)."""
    names = [n for n in IMAGE_VARIABLES if n in environment] + sorted(setting_variables(environment))
    return {name: os.path.abspath(environment[name]) if _relative_path(environment[name]) else environment[name]
            for name in names}


def _relative_path(value: str) -> bool:
    return bool(value) and not os.path.isabs(value) and os.path.exists(value)


def record(args, environment: Mapping[str, str]) -> None:
    """Training: the serving variables into args.model_kwargs (what the recipe's own model_kwargs sets wins: swift
    exports it over the environment) and the plugin paths made absolute, before swift writes args.json."""
    from swift.utils import json_parse_to_dict

    args.external_plugins = [os.path.abspath(os.path.expanduser(p)) for p in _as_list(args.external_plugins)]
    args.model_kwargs = {**serving_variables(environment), **json_parse_to_dict(args.model_kwargs)}


def recorded_variables(ckpt_dir: str | os.PathLike) -> dict[str, str]:
    """The serving variables a training run recorded in `ckpt_dir`/args.json (its model_kwargs)."""
    path = Path(ckpt_dir) / "args.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("model_kwargs") or {}
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the run's model_kwargs ({error})") from error
    if isinstance(saved, str):
        saved = json.loads(saved)
    return {str(k).upper(): str(v) for k, v in saved.items()}


def restore(args, environment: MutableMapping[str, str]) -> dict[str, str]:
    """Serving: the checkpoint's recorded variables into `environment`, except those the shell or --model_kwargs
    set; returns what was set."""
    from swift.utils import json_parse_to_dict

    given = {str(k).upper() for k in json_parse_to_dict(args.model_kwargs)}
    restored = {k: v for k, v in recorded_variables(args.ckpt_dir).items()
                if k not in environment and k not in given}
    environment.update(restored)
    return restored


def prepare(environment: MutableMapping[str, str]):
    """Record (training) or restore (any other swift command on a checkpoint), for the arguments importing us;
    returns those arguments (None: see importing_arguments)."""
    args = importing_arguments()
    if args is None:
        return None
    from swift.arguments import SftArguments
    from swift.utils import get_logger

    if isinstance(args, SftArguments):
        record(args, environment)
    elif getattr(args, "ckpt_dir", None):
        restored = restore(args, environment)
        if restored:
            settings = ", ".join(f"{k}={v}" for k, v in restored.items())
            get_logger().info(f"qwenvl-recipes: from {Path(args.ckpt_dir) / 'args.json'}: {settings}")
    return args


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])
