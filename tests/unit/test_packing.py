"""LLaMA-Factory's padding-free batches for Qwen-VL (`packing: true`, `neat_packing: true`, sdpa): a packed row of
several COCO-shaped samples, with its block-diagonal attention mask and M-RoPE positions rebuilt per sample, gives the
loss and gradients of the same samples in a padded batch. Without the block-diagonal mask it does not."""

import json

import pytest
import torch

from tools.bench_data import write_bench_data
from tools.tiny_models import TINY_MAX_PIXELS, TINY_MIN_PIXELS

SAMPLES = 4


def collated(model, model_path, data_dir, family, packing: bool) -> dict:
    """One batch of every sample of data_dir as LLaMA-Factory's SFT workflow builds it: packed into one row, or padded."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(dict(
        model_name_or_path=str(model_path), stage="sft", do_train=True, finetuning_type="full", template="qwen2_vl",
        dataset_dir=str(data_dir), dataset="bench_train", cutoff_len=1024, packing=packing, neat_packing=packing,
        image_min_pixels=TINY_MIN_PIXELS[family], image_max_pixels=TINY_MAX_PIXELS[family], flash_attn="sdpa",
        output_dir=str(data_dir / "out"), overwrite_cache=True, report_to="none"))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)["train_dataset"]
    assert len(dataset) == (1 if packing else SAMPLES)
    collator = SFTDataCollatorWith4DAttentionMask(
        template=template, model=model, label_pad_token_id=-100, block_diag_attn=model_args.block_diag_attn,
        attn_implementation="sdpa", compute_dtype=torch.float32, neat_packing=packing, **tokenizer_module)
    return collator([dataset[i] for i in range(len(dataset))])


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_packed_row_gives_the_loss_and_gradients_of_the_padded_batch(tiny_model_dir, tmp_path, family):
    from transformers import AutoModelForImageTextToText

    path = tiny_model_dir(family)
    data = write_bench_data(tmp_path, "grounding", SAMPLES, family, TINY_MIN_PIXELS[family], TINY_MAX_PIXELS[family])
    assert len({len(row["messages"][1]["content"]) for row in json.loads((data / "bench_train.json").read_text())}) > 1
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    padded, packed = collated(model, path, data, family, False), collated(model, path, data, family, True)
    assert packed["attention_mask"].dim() == 4 and packed["position_ids"].shape[-1] == packed["input_ids"].shape[1]

    expected_loss, expected_grads = loss_and_grads(model, padded)
    loss, grads = loss_and_grads(model, packed)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # the same row attending across its samples is another computation: the comparison above can fail
    crossed = dict(packed, attention_mask=torch.ones_like(packed["input_ids"]))
    _, crossed_grads = loss_and_grads(model, crossed)
    assert any(not torch.allclose(crossed_grads[n], expected_grads[n], rtol=1e-4, atol=1e-6) for n in grads)
