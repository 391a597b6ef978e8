"""Custom vision encoder in Qwen3-VL on tiny offline models: interface, token counts, stages, save/reload."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from custom_modules.vision_encoder.processing import EncoderImageProcessor, attach_image_processor
from custom_modules.vision_encoder.settings import parse_settings
from custom_modules.vision_encoder.training import (apply_stage, load_trained, param_groups, prepare_model,
                                                    save_vision_encoder)
from tools.model_configs import tiny_config
from tools.tiny_dinov2 import RAD_DINO_MEAN, RAD_DINO_STD, TINY_DINOV2, ensure_tiny_dinov2

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_PAD = 151655
TINY_TOKENS = (TINY_DINOV2["image_size"] // TINY_DINOV2["patch_size"]) ** 2  # 16
# prefix_tokens -> the tokens an image gives: the dinov2 default drops the CLS token, 0 keeps it (patches + 1)
TOKENS_KEPT = {None: TINY_TOKENS, 0: TINY_TOKENS + 1}


@pytest.fixture(scope="module")
def dinov2_dir():
    return ensure_tiny_dinov2(REPO_ROOT / ".cache" / "tiny-dinov2")


def settings_for(dinov2_dir, **overrides):
    return parse_settings({"encoder": "dinov2", "encoder_path": str(dinov2_dir), **overrides})


def tiny_qwen3_vl(tiny_model_dir, settings):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    base = tiny_model_dir("qwen3_vl")
    torch.manual_seed(0)
    model = prepare_model(Qwen3VLForConditionalGeneration.from_pretrained(base), settings)
    processor = attach_image_processor(AutoProcessor.from_pretrained(base), settings, 2)
    return model, processor


def image(seed, size=(90, 70)):
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


def batch(processor, images, answers=None):
    """A right-padded chat batch, one image per sample; labels = the answer tokens when answers are given."""
    texts = []
    for index, _ in enumerate(images):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Findings?"}]}]
        if answers:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[index]}]})
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=not answers))
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, return_mm_token_type_ids=True)
    if answers:
        inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs


def snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def changed_parts(before, model):
    """{part: names that changed} after training; parts keyed like training.part_of."""
    from custom_modules.vision_encoder.training import part_of

    changed = {}
    for name, param in model.named_parameters():
        if name in before and not torch.equal(before[name], param.detach()):
            changed.setdefault(part_of(name), []).append(name)
    return changed


def train_steps(model, inputs, settings, steps=3, lr=1e-2):
    optimizer = torch.optim.AdamW(param_groups(model, settings, lr), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_settings_errors_name_the_field(dinov2_dir):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) qwenvl_recipes\.vision_encoder\.encoder_lrr"):
        settings_for(dinov2_dir, encoder_lrr=1e-5)
    with pytest.raises(ValueError, match="merger='conv'"):
        settings_for(dinov2_dir, merger="conv")
    with pytest.raises(ValueError, match="stage 1 trains the merger only"):
        settings_for(dinov2_dir, encoder_training="lora")
    with pytest.raises(ValueError, match=r"qwenvl_recipes\.vision_encoder\.encoder_path is required"):
        parse_settings({"encoder": "dinov2"})
    with pytest.raises(ValueError, match="QVR_VISION_ENCODER_ENCODER_PATH is required"):  # an ms-swift ENV block
        parse_settings({"encoder": "dinov2"}, source="QVR_VISION_ENCODER")


def test_processor_uses_encoder_size_and_normalisation(dinov2_dir):
    processor = EncoderImageProcessor(image_size=56, patch_size=14, merge_size=2,
                                      image_mean=RAD_DINO_MEAN, image_std=RAD_DINO_STD)
    grey = Image.new("RGB", (200, 120), (51, 51, 51))
    out = processor([grey, image(1)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 56, 56)
    assert out["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]  # 4x4 tokens announced as an 8x8 grid / 2x2
    with_cls = EncoderImageProcessor(image_size=56, patch_size=14, merge_size=2, leading_tokens=1)
    assert with_cls([grey], return_tensors="pt")["image_grid_thw"].tolist() == [[1, 2, 34]]  # 17 tokens in a row
    expected = (51 / 255 - RAD_DINO_MEAN[0]) / RAD_DINO_STD[0]
    assert torch.allclose(out["pixel_values"][0], torch.full((3, 56, 56), expected), atol=1e-5)
    # The encoder's own preprocessor_config.json supplies size and RAD-DINO's mean / std.
    from custom_modules.vision_encoder.processing import encoder_image_processor

    own = encoder_image_processor(settings_for(dinov2_dir), merge_size=2)
    assert (own.image_size, own.patch_size, own.image_mean, own.image_std) == (56, 14, RAD_DINO_MEAN, RAD_DINO_STD)


@pytest.mark.parametrize("prefix_tokens", sorted(TOKENS_KEPT, key=str))
def test_prompt_placeholders_equal_encoder_tokens_in_hf_and_llamafactory(tiny_model_dir, dinov2_dir, prefix_tokens):
    from llamafactory.data.mm_plugin import get_mm_plugin

    tokens = TOKENS_KEPT[prefix_tokens]
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings_for(dinov2_dir, prefix_tokens=prefix_tokens))
    images = [image(1, (300, 200)), image(2, (40, 64))]  # sizes do not matter: the encoder input is fixed
    inputs = batch(processor, images)
    assert (inputs["input_ids"] == IMAGE_PAD).sum(1).tolist() == [tokens, tokens]
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert [f.shape for f in features.pooler_output] == [(tokens, 64)] * 2
    assert features.deepstack_features == []
    if prefix_tokens == 0:  # the CLS token goes first, as the encoder gives it
        with torch.no_grad():
            encoded = model.model.visual.encoder(pixel_values=inputs["pixel_values"][:1]).last_hidden_state
            assert torch.allclose(features.pooler_output[0][:1], model.model.visual.merger(encoded[:, :1])[0],
                                  atol=1e-5)

    plugin = get_mm_plugin(name="qwen3_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    messages = [{"role": "user", "content": "<image>Findings?"}, {"role": "assistant", "content": "Clear."}]
    expanded = plugin.process_messages(messages, images[:1], [], [], processor)
    assert expanded[0]["content"].count("<|image_pad|>") == tokens


SWIFT_TOKEN_COUNT = """
import json, os, sys
from PIL import Image
from swift.model import get_processor
from swift.template import get_template
# what a recipe's ENV block carries; importing the plugin registers the model type (as swift's import does)
os.environ.update(QVR_VISION_ENCODER_ENCODER="dinov2", QVR_VISION_ENCODER_ENCODER_PATH=sys.argv[2])
import custom_modules.integrations.swift_plugin
from custom_modules.integrations.swift_vision_encoder import MODEL_TYPE
row = {"messages": [{"role": "user", "content": "<image>Findings?"}, {"role": "assistant", "content": "Clear."}],
       "images": [Image.new("RGB", (300, 200), (10, 200, 30))]}
found = []
for prefix_tokens in ("null", "0"):  # the plugin reads the settings when swift loads the processor
    os.environ["QVR_VISION_ENCODER_PREFIX_TOKENS"] = prefix_tokens
    encoded = get_template(get_processor(sys.argv[1], model_type=MODEL_TYPE, check_model=False)).encode(row)
    found.append({"pads": encoded["input_ids"].count(151655), "pixels": list(encoded["pixel_values"].shape)})
print(json.dumps(found))
"""


def test_prompt_placeholders_equal_encoder_tokens_in_swift(tiny_model_dir, dinov2_dir, swift_bin):
    result = subprocess.run([str(swift_bin / "python"), "-c", SWIFT_TOKEN_COUNT, str(tiny_model_dir("qwen3_vl")),
                             str(dinov2_dir)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        {"pads": TOKENS_KEPT[None], "pixels": [1, 3, 56, 56]}, {"pads": TOKENS_KEPT[0], "pixels": [1, 3, 56, 56]}]


def test_forward_loss_generate_with_deepstack_off(tiny_model_dir, dinov2_dir):
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings_for(dinov2_dir))
    assert model.config.vision_config.deepstack_visual_indexes == []
    assert not hasattr(model.model.visual, "deepstack_merger_list")
    inputs = batch(processor, [image(1), image(2)], answers=["No acute findings.", "Small effusion."])
    loss = model(**inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.visual.merger.proj[0].weight.grad.abs().sum() > 0
    prompt = batch(processor, [image(1)])
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 4)


def test_merger_width_follows_the_base_model_config(dinov2_dir):
    from transformers import Qwen3VLForConditionalGeneration

    settings = settings_for(dinov2_dir)
    for lm_width in (64, 96):  # the 4B -> 8B move is this: only the base config changes
        config = tiny_config("qwen3_vl")
        config.text_config.hidden_size = lm_width
        model = prepare_model(Qwen3VLForConditionalGeneration(config), settings)
        merger = model.model.visual.merger
        assert (merger.norm.normalized_shape[0], merger.proj[-1].out_features) == (TINY_DINOV2["hidden_size"], lm_width)


def test_stage1_trains_only_the_merger(tiny_model_dir, dinov2_dir):
    settings = settings_for(dinov2_dir, stage=1)
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings)
    counts = apply_stage(model, settings)
    assert counts["encoder"] == counts["lm"] == 0 and counts["merger"] > 0
    before = snapshot(model)
    losses = train_steps(model, batch(processor, [image(1), image(2)], ["No acute findings.", "Effusion."]), settings)
    assert losses[-1] < losses[0]
    assert set(changed_parts(before, model)) == {"merger"}


def lora_model(model, settings, encoder_training="frozen"):
    """The trainers' stage 2: LM LoRA, the merger a modules_to_save; the encoder's LoRA (query, value) or the whole
    encoder as a modules_to_save (visual.encoder) as encoder_training says."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj"] + (["query", "value"] if encoder_training == "lora" else [])
    whole = ["merger"] + (["visual.encoder"] if encoder_training == "full" else [])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=whole, init_lora_weights=False)
    model = get_peft_model(model, config)
    apply_stage(model, settings)
    return model


@pytest.mark.parametrize("encoder_training", ["frozen", "lora", "full"])
def test_stage2_trains_merger_and_lora_only(tiny_model_dir, dinov2_dir, encoder_training):
    settings = settings_for(dinov2_dir, stage=2, encoder_training=encoder_training, merger_lr=5e-3, encoder_lr=1e-3)
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings)
    model = lora_model(model, settings, encoder_training)
    groups = {group["name"]: group["lr"] for group in param_groups(model, settings, 1e-2)}
    assert groups == {"merger": 5e-3, "lm": 1e-2, **({"encoder": 1e-3} if encoder_training != "frozen" else {})}
    before = snapshot(model)
    train_steps(model, batch(processor, [image(1), image(2)], ["No acute findings.", "Effusion."]), settings)
    changed = changed_parts(before, model)
    assert set(changed) == {"merger", "lm"} | ({"encoder"} if encoder_training != "frozen" else set())
    assert all("lora_" in name for name in changed["lm"])
    assert all("modules_to_save" in name for name in changed["merger"])
    if encoder_training != "frozen":  # the LoRA pairs, or the weights of the encoder's trained copy
        piece = "lora_" if encoder_training == "lora" else "visual.encoder.modules_to_save."
        assert all(piece in name for name in changed["encoder"])
        assert len(changed["encoder"]) > (10 if encoder_training == "full" else 0)


def test_stage2_full_encoder_must_be_trained_whole(tiny_model_dir, dinov2_dir):
    settings = settings_for(dinov2_dir, stage=2, encoder_training="full")
    model, _ = tiny_qwen3_vl(tiny_model_dir, settings)
    with pytest.raises(ValueError, match="encoder_training is full, but the encoder is not trained whole: add "
                                         "visual.encoder to additional_target"):
        lora_model(model, settings, "frozen")


def test_stage2_without_lora_is_refused(tiny_model_dir, dinov2_dir):
    settings = settings_for(dinov2_dir, stage=2)
    model, _ = tiny_qwen3_vl(tiny_model_dir, settings)
    with pytest.raises(ValueError, match="no LoRA parameters in the LM"):
        apply_stage(model, settings)


@pytest.mark.parametrize("whole", [["merger"], ["merger", "visual.encoder"]])
def test_stage_warnings_name_a_part_the_trainer_trains_otherwise(tiny_model_dir, dinov2_dir, whole):
    """ms-swift's own flags decide what trains: the settings' stage is checked against them when training starts."""
    from peft import LoraConfig, get_peft_model

    from custom_modules.vision_encoder.training import stage_warnings

    settings = settings_for(dinov2_dir, stage=2, encoder_training="full")
    model, _ = tiny_qwen3_vl(tiny_model_dir, settings)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=whole))
    expected = [] if "visual.encoder" in whole else [
        "QVR_VISION_ENCODER stage 2 (encoder_training full) trains the encoder whole, but this run freezes it"]
    assert stage_warnings(model, settings, "QVR_VISION_ENCODER") == expected


def test_save_reload_gives_the_same_predictions(tiny_model_dir, dinov2_dir, tmp_path):
    settings = settings_for(dinov2_dir, stage=2)
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings)
    model = lora_model(model, settings)
    inputs = batch(processor, [image(1), image(2)], ["No acute findings.", "Effusion."])
    train_steps(model, inputs, settings)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    save_vision_encoder(model, settings, tmp_path)

    reloaded, reloaded_processor = load_trained(tiny_model_dir("qwen3_vl"), tmp_path)
    assert json.loads((tmp_path / "vision_encoder" / "settings.json").read_text())["encoder_path"] == str(dinov2_dir)
    reloaded_inputs = batch(reloaded_processor, [image(1), image(2)], ["No acute findings.", "Effusion."])
    assert torch.equal(reloaded_inputs["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(reloaded(**reloaded_inputs).logits, expected, atol=1e-5)


class PatchEncoder(nn.Module):
    """A plain torch encoder: 8 px patches of a 32 px image -> 16 tokens of width 24."""

    hidden_size = 24

    def __init__(self):
        super().__init__()
        self.patchify = nn.Conv2d(3, self.hidden_size, kernel_size=8, stride=8)

    def forward(self, pixels):
        return self.patchify(pixels).flatten(2).transpose(1, 2)


def test_plain_torch_module_encoder(tiny_model_dir):
    settings = parse_settings({"encoder": "module", "encoder_path": f"{__name__}:PatchEncoder", "image_size": 32,
                               "patch_size": 8, "merger": "linear"})
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings)
    inputs = batch(processor, [image(3)], answers=["Clear."])
    assert (inputs["input_ids"] == IMAGE_PAD).sum() == 16
    assert torch.isfinite(model(**inputs).loss)


def test_token_count_mismatch_is_a_clear_error(tiny_model_dir, dinov2_dir):
    # a patch size the encoder does not have: the processor announces (56 / 7)^2 tokens, the encoder gives 16
    model, processor = tiny_qwen3_vl(tiny_model_dir, settings_for(dinov2_dir, patch_size=7))
    with pytest.raises(ValueError, match="returned 16 tokens per image, the processor announced 64"):
        model(**batch(processor, [image(1)]))
    with pytest.raises(ValueError, match="prefix_tokens 2: a dinov2 encoder gives 1 token"):
        tiny_qwen3_vl(tiny_model_dir, settings_for(dinov2_dir, prefix_tokens=2))
