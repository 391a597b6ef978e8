"""qvr-plan for an ms-swift recipe: what `swift sft recipe.yaml [--key value ...]` would train.

The recipe becomes flags as `swift sft` makes them (swift.cli.main.parse_yaml_args, its ENV block exported, our
plugin imported from external_plugins), ms-swift 4.6.0's own SftArguments parse them (target_regex over
target_modules, freeze_vit / freeze_aligner / freeze_llm into freeze_parameters, vit_lr / aligner_lr into its
multimodal optimizer), and its own `TunerMixin.prepare_model` (swift.pipelines.train.tuner: all-linear, LoRA,
modules_to_save, full tuning) runs on the model built on the meta device, with our modules attached as our plugin
attaches them (the custom encoder by its model type, the forgery head by its callback). The learning rates are those
of the optimizer swift's optimizer callback builds over that model. SftArguments needs a model folder: a published
model's config.json is written to a scratch folder, which also takes the output_dir; DeepSpeed is left out (it
partitions what trains, it does not change it).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from custom_modules.forgery.lora import placement_warnings
from custom_modules.forgery.settings import parse_settings as forgery_settings
from custom_modules.forgery.settings import resolve_paths as forgery_paths
from custom_modules.integrations.env_settings import FEATURE_CALLBACKS, read_settings, recipe_source
from custom_modules.plan import (Pattern, Plan, PlanError, attach_forgery, candidate_modules, model_before_adapters,
                                 model_config, on_meta, parameters, pattern_errors, regex_patterns, resolve_patterns,
                                 training_failure)
from custom_modules.recipe_keys import env_where
from custom_modules.vision_encoder.settings import parse_settings as encoder_settings
from custom_modules.vision_encoder.settings import resolve_paths as encoder_paths
from custom_modules.vision_encoder.training import stage_warnings

TRAINER = "ms-swift"
SUFFIX_RULE = ("PEFT puts LoRA on every module whose name is a target_modules entry or ends with '.' + it: "
               "no wildcards (target_regex takes a regex)")
REGEX_RULE = ("PEFT puts LoRA on every module whose whole name matches target_regex; this alternative of it "
              "matches none")
ENDING_RULE = "PEFT trains whole every module whose name ends with the entry"
GROUPS = {"all-linear": "every linear layer of the parts not frozen (freeze_llm / freeze_vit / freeze_aligner)",
          "all-embedding": "every embedding"}
CPU_FLAGS = ["--bf16", "false", "--fp16", "false", "--check_model", "false"]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The last value given to `--flag` (swift's parser keeps the last)."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]
    return values[-1] if values else None


def without_flag(argv: list[str], flag: str) -> list[str]:
    kept, skip = [], False
    for word in argv:
        if skip and not word.startswith("--"):
            continue
        skip = word == flag
        if not skip:
            kept.append(word)
    return kept


def patterns(args) -> list[Pattern]:
    def inside_copy(name: str) -> str | None:  # PEFT never puts LoRA inside a module it trains whole
        owner = next((m for m in args.modules_to_save if re.match(rf"(^|.*\.){m}($|\..*)", name)), None)
        return owner and f"modules_to_save {owner}"

    found = []
    if args.tuner_type in ("lora", "longlora"):
        if args.target_regex:
            found += regex_patterns("target_regex", args.target_regex, REGEX_RULE, inside_copy)
        else:
            for target in args.target_modules:
                if target in GROUPS:
                    found.append(Pattern("target_modules", target, lambda name: True, GROUPS[target]))
                else:
                    found.append(Pattern("target_modules", target,
                                         lambda name, t=target: name == t or name.endswith(f".{t}"), SUFFIX_RULE,
                                         drops=inside_copy))
        found += [Pattern("modules_to_save", target, lambda name, t=target: name.endswith(t), ENDING_RULE, full=True)
                  for target in args.modules_to_save]
    return found


def method(args) -> str:
    if args.tuner_type in ("lora", "longlora"):
        quantized = f", base quantized to {args.quant_bits} bits" if args.quant_bits else ""
        return f"{'QLoRA' if quantized else 'LoRA'} r{args.lora_rank}, alpha {args.lora_alpha:g}{quantized}"
    return f"{args.tuner_type} (tuner_type)"


def optimizer_groups(args, model) -> list[dict] | None:
    """The parameter groups of the optimizer swift's optimizer callback builds over `model` (vit_lr / aligner_lr: its
    multimodal one); None for the HF Trainer's, one rate."""
    training_args = args.training_args  # the trainer's arguments: vit_lr / aligner_lr set its optimizer there
    if not training_args.optimizer:
        return None
    from swift.optimizers import optimizers_map

    return optimizers_map[training_args.optimizer](training_args, None).create_optimizer(model).param_groups


def plan(recipe: str, overrides: list[str]) -> Plan:
    from swift.arguments import SftArguments
    from swift.cli.main import parse_yaml_args
    from swift.pipelines.train.tuner import TunerMixin
    from swift.utils import parse_args
    from swift.version import __version__

    from custom_modules.integrations.swift_vision_encoder import MODEL_TYPE as ENCODER_MODEL_TYPE

    argv = [recipe]
    parse_yaml_args(argv)
    argv = without_flag(argv + list(overrides), "--deepspeed")
    source = flag_value(argv, "--model")
    if source is None:
        raise PlanError(f"{recipe}: no model (the recipe's `model`, or --model)")
    config, described = model_config(source, f"{recipe}: model")
    with tempfile.TemporaryDirectory(prefix="qvr-plan-") as scratch:
        model_dir = source
        if not (Path(source) / "config.json").is_file():
            model_dir = str(Path(scratch) / "model")
            config.save_pretrained(model_dir)
        try:
            args, remaining = parse_args(SftArguments, argv + ["--model", model_dir, "--output_dir",
                                                               str(Path(scratch) / "output"), *CPU_FLAGS])
        except (ValueError, TypeError, AssertionError) as error:
            raise PlanError(f"{recipe}: {' '.join(str(error).split())}") from error
    if remaining:
        raise PlanError(f"{recipe}: ms-swift does not know the arguments {remaining}")
    warnings = []
    try:  # our settings as our plugin reads them: the recipe's ENV block, exported by parse_yaml_args, and the shell
        environment = read_settings(os.environ, recipe_source()[0])
        forgery = (FEATURE_CALLBACKS["forgery"] in (args.callbacks or [])
                   and forgery_settings(environment.get("forgery", {}), env_where("forgery")))
        encoder = (args.model_type == ENCODER_MODEL_TYPE
                   and encoder_settings(environment.get("vision_encoder", {}), env_where("vision_encoder")))
    except ValueError as error:
        raise PlanError(f"{recipe}: {error}") from error
    try:  # a later stage's inputs need not exist yet when the plan is made
        if forgery:
            forgery_paths(forgery, env_where("forgery"))
        if encoder:
            encoder_paths(encoder, env_where("vision_encoder"))
    except FileNotFoundError as error:
        warnings.append(str(error))

    adapter_error = None
    with on_meta(), tempfile.TemporaryDirectory(prefix="qvr-plan-") as scratch:
        model = model_before_adapters(config, encoder, Path(scratch), recipe)
        model.model_meta, model.model_info = args.model_meta, args.model_info
        candidates = candidate_modules(model)
        try:
            model = TunerMixin.prepare_model(args, model)
        except (ValueError, RuntimeError, TypeError, AssertionError, NotImplementedError) as error:
            adapter_error = error
        if forgery and adapter_error is None:
            attach_forgery(model, forgery, recipe)

    results = resolve_patterns(patterns(args), candidates, model, placed=adapter_error is None)
    errors = pattern_errors(recipe, results, described)
    if adapter_error is not None and not errors:
        raise training_failure(recipe, adapter_error)
    groups = None
    if adapter_error is None:
        if forgery:
            warnings += placement_warnings(model, forgery, env_where("forgery"))
        if encoder:
            warnings += stage_warnings(model, encoder, env_where("vision_encoder"))
        groups = optimizer_groups(args, model)
    return Plan(recipe, f"{TRAINER} {__version__} (swift.pipelines.train.tuner.TunerMixin.prepare_model)",
                described, method(args), results, parameters(model, args.learning_rate, groups), warnings, errors)
