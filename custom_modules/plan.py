"""What a recipe will train, worked out on the meta device before any weight loads (`qvr-plan`).

The trainer's own code decides: custom_modules/integrations/{llamafactory,swift}_plan.py run its LoRA placement and
freezing on a model built from the config alone (a published architecture of custom_modules.model_configs, or a
local folder's config.json), with our modules attached as training would attach them. This module builds that
model and reads back what the trainer did: each target pattern with the modules it reached, or an error for one
that reached nothing (naming the setting that took its matches out, if one did); every part of the model trained
fully, with LoRA or frozen, with parameter counts and learning rates; and the warnings our modules raise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from custom_modules.model_configs import PUBLISHED, PUBLISHED_ENCODERS, published_config

# The parts of a Qwen-VL model (ours included) as the report lists them: (part, pattern on parameter names as the
# checkpoints and adapters name them), first match wins.
PARTS = (
    ("LM layers", r"(^|\.)language_model\.(layers|norm)\."),
    ("LM embeddings", r"(^|\.)language_model\.embed_tokens\."),
    ("lm_head", r"^lm_head\."),
    ("ViT blocks", r"(^|\.)visual\.blocks\."),
    ("ViT patch/position embeddings", r"(^|\.)visual\.(patch_embed|pos_embed)\."),
    ("merger", r"(^|\.)visual\.merger\."),
    ("deepstack mergers", r"(^|\.)visual\.deepstack_merger_list\."),
    ("vision encoder (ours)", r"(^|\.)visual\.encoder\."),
    ("forgery head (ours)", r"^forgery\.head\."),
    ("forgery fusion (ours)", r"^forgery\.fusion\."),
)
OTHER = "other"
ADAPTER_PREFIX = "base_model.model."  # PEFT's wrapper around the model
LORA_PARAMETER = re.compile(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.[^.]+\.")
LORA_SAVED = re.compile(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.")  # ... once saved_name ran
TRAINED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")  # PEFT's trained copy of a modules_to_save module
FROZEN_ORIGINAL = ".original_module."                       # ... and the untouched original beside it
LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what a LoRA target can be


class PlanError(ValueError):
    """The recipe cannot be planned (its model unknown, the trainer refuses it): one line naming recipe and key."""


@dataclass
class Pattern:
    """One target entry of a recipe and the trainer's rule for it."""
    key: str                           # the recipe key holding it: lora_target, target_modules, modules_to_save, ...
    text: str                          # the entry as written
    matches: Callable[[str], bool]     # the trainer's matching rule, on module names
    rule: str                          # that rule in words, for the error
    full: bool = False                 # a module trained whole (modules_to_save), not LoRA
    drops: Callable[[str], str | None] = lambda name: None  # the setting that takes a matching module out, if any


@dataclass
class PatternResult:
    pattern: Pattern
    reached: list[str]                 # modules the pattern put LoRA on (or trains whole)
    dropped: dict[str, list[str]]      # setting -> modules the rule matched but the setting took out


@dataclass
class Parameter:
    name: str          # as adapter files and checkpoints name it
    numel: int
    trainable: bool
    added: bool        # LoRA or a trained copy: not one of the model's own parameters
    lora: bool
    learning_rate: float | None


@dataclass
class Plan:
    recipe: str
    trainer: str
    model: str
    method: str
    patterns: list[PatternResult] = field(default_factory=list)
    parameters: list[Parameter] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def trainable_names(self) -> list[str]:
        return sorted(p.name for p in self.parameters if p.trainable)


def model_config(source: str, key: str):
    """(config, description) of the recipe's model: a local folder's config.json or a published architecture."""
    from transformers import AutoConfig

    if (Path(source) / "config.json").is_file():
        return AutoConfig.from_pretrained(source), f"{source} (local folder's config.json)"
    config = published_config(source)
    if config is None:
        raise PlanError(f"{key}: {source} is neither a local model folder nor one of the published checkpoints "
                        f"whose architecture qvr-plan holds ({', '.join(PUBLISHED)})")
    return config, f"{source} (published architecture)"


def encoder_on_disk(settings, scratch: Path):
    """The vision_encoder settings with a published encoder (PUBLISHED_ENCODERS) read from its config written to
    `scratch`, so it builds without the hub; a local folder or another encoder is left as set."""
    path = settings.encoder_path
    if settings.encoder != "dinov2" or Path(path).is_dir() or path not in PUBLISHED_ENCODERS:
        return settings
    from transformers import Dinov2Config

    folder = scratch / "encoder"
    Dinov2Config(**PUBLISHED_ENCODERS[path]).save_pretrained(folder)
    return dataclasses.replace(settings, encoder_path=str(folder))


@contextlib.contextmanager
def on_meta():
    """Every tensor created inside lives on the meta device: shapes, no memory, no weights read. (accelerate's
    init_empty_weights re-wraps each parameter as it is registered, which unties tied embeddings.)"""
    with torch.device("meta"):
        yield


def meta_model(config) -> nn.Module:
    """The model of `config` on the meta device (call inside on_meta, so adapters added later are meta too)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_config(config)


def model_before_adapters(config, encoder, scratch: Path, recipe: str) -> nn.Module:
    """The recipe's model on the meta device, with our vision encoder in place of its ViT when the recipe sets one
    (`encoder`: its vision_encoder settings or None; call inside on_meta)."""
    from custom_modules.vision_encoder.training import prepare_model

    model = meta_model(config)
    if encoder:
        try:
            prepare_model(model, encoder_on_disk(encoder, scratch), pretrained=False)
        except (OSError, ValueError) as error:
            raise PlanError(f"{recipe}: {' '.join(str(error).split())}") from error
    return model


def attach_forgery(model: nn.Module, forgery, recipe: str) -> None:
    """Our forgery head / fusion on the adapted model, as training attaches them (`forgery`: its settings)."""
    from custom_modules.checkpoints import transformers_model
    from custom_modules.forgery.attach import build_modules

    try:
        transformers_model(model).add_module("forgery", build_modules(model, forgery))
    except ValueError as error:  # head blocks outside the model's ViT
        raise PlanError(f"{recipe}: {error}") from error


def candidate_modules(model: nn.Module) -> dict[str, bool]:
    """Every module name before any adapter is added -> whether a LoRA target can be that module."""
    return {name: isinstance(module, LORA_LAYERS) for name, module in model.named_modules() if name}


def saved_name(name: str) -> str:
    """A parameter's name as adapter files and checkpoints write it (PEFT's prefix and adapter name removed)."""
    name = LORA_PARAMETER.sub(lambda m: f".{m.group(1)}.", name.removeprefix(ADAPTER_PREFIX))
    return TRAINED_COPY.sub(".", name)


def module_name(name: str) -> str:
    return name.removeprefix(ADAPTER_PREFIX)


def lora_modules(model: nn.Module) -> list[str]:
    return [module_name(name) for name, module in model.named_modules()
            if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)]


def trained_copies(model: nn.Module) -> list[str]:
    """Modules PEFT trains whole (modules_to_save)."""
    return [module_name(name) for name, module in model.named_modules()
            if isinstance(getattr(module, "modules_to_save", None), nn.ModuleDict)]


def parameters(model: nn.Module, learning_rate: float, groups: list[dict] | None = None) -> list[Parameter]:
    """Every parameter of `model`, the trainable ones at their learning rate: their optimizer group's (`groups`, as
    the trainer builds them) or the one `learning_rate`."""
    rates = {id(param): group["lr"] for group in groups or [] for param in group["params"]}
    found = []
    for name, param in model.named_parameters():
        lora = bool(LORA_PARAMETER.search(name))
        added = lora or bool(TRAINED_COPY.search(name))
        rate = (rates.get(id(param)) if groups else learning_rate) if param.requires_grad else None
        found.append(Parameter(saved_name(name.replace(FROZEN_ORIGINAL, ".")), param.numel(), param.requires_grad,
                               added, lora, rate))
    return found


def part_of(name: str) -> str:
    return next((part for part, pattern in PARTS if re.search(pattern, name)), OTHER)


def regex_branches(regex: str) -> list[tuple[str, str]]:
    """The alternatives of the regex's first group with several (or of the whole regex), each with the regex that
    keeps only it: [(alternative, regex)]; [] when the regex has no alternatives. A target_regex listing modules
    (`^(.*\\.)?(blocks\\.7\\.attn\\.qkv|self_attn\\.q_proj)$`) is checked entry by entry this way."""
    bars: dict[int, list[int]] = {-1: []}  # group start (-1: the whole regex) -> its top-level | positions
    groups, stack, in_class, i = [], [], False, 0
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            stack.append(i)
            bars[i] = []
        elif char == ")" and stack:
            groups.append((stack.pop(), i))
        elif char == "|":
            bars[stack[-1] if stack else -1].append(i)
        i += 1
    for start, end in [(-1, len(regex))] + sorted(groups):
        if bars[start]:
            content = start + (3 if regex.startswith("(?:", start) else 1)
            cuts = [content - 1] + bars[start] + [end]
            return [(regex[a + 1:b], regex[:content] + regex[a + 1:b] + regex[end:]) for a, b in zip(cuts, cuts[1:])]
    return []


def regex_patterns(key: str, regex: str, rule: str, drops: Callable[[str], str | None]) -> list[Pattern]:
    """One pattern per alternative of `regex` (re.fullmatch on module names, PEFT's rule for a str target)."""
    branches = regex_branches(regex) or [(regex, regex)]
    return [Pattern(key, text, lambda name, r=re.compile(branch): r.fullmatch(name) is not None, rule, drops=drops)
            for text, branch in branches]


def resolve_patterns(patterns: list[Pattern], candidates: dict[str, bool], model: nn.Module,
                     placed: bool = True) -> list[PatternResult]:
    """What each pattern reached in `model` after the trainer placed its adapters (`placed`; else, the trainer having
    refused, what its rule would reach among `candidates`, the modules before), and what the trainer's settings took
    out of its matches."""
    lora, copies = lora_modules(model), trained_copies(model)
    results = []
    for pattern in patterns:
        eligible = [name for name, layer in candidates.items() if (layer or pattern.full) and pattern.matches(name)]
        if placed:
            reached = [name for name in (copies if pattern.full else lora) if pattern.matches(name)]
        else:
            reached = [name for name in eligible if not pattern.drops(name)]
        dropped: dict[str, list[str]] = {}
        for name in eligible:
            if name not in reached and (reason := pattern.drops(name)):
                dropped.setdefault(reason, []).append(name)
        results.append(PatternResult(pattern, reached, dropped))
    return results


def pattern_errors(recipe: str, results: list[PatternResult], model: str) -> list[str]:
    """One line per pattern that reached nothing, naming the recipe, the key, the pattern and why."""
    errors = []
    for result in results:
        if result.reached:
            continue
        pattern = result.pattern
        where = f"{recipe}: {pattern.key} '{pattern.text}'"
        if result.dropped:
            reason, names = next(iter(result.dropped.items()))
            errors.append(f"{where} matches only module{'s' if len(names) > 1 else ''} ({examples(names, 1)}) that "
                          f"{reason} takes out of training")
        else:
            errors.append(f"{where} matches no module of {model} ({pattern.rule})")
    return errors


def training_failure(recipe: str, error: Exception) -> PlanError:
    message = " ".join(str(error).split()) or type(error).__name__
    return PlanError(f"{recipe}: the trainer refuses the recipe's training setup: {message}")


# ---- the report ---------------------------------------------------------------------------------------------------


def count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def examples(names: list[str], shown: int = 2) -> str:
    more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def parts(plan: Plan) -> dict[str, dict]:
    """part -> {parameters, trainable, how, learning_rates} in PARTS order (parts the model lacks left out)."""
    table: dict[str, dict] = {}
    for param in plan.parameters:
        row = table.setdefault(part_of(param.name), {"parameters": 0, "trainable": 0, "lora_modules": set(),
                                                       "full": False, "copy": False, "learning_rates": set()})
        if not param.added:
            row["parameters"] += param.numel
        if param.trainable:
            row["trainable"] += param.numel
            row["learning_rates"].add(param.learning_rate)
            if param.lora:
                row["lora_modules"].add(LORA_SAVED.split(param.name)[0])
            elif param.added:
                row["copy"] = True
            else:
                row["full"] = True
    ordered = {}
    for part in [p for p, _ in PARTS] + [OTHER]:
        if part not in table:
            continue
        row = table[part]
        how = []
        if row["full"] or row["copy"]:
            how.append("full" + (" (a trained copy: modules_to_save)" if row["copy"] else ""))
        if row["lora_modules"]:
            how.append(f"LoRA on {len(row['lora_modules'])} modules")
        ordered[part] = {"parameters": row["parameters"], "trainable": row["trainable"],
                         "how": " + ".join(how) or "frozen",
                         "learning_rates": sorted(r for r in row["learning_rates"] if r is not None)}
    return ordered


def render(plan: Plan) -> str:
    lines = [f"plan of {plan.recipe}", f"  trainer: {plan.trainer}", f"  model:   {plan.model} on the meta device",
             f"  method:  {plan.method}"]
    for full in (False, True):
        chosen = [r for r in plan.patterns if r.pattern.full == full]
        if not chosen:
            continue
        lines.append("trained whole (PEFT modules_to_save):" if full else "LoRA targets:")
        for result in chosen:
            pattern = result.pattern
            reached = examples(result.reached, 1) if result.reached else "NOTHING"
            lines.append(f"  {pattern.key} {pattern.text:<28} {len(result.reached):>5}  {reached}")
            for reason, names in result.dropped.items():
                lines.append(f"  {'':<{len(pattern.key) + 29}}{len(names):>5}  more matched, which {reason} takes "
                             f"out: {examples(names, 1)}")
    table = parts(plan)
    lines.append(f"{'part':<32}{'parameters':>12}{'trainable':>12}  {'how':<44}lr")
    for part, row in table.items():
        rates = ", ".join(f"{r:g}" for r in row["learning_rates"]) or "-"
        lines.append(f"{part:<32}{count(row['parameters']):>12}{count(row['trainable']):>12}  {row['how']:<44}{rates}")
    total = sum(row["parameters"] for row in table.values())
    trainable = sum(row["trainable"] for row in table.values())
    share = f" ({100 * trainable / total:.3f}%)" if total else ""
    lines.append(f"{'total':<32}{count(total):>12}{count(trainable):>12}{share}")
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def to_json(plan: Plan) -> dict:
    table = parts(plan)
    return {
        "recipe": plan.recipe, "trainer": plan.trainer, "model": plan.model, "method": plan.method,
        "patterns": [{"key": r.pattern.key, "pattern": r.pattern.text, "whole_module": r.pattern.full,
                      "reached": r.reached, "dropped": r.dropped} for r in plan.patterns],
        "parts": table,
        "parameters": sum(row["parameters"] for row in table.values()),
        "trainable_parameters": sum(row["trainable"] for row in table.values()),
        "trainable": plan.trainable_names,
        "warnings": plan.warnings, "errors": plan.errors,
    }
