"""The batched segment attention gives the vision towers' own per-segment attention, forward and backward."""

import pytest
import torch

from custom_modules.speedups.vision_attention import (ATTN_NAME, flash_varlen_usable, grouped_sdpa_attention,
                                                      segments_of, use_segment_attention, varlen_flash_attention)

# (t, h, w) patch grids: one square image (every window full: the reshape path) and a mix of sizes whose
# windows and images differ in length (the grouped path).
GRIDS = {"even": [[1, 16, 16]], "mixed": [[1, 16, 16], [1, 10, 14], [1, 6, 6]]}


def tower_output_and_grads(visual, grid):
    torch.manual_seed(0)
    grid_thw = torch.tensor(grid)
    cfg = visual.config
    width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    pixels = torch.randn(int(grid_thw.prod(-1).sum()), width)
    visual.zero_grad()
    out = visual(pixels, grid_thw=grid_thw)
    merged = out.pooler_output
    (merged * torch.randn_like(merged)).sum().backward()
    return merged.detach(), {n: p.grad.clone() for n, p in visual.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", sorted(GRIDS))
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_segment_attention_matches_per_segment_loop(tiny_model_dir, family, layout):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family), dtype=torch.float32,
                                                        attn_implementation="sdpa")
    visual = model.model.visual
    expected, expected_grads = tower_output_and_grads(visual, GRIDS[layout])

    assert use_segment_attention(model) == 1
    assert visual.config._attn_implementation == ATTN_NAME
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # the LM keeps its attention
    got, grads = tower_output_and_grads(visual, GRIDS[layout])

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert use_segment_attention(model) == 0  # already switched


def test_segment_plan_groups_by_length():
    even = segments_of(torch.tensor([0, 4, 8, 12], dtype=torch.int32))
    assert [(length, index, count) for length, index, count in even.plan] == [(4, None, 3)]
    assert even.max_length == 4
    mixed = segments_of(torch.tensor([0, 4, 6, 10, 10, 12], dtype=torch.int32))
    assert [(length, index.tolist(), count) for length, index, count in mixed.plan] == [
        (4, [[0, 1, 2, 3], [6, 7, 8, 9]], 2), (2, [[4, 5], [10, 11]], 2)]
    assert mixed.max_length == 4


def test_flash_varlen_only_where_the_kernel_runs():
    assert not flash_varlen_usable(torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16), dropout=0.0)  # CPU
    if torch.cuda.is_available():
        half = torch.zeros(1, 2, 4, 80, dtype=torch.bfloat16, device="cuda")
        assert flash_varlen_usable(half, dropout=0.0)
        assert not flash_varlen_usable(half, dropout=0.1)
        assert not flash_varlen_usable(half.float(), dropout=0.0)
        assert not flash_varlen_usable(half[..., :76], dropout=0.0)


# COCO-like mixes: Qwen2.5-VL edge windows (64 and smaller), Qwen3-VL whole images (hundreds to ~1000 patches)
SEGMENT_LENGTHS = {"windows": [64, 64, 32, 48, 64, 16, 40, 64, 8], "images": [1024, 780, 1008, 600, 896]}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's flash kernel runs only on CUDA")
@pytest.mark.parametrize("dim", [72, 80])  # head sizes of Qwen3-VL's and Qwen2.5-VL's vision towers
@pytest.mark.parametrize("mix", sorted(SEGMENT_LENGTHS))
def test_varlen_flash_matches_grouped_sdpa_on_cuda(mix, dim):
    lengths = SEGMENT_LENGTHS[mix]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    segments = segments_of(cu)
    torch.manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 16, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(sum(lengths), 16, dim, device="cuda", dtype=torch.bfloat16)
    results = []
    for attention, inputs in ((varlen_flash_attention, (q, k, v)),
                              (grouped_sdpa_attention, tuple(t.float() for t in (q, k, v)))):
        out = attention(*inputs, segments, dim ** -0.5, False)
        results.append((out.float(), *torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))))
    for got, expected in zip(*results):  # bf16 flash against a float32 reference
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_aligned_vision_mlp_gives_the_same_tower_and_keeps_checkpoint_shapes(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    from custom_modules.speedups.vision_mlp import align_vision_mlps

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl"), dtype=torch.float32)
    visual = model.model.visual
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    grid = torch.tensor(GRIDS["mixed"])
    cfg = visual.config
    pixels = torch.randn(int(grid.prod(-1).sum()), cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2)
    with torch.no_grad():
        expected = visual(pixels, grid_thw=grid).pooler_output

    visual.requires_grad_(True)
    assert align_vision_mlps(model, multiple=48) == 0  # trainable weights: left alone
    visual.requires_grad_(False)
    assert align_vision_mlps(model, multiple=64) == 0  # width 64 is already aligned
    assert align_vision_mlps(model, multiple=48) == cfg.depth  # 64 -> 96
    mlp = visual.blocks[0].mlp
    assert mlp.aligned_gate_weight.shape == (96, cfg.hidden_size) and mlp.aligned_down_weight.shape[1] == 96
    with torch.no_grad():
        got = visual(pixels, grid_thw=grid).pooler_output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes  # checkpoints keep the published shapes

    mlp.up_proj.weight.requires_grad_(True)  # unfrozen afterwards: transformers' own forward again
    with torch.no_grad():
        mlp.up_proj.weight.mul_(2)
        changed = visual(pixels, grid_thw=grid).pooler_output
    assert not torch.allclose(changed, expected)


def test_lora_input_under_autocast_gives_the_same_loss_and_gradients(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from custom_modules.speedups.lora_input import keep_lora_input_dtype

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl"), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                                            target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}  # peft's upcast
    ids = torch.randint(0, 1000, (2, 12))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected_loss, expected_grads = loss_and_grads()
    n_layers = base.config.get_text_config().num_hidden_layers
    assert keep_lora_input_dtype(model) == 3 * n_layers
    assert keep_lora_input_dtype(model) == 0
    loss, grads = loss_and_grads()
    assert torch.equal(loss, expected_loss)
    assert grads.keys() == expected_grads.keys() and len(grads) == 6 * n_layers
    for name in grads:
        assert grads[name].dtype == torch.float32  # fp32 weights keep fp32 gradients
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=0, msg=name)


def test_speedups_settings():
    from custom_modules.speedups import DEFAULTS, parse_settings

    assert parse_settings({}) == DEFAULTS and parse_settings(None) == DEFAULTS
    assert parse_settings({"compile_vision": True})["compile_vision"] is True
    with pytest.raises(ValueError, match=r"unknown setting\(s\) qwenvl_recipes\.speedups\.vision_atention; "
                                         r"known: qwenvl_recipes\.speedups\.vision_attention, "):
        parse_settings({"vision_atention": False})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) QVR_SPEEDUPS_VISION_ATENTION; "
                                         r"known: QVR_SPEEDUPS_VISION_ATTENTION, "):  # ms-swift ENV
        parse_settings({"vision_atention": False}, where="QVR_SPEEDUPS")
    with pytest.raises(ValueError, match=r"qwenvl_recipes\.speedups\.lora_input must be bool, got 'yes' \(str\)"):
        parse_settings({"lora_input": "yes"})


def test_callback_applies_speedups_only_as_configured(tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForImageTextToText

    from custom_modules.speedups import SpeedupsCallback, parse_settings

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_5_vl"), attn_implementation="sdpa")
    model.requires_grad_(False)
    callback = SpeedupsCallback(parse_settings({"vision_mlp": False}))
    callback.on_train_begin(SimpleNamespace(bf16=False), None, None, model=model)
    assert model.model.visual.config._attn_implementation == ATTN_NAME
    assert not hasattr(model.model.visual.blocks[0].mlp, "aligned_down_weight")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_compile_switches_compile_exactly_the_vision_blocks_and_decoder_layers(tiny_model_dir, family):
    from transformers import AutoModelForImageTextToText

    from custom_modules.speedups import DEFAULTS, apply_speedups

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family))
    off = {k: False for k in DEFAULTS}
    assert apply_speedups(model, dict(off, compile_language=True), autocast=False) == {
        "compile_language": model.config.text_config.num_hidden_layers}
    compiled = {name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == {f"model.language_model.layers.{i}" for i in range(model.config.text_config.num_hidden_layers)}
    depth = len(model.model.visual.blocks)
    assert apply_speedups(model, dict(off, compile_vision=True), autocast=False) == {"compile_vision": depth}


def test_skip_cudnn_attention_switches_off_only_cudnn_sdpa_for_the_process():
    import torch

    from custom_modules.speedups import DEFAULTS, apply_speedups

    backends = ("cudnn", "flash", "mem_efficient")
    before = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")() for name in backends}
    off = {k: False for k in DEFAULTS}
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert apply_speedups(torch.nn.Linear(2, 2), dict(off, skip_cudnn_attention=True), autocast=False) == {
            "skip_cudnn_attention": 1}
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() == before["flash"]
        assert torch.backends.cuda.mem_efficient_sdp_enabled() == before["mem_efficient"]
        assert apply_speedups(torch.nn.Linear(2, 2), dict(off, skip_cudnn_attention=True), autocast=False) == {
            "skip_cudnn_attention": 0}
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before["cudnn"])


def lora_model(tiny_model_dir, dtype, dropout):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen3_vl"), dtype=dtype)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, init_lora_weights=False,
                                           target_modules=targets))


def seeded_loss_and_grads(model, ids, autocast):
    torch.manual_seed(1)  # the same dropout masks, if drawn in the same order from the same stream
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def largest_relative_error(grads, expected):
    return max(float((grads[n] - expected[n]).norm() / expected[n].norm()) for n in expected)


# bf16: peft rounds the product, the scaled product and the sum in turn, the addmm rounds once
@pytest.mark.parametrize("dtype, autocast, tolerance", [(torch.float32, False, 1e-5), (torch.bfloat16, True, 0.1)])
def test_lora_addmm_gives_peft_loss_and_gradients(tiny_model_dir, dtype, autocast, tolerance):
    from custom_modules.speedups.lora_addmm import use_addmm_lora

    model = lora_model(tiny_model_dir, dtype, dropout=0.3)
    model.train()
    ids = torch.randint(0, 1000, (2, 12))
    expected_loss, expected_grads = seeded_loss_and_grads(model, ids, autocast)
    n_layers = model.base_model.model.config.get_text_config().num_hidden_layers
    assert use_addmm_lora(model) == 7 * n_layers
    assert use_addmm_lora(model) == 0  # already switched
    loss, grads = seeded_loss_and_grads(model, ids, autocast)

    torch.testing.assert_close(loss, expected_loss, rtol=tolerance / 10, atol=0)
    assert grads.keys() == expected_grads.keys() and len(grads) == 14 * n_layers
    assert {g.dtype for g in grads.values()} == {torch.float32}  # fp32 LoRA weights keep fp32 gradients
    assert largest_relative_error(grads, expected_grads) < tolerance
    # other dropout masks move the gradients far more: the comparison above sees a change of random stream
    torch.manual_seed(2)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, labels=ids).loss.backward()
    other = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert largest_relative_error(other, expected_grads) > 5 * tolerance


def test_lora_addmm_leaves_disabled_and_merged_adapters_to_peft(tiny_model_dir):
    from custom_modules.speedups.lora_addmm import use_addmm_lora

    model = lora_model(tiny_model_dir, torch.float32, dropout=0.0)
    model.eval()
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(tuned, base)  # the random adapters change the output
    use_addmm_lora(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, tuned, rtol=1e-5, atol=1e-5)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base, rtol=0, atol=0)
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=ids).logits, tuned, rtol=1e-4, atol=1e-4)
