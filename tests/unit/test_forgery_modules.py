"""Forgery modules on the tiny Qwen2.5-VL: settings, ViT block capture, fusion tokens, LoRA placement, loss
terms, LM answer score, checkpoint round trip, recipes and the trainer-entry dispatch."""
import os
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from transformers import AutoModelForImageTextToText, AutoProcessor

from custom_modules.forgery.attach import (FUSION_POSITIONS, IGNORE_INDEX, add_fusion_placeholders, collator_fusion,
                                           find_modules, insert_fusion_tokens)
from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import load_checkpoint, save_checkpoint
from custom_modules.forgery.data import Collator
from custom_modules.forgery.head import DetectionHead, HeadOutput
from custom_modules.forgery.lora import prepare_model
from custom_modules.forgery.losses import forgery_loss, heatmap_loss, upsample_heatmaps
from custom_modules.forgery.settings import MODES, default_head_blocks, parse_settings, resolve_blocks
from custom_modules.forgery.vit import find_visual, lora_target_regex, lora_targets, patch_layout
from custom_modules.integrations.env_settings import recipe_features
from custom_modules.integrations.llamafactory_cli import RecipeError, feature_callbacks, read_recipe
from tests.e2e.forgery_liger_worker import bind_liger_forward
from tools.synthetic_data import make_forgery

REPO = Path(__file__).resolve().parents[2]
TINY = {"head_blocks": [0, 1], "head_dim": 16, "fusion_tokens": 2, "mask_size": 16}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    path = tiny_model_dir("qwen2_5_vl")
    return path, AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Two reals, two fakes with masks, one fake without its mask (converter-shaped rows)."""
    root = tmp_path_factory.mktemp("forgery_rows")
    make_forgery(root, n=4, seed=5)
    import json
    listed = json.loads((root / "list.json").read_text())
    out = [{"messages": [{"role": "user", "content": "<image>Is this image real or manipulated?"},
                         {"role": "assistant", "content": "fake" if r["label"] else "real"}],
            "images": [str(root / r["image_path"])], "label": r["label"],
            "mask": str(root / r["mask_path"]) if r["label"] else None} for r in listed]
    return out + [dict(out[1], mask=None)]


def build(tiny, mode, **extra):
    path, processor = tiny
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path)
    return prepare_model(model, parse_settings(dict(TINY, mode=mode, **extra)), processor.tokenizer)


def test_settings_validation_names_the_key():
    assert parse_settings({"mode": "T3"}).mode == "hybrid"
    assert default_head_blocks(32) == (7, 15, 23, 31) and default_head_blocks(2) == (0, 1)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) qwenvl_recipes\.forgery\.head_block; "
                                         r"known: qwenvl_recipes\.forgery\.mode, "):
        parse_settings({"mode": "T1", "head_block": [1]})
    with pytest.raises(ValueError, match=r"qwenvl_recipes\.forgery\.head_checkpoint is required"):
        parse_settings({"mode": "T4"})
    with pytest.raises(ValueError, match="QVR_FORGERY_HEAD_CHECKPOINT is required"):  # an ms-swift ENV block
        parse_settings({"mode": "T4"}, where="QVR_FORGERY")
    with pytest.raises(ValueError, match=r"head_blocks \[7, 15, 23, 31\]: \[7, 15, 23, 31\] outside .* depth 2"):
        resolve_blocks(parse_settings({"mode": "T1", "head_blocks": [7, 15, 23, 31]}), 2)
    assert resolve_blocks(parse_settings({"mode": "T1", "vit_lora_blocks": [31]}), 32) == ((7, 15, 23, 31), (31,))


def processor_rows(grid_thw: list[list[int]], merge: int) -> torch.Tensor:
    """Block-output rows in the processor's order (t, h/m, w/m, m, m), each holding 100 * frame + y * W + x."""
    values = []
    for t, h, w in grid_thw:
        for frame in range(t):
            for by in range(h // merge):
                for bx in range(w // merge):
                    values += [100 * frame + (by * merge + iy) * w + bx * merge + ix
                               for iy in range(merge) for ix in range(merge)]
    return torch.tensor(values, dtype=torch.float32)[:, None]


def canvas_of(layout, rows: torch.Tensor) -> torch.Tensor:
    """What the head reads: each image's positions on the padded canvas (frames averaged), NaN outside."""
    batch, height, width = layout.valid.shape
    picked = rows[layout.rows][..., 0]
    picked = picked[:, 0] if layout.frame_weight is None else (picked * layout.frame_weight).sum(1)
    return torch.full((batch * height * width,), float("nan")).index_copy(0, layout.canvas_index, picked).reshape(
        batch, height, width)


def test_block_outputs_placed_on_their_images(tiny):
    visual = find_visual(AutoModelForImageTextToText.from_pretrained(tiny[0]))
    grid_thw = [[1, 8, 12], [1, 6, 4]]
    merge = visual.spatial_merge_size
    states = processor_rows(grid_thw, merge)
    window_index, _ = visual.get_window_index(torch.tensor(grid_thw))
    permuted = states.reshape(-1, merge * merge, 1)[window_index].reshape(states.shape)  # what the ViT does
    assert not torch.equal(permuted, states)
    layout = patch_layout(visual, grid_thw, permuted.device)
    canvas = canvas_of(layout, permuted)
    assert layout.sizes == [(8, 12), (6, 4)] and layout.frame_weight is None
    assert torch.equal(canvas[0], torch.arange(96.0).reshape(8, 12))
    assert torch.equal(canvas[1, :6, :4], torch.arange(24.0).reshape(6, 4))
    assert canvas[1, 6:].isnan().all() and canvas[1, :, 4:].isnan().all()
    assert torch.equal(layout.valid, ~canvas.isnan())


def test_frames_of_an_image_are_averaged():
    visual = types.SimpleNamespace(spatial_merge_size=2)  # a tower without windows (Qwen2-VL, Qwen3-VL)
    grid_thw = [[2, 4, 4], [1, 2, 6]]
    layout = patch_layout(visual, grid_thw, torch.device("cpu"))
    canvas = canvas_of(layout, processor_rows(grid_thw, 2))
    assert torch.equal(canvas[0, :, :4], 50 + torch.arange(16.0).reshape(4, 4))  # frames 0 and 1: 100 apart
    assert torch.equal(canvas[1, :2], torch.arange(12.0).reshape(2, 6)) and canvas[1, 2:].isnan().all()


def per_image_head(head: DetectionHead, grids: list[list[torch.Tensor]]) -> tuple[torch.Tensor, list, torch.Tensor]:
    """The head image by image, on each image's own (D, H, W) maps: what one padded canvas must equal."""
    logits, heatmaps, features = [], [], []
    for per_block in zip(*grids):
        projected = [p(g.permute(1, 2, 0)).permute(2, 0, 1) for p, g in zip(head.project, per_block)]
        fused = head.fuse(torch.cat(projected).unsqueeze(0))[0]
        heat = head.heatmap(fused.unsqueeze(0))[0, 0]
        pooled = torch.cat([fused.mean((1, 2)), fused.amax((1, 2))])
        logits.append(head.classify(torch.cat([pooled, heat.amax().reshape(1)]))[0])
        heatmaps.append(heat)
        features.append(pooled)
    return torch.stack(logits), heatmaps, torch.stack(features)


def test_head_on_one_canvas_equals_the_head_image_by_image():
    torch.manual_seed(0)
    head = DetectionHead(vit_dim=12, num_blocks=2, head_dim=8)
    visual = types.SimpleNamespace(spatial_merge_size=2)
    grid_thw = [[1, 6, 4], [1, 2, 8], [1, 4, 4]]
    patches = sum(t * h * w for t, h, w in grid_thw)
    states = [torch.randn(patches, 12, requires_grad=True) for _ in range(2)]
    out = head(patch_layout(visual, grid_thw, torch.device("cpu")), states)
    # the same rows as (D, H, W) maps per image, in raster order
    order = processor_rows(grid_thw, 2)[:, 0].long()
    grids, offset = [], 0
    for _, h, w in grid_thw:
        raster = torch.argsort(order[offset:offset + h * w])
        grids.append([s[offset:offset + h * w][raster].T.reshape(12, h, w) for s in states])
        offset += h * w
    logits, heatmaps, features = per_image_head(head, [list(b) for b in zip(*grids)])
    torch.testing.assert_close(out.image_logits, logits)
    torch.testing.assert_close(out.features, features)
    for got, want in zip(out.heatmaps, heatmaps, strict=True):
        torch.testing.assert_close(got, want)
    (out.image_logits.sum() + sum(h.sum() for h in out.heatmaps)).backward()
    got_grads = [s.grad.clone() for s in states]
    for s in states:
        s.grad = None
    (logits.sum() + sum(h.sum() for h in heatmaps)).backward()
    for got, s in zip(got_grads, states):
        torch.testing.assert_close(got, s.grad)


def test_vit_lora_only_on_chosen_blocks_and_head_trains(tiny):
    model, modules = build(tiny, "vit_lora_head", vit_lora_blocks=[1])
    lora = {n.split(".lora_")[0].split("visual.")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora == {f"blocks.1.{linear}" for linear in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj",
                                                          "mlp.down_proj")}
    assert all(p.requires_grad for p in modules.head.parameters()) and modules.fusion is None
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("language_model" in n for n in names)


@pytest.mark.parametrize("mode, recorded", [("lm_supervised", False), ("head_pretrain", False), ("hybrid", True),
                                             ("vit_lora_head", True)])
def test_the_tower_records_a_graph_only_where_its_blocks_train(tiny, rows, mode, recorded):
    """T2 and head pretraining train nothing in the tower: its blocks keep no activations for a backward pass."""
    model, modules = build(tiny, mode)
    visual = find_visual(model)
    seen = []
    visual.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].requires_grad))
    model(**Collator(tiny[1], 16, with_answer=mode in ("lm_supervised", "hybrid"))(rows[:2])).loss.backward()
    assert seen == [recorded]


def test_lm_score_is_the_answer_word_probability(tiny, rows):
    path, processor = tiny
    model, modules = build(tiny, "lm_supervised")
    batch = Collator(processor, 16, with_answer=False)(rows[:3])
    model.eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if not k.startswith("forgery_")})
        reference = AutoModelForImageTextToText.from_pretrained(path).eval()  # LoRA starts as the identity
        logits = reference(**{k: v for k, v in batch.items() if not k.startswith("forgery_")}).logits
    last = batch["attention_mask"].cumsum(1).argmax(1)
    neg, pos = modules.answer_ids
    two = logits[torch.arange(3), last][:, [neg, pos]].softmax(-1)[:, 1]
    assert torch.allclose(out.lm_fake_prob, two, atol=1e-5) and torch.allclose(out.score, two, atol=1e-5)
    assert processor.tokenizer.decode([pos]) == "fake" and processor.tokenizer.decode([neg]) == "real"


@pytest.mark.parametrize("mode", ["hybrid", "lm_supervised"])
def test_forgery_forward_is_put_back_in_front_of_one_the_trainer_binds_later(tiny, rows, mode):
    path, processor = tiny
    model, modules = build(tiny, mode)
    batch = Collator(processor, 16)(rows[:3])
    model.eval()  # the fusion's dropout off: two forwards compare exactly
    expected = model(**batch)
    hf = model.get_base_model()
    bind_liger_forward(hf)
    assert not isinstance(model(**batch), type(expected))  # the plain LM: no head, no fusion, no answer score
    callback = ForgeryCallback(modules.settings, lambda: processor)
    callback.on_train_begin(None, types.SimpleNamespace(log_history=[]), None, model=model)
    out = model(**batch)
    assert torch.allclose(out.loss, expected.loss, atol=1e-5) and torch.allclose(out.score, expected.score, atol=1e-5)
    out.loss.backward()
    trained = modules.head.project[0][1].weight if mode == "hybrid" else next(
        p for n, p in model.named_parameters() if "lora_B" in n and "language_model" in n)
    assert trained.grad is not None and trained.grad.abs().sum() > 0
    callback.on_train_begin(None, types.SimpleNamespace(log_history=[]), None, model=model)  # once is enough
    assert hf.forward.args[1].__func__.__name__ == "forward" and hf.forward.args[1].__self__ is hf


class HostReads(TorchFunctionMode):
    """The calls that read a value of the `device` tensors, or of tensors computed from them, back into the host:
    on a GPU each one makes the host wait until the device has computed it. On the CPU nothing waits, so the
    tensors are followed by identity instead: `.cpu()` is the one read that yields host data (a copy, as on a
    GPU); a boolean mask index counts, since the result's size is data the host needs."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__index__, torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu}

    def __init__(self, device_tensors):
        super().__init__()
        self.device, self.reads = list(device_tensors), []

    def on_device(self, value) -> bool:
        return isinstance(value, torch.Tensor) and any(value is d for d in self.device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not any(map(self.on_device, tree_leaves((args, kwargs)))):
            return out
        masked = func is torch.Tensor.__getitem__ and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1:]))
        if func in self.READS or masked:
            self.reads.append(func.__name__)
        if func is torch.Tensor.cpu:
            return out.clone()
        self.device += [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
        return out


def test_fusion_layout_and_head_layout_read_the_batch_once(tiny, rows):
    """T3/T5's fusion tokens: one host copy of the batch, not reads row by row (on a GPU, ~10 waits a row in
    transformers' get_rope_index); the head's patch layout: from the grid read before the tower ran."""
    model, modules = build(tiny, "hybrid")
    batch = Collator(tiny[1], 16)(rows[:3])
    hf = model.get_base_model()
    with HostReads(batch.values()) as reads:
        insert_fusion_tokens(hf, dict(batch), 2, modules.settings.fusion_token_id)
    assert reads.reads == ["cpu"]
    with HostReads(batch.values()):  # the capture's host copy of the grid is a copy here too
        model(**batch)
    capture = modules.capture
    with HostReads([*capture.outputs.values(), batch["image_grid_thw"]]) as reads:
        capture.layout()
    assert reads.reads == []  # the grid was read before the tower ran: nothing waits for the tower


def test_fusion_placeholders_in_a_trainers_samples():
    sample = {"input_ids": [5, 7, 9, 3], "labels": [-100, -100, 9, 3], "loss_scale": [0.0, 0.0, 1.0, 1.0],
              "mm_token_type_ids": torch.tensor([0, 1, 0, 0]), "images": ["a.png"]}
    grown = add_fusion_placeholders(sample, 2, 42, vision_end_id=7)
    assert grown["input_ids"] == [5, 7, 42, 42, 9, 3] and grown["labels"] == [-100, -100, -100, -100, 9, 3]
    assert grown["loss_scale"] == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0] and grown["images"] == ["a.png"]
    assert torch.equal(grown["mm_token_type_ids"], torch.tensor([0, 1, 0, 0, 0, 0]))
    assert sample["input_ids"] == [5, 7, 9, 3]  # the trainer's sample is left as it was
    with pytest.raises(ValueError, match=r"sample entry 'labels' has 3 values for 4 tokens"):
        add_fusion_placeholders(dict(sample, labels=[1, 2, 3]), 2, 42, vision_end_id=7)
    with pytest.raises(ValueError, match=r"a batch row has no <\|vision_end\|> token"):
        add_fusion_placeholders(sample, 2, 42, vision_end_id=8)


def test_collator_layout_equals_the_forward_layout(tiny, rows):
    """A trainer's collator places the placeholders in its samples before it pads them (its M-RoPE positions then
    count them): the same ids, labels, mask, positions and loss as the forward laying out the batch itself."""
    model, modules = build(tiny, "hybrid")
    model.eval()
    hf, settings = model.get_base_model(), modules.settings
    batch = Collator(tiny[1], 16)(rows[:3])
    keys = {"input_ids": tiny[1].tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    samples = [{k: batch[k][i][batch["attention_mask"][i].bool()].tolist() for k in keys} for i in range(3)]

    def pad(samples):  # a trainer's collation: rows padded on the right
        length = max(len(s["input_ids"]) for s in samples)
        return {k: torch.tensor([s[k] + [fill] * (length - len(s[k])) for s in samples]) for k, fill in keys.items()}

    collated = collator_fusion(samples, settings, hf.config.vision_end_token_id, pad)
    extra = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "forgery_labels", "forgery_masks",
                                   "forgery_mask_valid")}
    plain = dict(pad(samples), **extra)
    grown, positions = insert_fusion_tokens(hf, dict(plain), settings.fusion_tokens, settings.fusion_token_id)
    for key in keys:
        assert torch.equal(collated[key], grown[key]), key
    assert torch.equal(collated[FUSION_POSITIONS], positions)
    image_tokens = (collated["input_ids"] == hf.config.image_token_id).long()
    position_ids, _ = hf.model.get_rope_index(input_ids=collated["input_ids"], image_grid_thw=batch["image_grid_thw"],
                                              attention_mask=collated["attention_mask"], mm_token_type_ids=image_tokens)
    assert torch.equal(position_ids, grown["position_ids"])
    with torch.no_grad():
        laid_out_by_forward = model(**plain).loss
        laid_out_by_collator = model(**collated, **extra, position_ids=position_ids).loss
    torch.testing.assert_close(laid_out_by_collator, laid_out_by_forward)


def test_fusion_tokens_name_a_row_without_its_image(tiny, rows):
    model, modules = build(tiny, "hybrid")
    batch = dict(Collator(tiny[1], 16)(rows[:2]))
    hf = model.get_base_model()
    ids = batch["input_ids"].clone()
    ids[1][ids[1] == hf.config.vision_end_token_id] = hf.config.vision_start_token_id  # truncated before its end
    with pytest.raises(ValueError, match=r"a batch row has no <\|vision_end\|> token"):
        insert_fusion_tokens(hf, dict(batch, input_ids=ids), 2, modules.settings.fusion_token_id)


def test_fusion_tokens_enter_the_lm_input(tiny, rows):
    path, processor = tiny
    model, modules = build(tiny, "hybrid", cls_weight=0.0, heatmap_weight=0.0)
    batch = Collator(processor, 16)(rows[:2])
    hf = model.get_base_model()
    grown, positions = insert_fusion_tokens(hf, dict(batch), 2, modules.settings.fusion_token_id)
    end = hf.config.vision_end_token_id
    for i in range(2):
        cut = int((batch["input_ids"][i] == end).nonzero()[0]) + 1
        assert grown["input_ids"][i, cut:cut + 2].tolist() == [modules.settings.fusion_token_id] * 2
        assert positions[i].nonzero().flatten().tolist() == [cut, cut + 1]
        assert grown["labels"][i, cut:cut + 2].tolist() == [IGNORE_INDEX] * 2
        assert torch.equal(grown["input_ids"][i, cut + 2:], batch["input_ids"][i, cut:])
    types = (grown["input_ids"] == hf.config.image_token_id).long()
    expected, _ = hf.model.get_rope_index(input_ids=grown["input_ids"], mm_token_type_ids=types,
                                          image_grid_thw=batch["image_grid_thw"],
                                          attention_mask=grown["attention_mask"])
    assert torch.equal(grown["position_ids"], expected)
    # classification and heatmap weights are 0: the LM loss reaches projector and head only through the
    # inserted tokens
    out = model(**batch)
    out.loss.backward()
    assert torch.isclose(out.loss, modules.last_parts["lm_loss"])
    assert modules.fusion.net[-1].weight.grad.abs().sum() > 0
    assert modules.head.project[0][1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_hybrid_trains_on_the_other_families(tiny_model_dir, rows, family):
    path = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(path)
    model, modules = prepare_model(AutoModelForImageTextToText.from_pretrained(path),
                                   parse_settings(dict(TINY, mode="hybrid")), processor.tokenizer)
    out = model(**Collator(processor, 16)(rows[:2]))
    out.loss.backward()
    assert set(modules.last_parts) == {"cls_loss", "heatmap_loss", "lm_loss"} and out.score.shape == (2,)
    lora_b = [p.grad for n, p in model.named_parameters() if "visual.blocks.0" in n and "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    assert modules.fusion.net[-1].weight.grad.abs().sum() > 0


def test_loss_skips_and_counts_maskless_fakes():
    heat = [torch.randn(4, 6, requires_grad=True), torch.randn(4, 6), torch.randn(5, 5, requires_grad=True)]
    head = HeadOutput(torch.tensor([0.3, -0.2, 1.0]), heat, torch.zeros(3, 4))
    labels = torch.tensor([0.0, 1.0, 1.0])
    masks = torch.zeros(3, 8, 8)
    masks[1, 2:5, 2:5] = 1
    valid = torch.tensor([True, True, False])
    with HostReads([head.image_logits, *heat, labels, masks, valid]) as reads:
        total, parts = forgery_loss(head, labels, masks, valid, torch.tensor(2.0), cls_weight=1.0,
                                    heatmap_weight=0.5, lm_weight=0.25)
    assert reads.reads == []  # nothing waits for the device: the unknown mask is weighted out, not selected
    # the reference selects the rows with a known mask: BCE over their pixels, Dice over the one with a region
    known = upsample_heatmaps(heat[:2], 8)
    prob = torch.sigmoid(known[1])
    dice = 1 - (2 * (prob * masks[1]).sum() + 1) / (prob.sum() + masks[1].sum() + 1)
    expected_hm = torch.nn.functional.binary_cross_entropy_with_logits(known, masks[:2]) + dice
    bce = torch.nn.functional.binary_cross_entropy_with_logits(head.image_logits, labels)
    assert parts["maskless_fakes"] == 1
    assert torch.isclose(parts["heatmap_loss"], expected_hm)
    assert torch.isclose(total, bce + 0.5 * expected_hm + 0.25 * 2.0)
    total.backward()
    assert heat[0].grad.abs().sum() > 0 and torch.equal(heat[2].grad, torch.zeros(5, 5))


def test_heatmap_loss_without_a_known_mask_is_zero():
    heat = torch.randn(2, 8, 8, requires_grad=True)
    masks = torch.zeros(2, 8, 8)
    masks[0, :3] = 1
    loss = heatmap_loss(heat, masks, torch.tensor([False, False]))
    loss.backward()
    assert loss.item() == 0 and torch.equal(heat.grad, torch.zeros_like(heat))
    # no region in any known mask: BCE alone
    assert torch.isclose(heatmap_loss(heat, masks, torch.tensor([False, True])),
                         torch.nn.functional.binary_cross_entropy_with_logits(heat[1], masks[1]))


def test_heatmap_warmup_then_heatmap(tiny, rows):
    model, modules = build(tiny, "head_pretrain", heatmap_start_step=2)
    batch = Collator(tiny[1], 16, with_answer=False)(rows)
    model(**batch)
    assert set(modules.last_parts) == {"cls_loss"}
    modules.global_step = 2
    model(**batch)
    assert set(modules.last_parts) == {"cls_loss", "heatmap_loss"} and modules.maskless_fakes == 1  # counted where the heatmap loss runs


def test_checkpoint_round_trip_and_frozen_head(tiny, rows, tmp_path):
    path, processor = tiny
    model, modules = build(tiny, "hybrid")
    batch = Collator(processor, 16, with_answer=False)(rows)
    with torch.no_grad():  # move the head and adapters off their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    with torch.no_grad():
        before = model(**batch).score
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, loaded_modules = load_checkpoint(AutoModelForImageTextToText.from_pretrained(path), tmp_path / "ckpt",
                                             processor.tokenizer)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).score, before, atol=1e-5)
    frozen, frozen_modules = build(tiny, "frozen_head_hybrid", head_checkpoint=str(tmp_path / "ckpt"))
    assert not any(p.requires_grad for p in frozen_modules.head.parameters())
    assert all(p.requires_grad for p in frozen_modules.fusion.parameters())
    assert torch.equal(frozen_modules.head.classify[0].weight, modules.head.classify[0].weight)
    assert find_modules(frozen) is frozen_modules


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_recipes_match_their_mode(trainer, mode):
    variant = {"vit_lora_head": "t1_vit_lora_head", "lm_supervised": "t2_lm_supervised", "hybrid": "t3_hybrid",
               "frozen_head": "t4_frozen_head", "frozen_head_hybrid": "t5_frozen_head_hybrid",
               "head_pretrain": "head_pretrain"}[mode]
    path = REPO / "recipes/forgery" / trainer / f"qwen2_5_vl_7b_{variant}.yaml"
    recipe = yaml.safe_load(path.read_text())
    # LLaMA-Factory: the qwenvl_recipes block; ms-swift: the ENV block's QVR_FORGERY_* variables
    features = recipe["qwenvl_recipes"] if trainer == "llamafactory" else recipe_features(recipe, str(path))
    settings = parse_settings(features["forgery"])
    assert settings.mode == mode
    _, vit_blocks = resolve_blocks(settings, 32)  # the 7B ViT depth
    spec = settings.spec
    targets = lora_targets("qwen2_5_vl", vit_blocks if spec.vit_lora else (), spec.lm_lora)
    if trainer == "llamafactory":
        assert recipe["finetuning_type"] == ("lora" if targets else "freeze")
        assert recipe.get("lora_target", "").split(",") == (targets or [""])
        assert recipe.get("freeze_vision_tower", True) is not spec.vit_lora
    else:
        assert recipe.get("target_regex") == (lora_target_regex(targets) if targets else None)


@pytest.mark.parametrize("lora_block,warned", [(0, True), (1, False)])
def test_llamafactory_warns_at_training_start_when_lora_and_head_blocks_disagree(tiny, monkeypatch, caplog,
                                                                                  lora_block, warned):
    """The head reads ViT block 1; LoRA on block 0 is named when LLaMA-Factory loads the model (qvr-plan says it
    before: tests/unit/test_plan.py)."""
    import llamafactory.train.sft.workflow as workflow
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from llamafactory.model import load_tokenizer
    from transformers import HfArgumentParser

    from custom_modules.integrations.llamafactory_forgery import setup

    for name in ("get_dataset", "load_model", "SFTDataCollatorWith4DAttentionMask"):  # setup patches them
        monkeypatch.setattr(workflow, name, getattr(workflow, name))
    setup({"mode": "T1", "head_blocks": [1], "head_dim": 16}, {})
    model_args, finetuning_args = HfArgumentParser((ModelArguments, FinetuningArguments)).parse_dict(
        {"model_name_or_path": str(tiny[0]), "finetuning_type": "lora", "freeze_vision_tower": False,
         "lora_target": f"blocks.{lora_block}.attn.qkv"}, allow_extra_keys=True)
    with caplog.at_level("WARNING"):
        workflow.load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args, is_trainable=True)
    placement = [r.getMessage() for r in caplog.records if r.getMessage().startswith("forgery mode")]
    assert placement == ([f"forgery mode vit_lora_head: LoRA sits on ViT blocks [0], but the head reads blocks [1] "
                          f"(qwenvl_recipes.forgery.head_blocks) and the mode expects LoRA on blocks [1] "
                          f"(qwenvl_recipes.forgery.vit_lora_blocks, default: the head blocks): the recipe's LoRA "
                          f"targets and the settings disagree"] if warned else [])


def test_llamafactory_cli_splits_the_block_and_dispatches(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\nqwenvl_recipes:\n  forgery:\n    mode: T1\n")
    args, block = read_recipe([str(recipe), "qwenvl_recipes.forgery.head_dim=64", "max_steps=3"])
    assert args == {"stage": "sft", "max_steps": 3} and block == {"forgery": {"mode": "T1", "head_dim": 64}}
    # each feature is "module:function(settings, args)", imported when used, returning callbacks
    assert feature_callbacks("r.yaml", {"demo": [1]}, [2], {"demo": "operator:concat"}) == [1, 2]
    with pytest.raises(RecipeError, match=r"r\.yaml: qwenvl_recipes\.forgeryy: unknown feature"):
        feature_callbacks("r.yaml", {"forgeryy": {}}, {})
    # a bad setting is named with its key and the recipe file
    with pytest.raises(RecipeError, match=r"r\.yaml: .*qwenvl_recipes\.forgery\.head_checkpoint is required"):
        feature_callbacks("r.yaml", {"forgery": {"mode": "T4"}}, {"output_dir": str(tmp_path)})


def test_llamafactory_cli_launches_torchrun_as_llamafactory_cli_does(monkeypatch):
    from custom_modules.integrations.llamafactory_cli import WORKER_MODULE, torchrun_command

    for key, value in dict(NNODES="2", NODE_RANK="1", NPROC_PER_NODE="4", MASTER_ADDR="10.0.0.1",
                           MASTER_PORT="29500").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RDZV_ID", raising=False)
    command = torchrun_command(["r.yaml", "max_steps=1"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[3:] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4", "--master_addr", "10.0.0.1",
                           "--master_port", "29500", "-m", WORKER_MODULE, "r.yaml", "max_steps=1"]
    monkeypatch.setenv("RDZV_ID", "job")
    monkeypatch.setenv("MIN_NNODES", "1")
    monkeypatch.setenv("MAX_NNODES", "3")
    assert torchrun_command(["r.yaml"])[3:13] == ["--nnodes", "1:3", "--nproc-per-node", "4", "--rdzv-id", "job",
                                                  "--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29500"]


@pytest.mark.parametrize("given, expected", [
    ({}, "expandable_segments:True"),  # LLaMA-Factory's default for its torchrun workers, on one process
    ({"OPTIM_TORCH": "1", "PYTORCH_CUDA_ALLOC_CONF": "backend:native"}, None),  # the user's own setting is kept
    ({"OPTIM_TORCH": "1", "PYTORCH_ALLOC_CONF": ""}, None),  # torch's newer name, even empty, is the user's too
    ({"OPTIM_TORCH": "0"}, None),  # LLaMA-Factory's switch turns it off
])
def test_single_process_train_tunes_the_allocator_as_torchrun_workers(monkeypatch, given, expected):
    import torch

    from custom_modules.integrations import llamafactory_cli

    for key in ("OPTIM_TORCH", *llamafactory_cli.ALLOC_CONF_VARIABLES):
        monkeypatch.setenv(key, given.get(key, ""))  # recorded, so what main() sets is undone after the test
        if key not in given:
            monkeypatch.delenv(key)
    # CUDA is initialised before train runs and reads the variable no more, so the setting must reach the allocator
    handed_to_allocator = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", handed_to_allocator.append)
    trained = []
    monkeypatch.setattr(llamafactory_cli, "distributed", lambda: False)
    monkeypatch.setattr(llamafactory_cli, "train", lambda argv: trained.append(
        (argv, {key: os.environ.get(key) for key in llamafactory_cli.ALLOC_CONF_VARIABLES})))
    llamafactory_cli.main(["train", "r.yaml", "max_steps=1"])
    environment = {key: given.get(key) for key in llamafactory_cli.ALLOC_CONF_VARIABLES}
    if expected:
        environment["PYTORCH_CUDA_ALLOC_CONF"] = expected
    assert trained == [(["r.yaml", "max_steps=1"], environment)]
    assert handed_to_allocator == ([expected] if expected else [])
