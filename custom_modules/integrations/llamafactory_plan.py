"""qvr-plan for a LLaMA-Factory recipe: what `llamafactory-cli train` / `qvr-llamafactory train` would train.

The recipe and its `key=value` overrides are read as qvr-llamafactory reads them, LLaMA-Factory's own
ModelArguments / FinetuningArguments parse them, and LLaMA-Factory 0.9.5's `init_adapter` (llamafactory.model.adapter:
full / freeze / LoRA, `lora_target` through `patch_target_modules`, `freeze_vision_tower` /
`freeze_multi_modal_projector` / `freeze_language_model`, `additional_target`) runs on the model built on the meta
device, with our features applied where qvr-llamafactory applies them: the custom encoder before LoRA and its stage
after, the forgery head after the model loads, the per-part learning rates of learning_rates / vision_encoder.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import HfArgumentParser

from custom_modules import learning_rates
from custom_modules.forgery.lora import placement_warnings
from custom_modules.forgery.settings import parse_settings as forgery_settings
from custom_modules.forgery.settings import resolve_paths as forgery_paths
from custom_modules.integrations.llamafactory_cli import FEATURES, read_recipe
from custom_modules.plan import (Pattern, Plan, PlanError, attach_forgery, candidate_modules, model_before_adapters,
                                 model_config, on_meta, parameters, pattern_errors, resolve_patterns, training_failure)
from custom_modules.recipe_keys import block_where
from custom_modules.vision_encoder.settings import parse_settings as encoder_settings
from custom_modules.vision_encoder.settings import resolve_paths as encoder_paths
from custom_modules.vision_encoder.training import apply_stage, param_groups, stage_warnings

TRAINER = "LLaMA-Factory"
DEFAULT_LEARNING_RATE = 5e-5  # transformers' TrainingArguments default, which LLaMA-Factory keeps
SUBSTRING_RULE = ("LLaMA-Factory puts LoRA on every module whose name contains a lora_target entry: "
                  "a piece of a name such as blocks.7.attn.qkv, no wildcards")
ENDING_RULE = "PEFT trains whole every module whose name ends with the entry"


def drop_reasons(config, finetuning_args) -> dict[str, str]:
    """name piece -> the setting by which LLaMA-Factory keeps LoRA off modules containing it (get_forbidden_modules,
    patch_target_modules)."""
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    composite = COMPOSITE_MODELS.get(getattr(config, "model_type", None))
    if composite is None:
        return {}
    reasons = {}
    for keys, setting in ((composite.vision_model_keys, "freeze_vision_tower"),
                          (composite.projector_keys, "freeze_multi_modal_projector"),
                          (composite.language_model_keys, "freeze_language_model")):
        if getattr(finetuning_args, setting):
            reasons.update({key: f"{setting}: true" for key in keys})
    reasons.update({key: f"LLaMA-Factory itself (it keeps LoRA off {key})" for key in composite.lora_conflict_keys})
    return reasons


def patterns(finetuning_args, reasons: dict[str, str]) -> list[Pattern]:
    def drops(name: str) -> str | None:
        return next((reason for key, reason in reasons.items() if key in name), None)

    found = []
    if finetuning_args.finetuning_type in ("lora", "oft"):
        if finetuning_args.lora_target == ["all"]:
            found.append(Pattern("lora_target", "all", lambda name: True, "every linear layer of the trained parts"))
        else:
            found += [Pattern("lora_target", target, lambda name, t=target: t in name, SUBSTRING_RULE, drops=drops)
                      for target in finetuning_args.lora_target]
        found += [Pattern("additional_target", target, lambda name, t=target: name.endswith(t), ENDING_RULE,
                          full=True) for target in finetuning_args.additional_target or []]
    return found


def method(model_args, finetuning_args) -> str:
    kind = finetuning_args.finetuning_type
    if kind in ("lora", "oft"):
        quantized = f", base quantized to {model_args.quantization_bit} bits" if model_args.quantization_bit else ""
        name = "QLoRA" if quantized else {"lora": "LoRA", "oft": "OFT"}[kind]
        return (f"{name} r{finetuning_args.lora_rank}, alpha "
                f"{finetuning_args.lora_alpha}{quantized}")
    return f"{kind} (finetuning_type)"


def plan(recipe: str, overrides: list[str]) -> Plan:
    from llamafactory.extras.env import VERSION
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model.adapter import init_adapter

    args, block = read_recipe([recipe, *overrides])
    unknown = sorted(set(block) - set(FEATURES))
    if unknown:
        raise PlanError(f"{recipe}: {block_where(unknown[0])}: unknown feature; known: {sorted(FEATURES)}")
    try:
        model_args, finetuning_args = HfArgumentParser((ModelArguments, FinetuningArguments)).parse_dict(
            args, allow_extra_keys=True)
    except (ValueError, TypeError) as error:
        raise PlanError(f"{recipe}: {' '.join(str(error).split())}") from error
    warnings = []
    try:
        forgery = "forgery" in block and forgery_settings(block["forgery"], block_where("forgery"))
        encoder = "vision_encoder" in block and encoder_settings(block["vision_encoder"], block_where("vision_encoder"))
        rates = "learning_rates" in block and learning_rates.parse_settings(block["learning_rates"],
                                                                              block_where("learning_rates"))
    except ValueError as error:
        raise PlanError(f"{recipe}: {error}") from error
    if encoder and rates:
        raise PlanError(f"{recipe}: {block_where('vision_encoder')}: {block_where('learning_rates')} already sets the "
                        f"learning rates per part; keep one of the two")
    try:  # a later stage's inputs need not exist yet when the plan is made
        if forgery:
            forgery_paths(forgery, block_where("forgery"), args.get("dataset_dir", "data"), args.get("output_dir"))
        if encoder:
            encoder_paths(encoder, block_where("vision_encoder"), args.get("output_dir"))
    except FileNotFoundError as error:
        warnings.append(str(error))

    config, described = model_config(model_args.model_name_or_path, f"{recipe}: model_name_or_path")
    adapter_error = None
    with on_meta(), tempfile.TemporaryDirectory(prefix="qvr-plan-") as scratch:
        model = model_before_adapters(config, encoder, Path(scratch), recipe)
        candidates = candidate_modules(model)
        try:
            model = init_adapter(config, model, model_args, finetuning_args, is_trainable=True)
            if encoder:
                apply_stage(model, encoder)
        except (ValueError, RuntimeError, TypeError, AssertionError, NotImplementedError) as error:
            adapter_error = error
        if forgery and adapter_error is None:
            attach_forgery(model, forgery, recipe)

    found = patterns(finetuning_args, drop_reasons(config, finetuning_args))
    results = resolve_patterns(found, candidates, model, placed=adapter_error is None)
    errors = pattern_errors(recipe, results, described)
    if adapter_error is not None and not errors:
        raise training_failure(recipe, adapter_error)
    if adapter_error is None:
        if forgery:
            warnings += placement_warnings(model, forgery, block_where("forgery"))
        if encoder:
            warnings += stage_warnings(model, encoder, block_where("vision_encoder"))

    learning_rate = float(args.get("learning_rate", DEFAULT_LEARNING_RATE))
    groups = None  # LLaMA-Factory's own optimizer: one rate; ours: the groups qvr-llamafactory installs
    if adapter_error is None and encoder:
        groups = param_groups(model, encoder, learning_rate)
    elif adapter_error is None and rates:
        groups = learning_rates.param_groups(model, learning_rates.stock_part, learning_rates.rates_of(rates),
                                             learning_rate)
    return Plan(recipe, f"{TRAINER} {VERSION} (llamafactory.model.adapter.init_adapter)", described,
                method(model_args, finetuning_args), results, parameters(model, learning_rate, groups), warnings,
                errors)
