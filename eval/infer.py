"""Batched generation with transformers (left padding, the family's chat template, peft adapters from
LLaMA-Factory or ms-swift, a custom vision encoder's saved output through its own loader)."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from converters.geometry import FACTORS, llamafactory_prescale, smart_resize_qwen_vl_utils
from eval.data import IMAGE_TOKEN, EvalSample, load_image
from eval.parse import BoxConvention
from qwenvl_recipes.io import InputError

FAMILY_BY_MODEL_TYPE = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl"}


SWIFT_RUN = re.compile(r"^v(\d+)-")  # ms-swift's run folders: <output_dir>/v<N>-<date>/
PEFT_CONFIG = "adapter_config.json"


def resolve_adapter(path: str | Path) -> Path:
    """The checkpoint dir eval loads: `path` itself when it holds a peft adapter (adapter_config.json), else
    the last checkpoint-N (transformers' get_last_checkpoint) holding an adapter or a custom encoder's
    vision_encoder/, of its newest ms-swift run vN-<date>/ (highest N) or of `path` itself (a LLaMA-Factory
    output_dir, or one ms-swift run), else `path` when it holds a custom encoder's vision_encoder/ alone
    (stage 1 trains no LoRA)."""
    from transformers.trainer_utils import get_last_checkpoint  # transformers only when an adapter is given

    from custom_modules.vision_encoder.training import has_saved_encoder

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--adapter {path}: no such directory")
    if (path / PEFT_CONFIG).is_file():
        return path
    runs = [p for p in path.iterdir() if p.is_dir() and SWIFT_RUN.match(p.name)]
    runs.sort(key=lambda p: int(SWIFT_RUN.match(p.name).group(1)), reverse=True)
    for folder in (*runs, path):
        last = get_last_checkpoint(folder)
        if last and ((Path(last) / PEFT_CONFIG).is_file() or has_saved_encoder(last)):
            return Path(last)
    if has_saved_encoder(path):
        return path
    raise FileNotFoundError(f"--adapter {path}: no {PEFT_CONFIG} (peft adapter) or vision_encoder/ (custom vision "
                            "encoder) in it, nor in the last checkpoint-N/ of it or of its newest ms-swift run vN-*/")


def chat_messages(prompt: list[dict]) -> list[dict]:
    """sharegpt messages with `<image>` placeholders -> the content-list form the chat templates read."""
    messages = []
    for m in prompt:
        parts = []
        for i, text in enumerate(str(m["content"]).split(IMAGE_TOKEN)):
            if i:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": m["role"], "content": parts})
    return messages


def load_resized(path: str, convention: BoxConvention) -> Image.Image:
    """The image at the size the trainer fed it (converters.geometry): boxes in resized pixels then
    mean the same thing in training, references and eval."""
    image = load_image(path)
    return image.resize(convention.resized(image.size), Image.Resampling.BICUBIC)


def load_for_encoder(path: str, convention: BoxConvention, image_processor) -> Image.Image:
    """The image as the trainer hands it to a custom encoder's image processor, which then brings it to the
    encoder's square itself: LLaMA-Factory scales it into image_min/max_pixels (its Qwen2-VL plugin's
    pre-scale); ms-swift's qwen3_vl template resizes it with qwen-vl-utils to multiples of the processor's
    patch x merge size, MIN_PIXELS / MAX_PIXELS counted in tokens of Qwen3-VL's own 32 px."""
    image = load_image(path)
    width, height = image.size
    if convention.resize_path == "llamafactory":
        size = llamafactory_prescale(width, height, convention.max_pixels, convention.min_pixels)
    elif convention.resize_path == "swift":
        factor, token = image_processor.patch_size * image_processor.merge_size, FACTORS["qwen3_vl"] ** 2
        height, width = smart_resize_qwen_vl_utils(height, width, factor, convention.min_pixels // token * factor ** 2,
                                                   convention.max_pixels // token * factor ** 2)
        size = (width, height)
    else:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


DTYPES = ("float32", "bfloat16", "float16")


def resolve_device_dtype(device: str | None, dtype: str | None) -> tuple[str, str]:
    """(device, torch dtype name): cuda when available, else cpu; bfloat16 on cuda, float32 on cpu."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return device, dtype or ("bfloat16" if device.startswith("cuda") else "float32")


@contextlib.contextmanager
def loading(what: str):
    """transformers' or peft's failure to find or read a model (a folder without weights, a hub id not in the
    cache offline, an adapter whose weights do not fit the model) as one line naming `what` was loaded."""
    try:
        yield
    except (OSError, RuntimeError, KeyError) as error:
        raise InputError(f"{what}: {' '.join(str(error).split())}") from error


def passthrough_size(images: list[Image.Image]) -> dict:
    """Processor limits that keep already-resized images as they are (smart_resize is then the identity)."""
    if not images:
        return {}
    return {"size": {"shortest_edge": min(w * h for w, h in (i.size for i in images)),
                     "longest_edge": max(w * h for w, h in (i.size for i in images))}}


@dataclass
class Generation:
    text: str
    score: float | None = None  # P(fake) for forgery


class TransformersGenerator:
    """Greedy generation by the base model, through the peft adapter when one is given; an adapter dir holding
    a custom encoder's vision_encoder/ is loaded by custom_modules.vision_encoder's load_trained (base model,
    the encoder and merger it names, the LoRA beside them), with the encoder's image processor."""

    def __init__(self, model: str, adapter: str | None, *, convention: BoxConvention,
                 device: str | None = None, dtype: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from custom_modules.vision_encoder.training import has_saved_encoder, load_trained

        self.torch = torch
        self.device, dtype = resolve_device_dtype(device, dtype)
        self.adapter = resolve_adapter(adapter) if adapter else None
        self.load_image = partial(load_resized, convention=convention)
        if self.adapter is not None and has_saved_encoder(self.adapter):
            with loading(f"--model {model} with the custom encoder of --adapter {self.adapter}"):
                self.model, self.processor = load_trained(model, self.adapter, dtype=getattr(torch, dtype))
            self.load_image = partial(load_for_encoder, convention=convention,
                                      image_processor=self.processor.image_processor)
        else:
            with loading(f"--model {model}"):
                self.processor = AutoProcessor.from_pretrained(model)
                self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype))
            if self.adapter is not None:
                from custom_modules.checkpoints import load_adapter
                with loading(f"--adapter {self.adapter} on --model {model}"):
                    self.model = load_adapter(self.model, self.adapter)
        self.model.to(self.device).eval()
        model_type = self.model.config.model_type
        if model_type not in FAMILY_BY_MODEL_TYPE:
            raise ValueError(f"--model {model}: model_type {model_type!r} is not a Qwen-VL family "
                             f"({', '.join(FAMILY_BY_MODEL_TYPE)})")
        self.family = FAMILY_BY_MODEL_TYPE[model_type]
        self.processor.tokenizer.padding_side = "left"  # generation continues every row at the same column
        self.convention = convention
        tokenizer = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids |= {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id}

    def first_token_id(self, word: str) -> int:
        ids = self.processor.tokenizer.encode(word, add_special_tokens=False)
        if not ids:
            raise ValueError(f"word {word!r} encodes to no token")
        return ids[0]

    def prompt_text(self, sample: EvalSample) -> str:
        return self.processor.apply_chat_template(chat_messages(sample.prompt), tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, batch: list[EvalSample]):
        """The model inputs of a batch: prompts in the chat template, images at the size training fed them."""
        images = [self.load_image(p) for s in batch for p in s.images]
        return self.processor(text=[self.prompt_text(s) for s in batch], images=images or None, padding=True,
                              return_tensors="pt", **passthrough_size(images)).to(self.device)

    def generate(self, batch: list[EvalSample], max_new_tokens: int,
                 score_words: tuple[str, str] | None = None) -> list[Generation]:
        """Greedy answers; with score_words=(real, fake), also P(fake) from the first answer token's logits
        restricted to the two words' first tokens."""
        torch = self.torch
        inputs = self.encode(batch)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.processor.tokenizer.pad_token_id,
                                      output_logits=score_words is not None, return_dict_in_generate=True)
        new_tokens = out.sequences[:, inputs["input_ids"].shape[1]:].tolist()
        scores = [None] * len(batch)
        if score_words is not None:
            real_id, fake_id = (self.first_token_id(w) for w in score_words)
            if real_id == fake_id:
                raise ValueError(f"real/fake words {score_words} start with the same token; "
                                 "their first-token probabilities cannot tell them apart")
            pair = out.logits[0][:, [fake_id, real_id]].float()
            scores = torch.softmax(pair, dim=-1)[:, 0].tolist()
        generations = []
        for ids, score in zip(new_tokens, scores):
            cut = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
            # Special tokens stay: Qwen2-VL boxes are written with <|box_start|> and friends.
            text = self.processor.tokenizer.decode(ids[:cut], skip_special_tokens=False)
            generations.append(Generation(text=text, score=score))
        return generations


class ForgeryHeadScorer:
    """A forgery checkpoint (custom_modules.forgery: adapters + forgery_head.safetensors) scored by its own
    mode: P(fake) from the head, the answer word or their mix, exactly as custom_modules.forgery.evaluate
    computes it; the answer is the fake word when P(fake) >= the checkpoint's threshold, else the real word.
    Images reach the processor as the checkpoint records its trainer fed them (custom_modules.forgery.data)."""

    def __init__(self, model: str, checkpoint: Path, *, words: tuple[str, str] | None = None,
                 device: str | None = None):
        """words: (real, fake) answer words; None: the checkpoint's own (its negative/positive responses)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from custom_modules.forgery.checkpoint import load_checkpoint

        self.device, _ = resolve_device_dtype(device, None)
        with loading(f"--model {model}"):
            self.processor = AutoProcessor.from_pretrained(model)
            base = AutoModelForImageTextToText.from_pretrained(model).to(self.device)
        model_type = base.config.model_type
        if model_type not in FAMILY_BY_MODEL_TYPE:
            raise ValueError(f"--model {model}: model_type {model_type!r} is not a Qwen-VL family "
                             f"({', '.join(FAMILY_BY_MODEL_TYPE)})")
        self.family = FAMILY_BY_MODEL_TYPE[model_type]
        with loading(f"--adapter {checkpoint} on --model {model}"):
            self.model, self.modules = load_checkpoint(base, checkpoint, self.processor.tokenizer)
        self.model.to(self.device)
        self.adapter = Path(checkpoint)
        settings = self.modules.settings
        self.real_word, self.fake_word = words or (settings.negative_response, settings.positive_response)

    def describe(self) -> str:
        settings = self.modules.settings
        return (f"the checkpoint's forgery {settings.mode} score (custom_modules.forgery), answer = "
                f"{self.fake_word!r} when P(fake) >= {settings.threshold}")

    def generate(self, batch: list[EvalSample], max_new_tokens: int = 0,
                 score_words: tuple[str, str] | None = None) -> list[Generation]:
        from custom_modules.forgery.evaluate import predict

        rows = [{"messages": s.prompt + [{"role": "assistant", "content": str(s.reference)}], "images": s.images,
                 "label": s.extra.get("label", 0), "mask": s.extra.get("mask")} for s in batch]
        records, _, _ = predict(self.model, self.modules, self.processor, rows, batch_size=len(rows))
        return [Generation(text=self.decide(r["score"]), score=r["score"]) for r in records]

    def decide(self, score: float) -> str:
        """The checkpoint's answer for P(fake) `score`: the fake word from its threshold on."""
        return self.fake_word if score >= self.modules.settings.threshold else self.real_word
