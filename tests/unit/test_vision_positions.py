import pytest
import torch

from custom_modules.speedups import vision_positions
from custom_modules.speedups.vision_positions import TensorCache, transformers_table, use_cached_vision_positions

# (t, h, w) in patches: repeated, non-square, two frames, the smallest grid
GRID = [[1, 4, 6], [2, 8, 4], [1, 4, 6], [1, 2, 2]]


class CountingGrid(torch.Tensor):
    """A grid_thw tensor that counts how often it is read back to the host."""
    reads = 0

    def tolist(self):
        CountingGrid.reads += 1
        return super().tolist()


def qwen3_vl_tower(dtype=torch.bfloat16):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    from tools.model_configs import tiny_config

    torch.manual_seed(0)
    tower = Qwen3VLVisionModel._from_config(tiny_config("qwen3_vl").vision_config, dtype=dtype)
    return tower.eval().requires_grad_(False)  # frozen, as under LoRA


def tables(tower, grid):
    return tower.fast_pos_embed_interpolate(grid), tower.rot_pos_emb(grid)


def pixels(tower, grid):
    config = tower.config
    rows = sum(t * h * w for t, h, w in grid.tolist())
    width = config.in_channels * config.temporal_patch_size * config.patch_size**2
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(1)).to(tower.dtype)


def test_cached_tables_and_tower_output_are_bit_identical_to_transformers():
    tower = qwen3_vl_tower()
    grid = torch.tensor(GRID)
    expected = tables(tower, grid)
    expected_out = tower(pixels(tower, grid), grid_thw=grid)
    assert use_cached_vision_positions(tower) == 1
    for _ in range(2):  # the first fills the cache, the second is served from it
        for got, want in zip(tables(tower, torch.tensor(GRID)), expected):
            assert got.dtype == want.dtype and torch.equal(got, want)
    out = tower(pixels(tower, grid), grid_thw=torch.tensor(GRID))
    assert torch.equal(out.pooler_output, expected_out.pooler_output)
    for got, want in zip(out.deepstack_features, expected_out.deepstack_features):
        assert torch.equal(got, want)
    assert sorted(key[:2] for key in tower.position_cache.entries) == sorted(
        (name, size) for name in ("fast_pos_embed_interpolate", "rot_pos_emb")
        for size in {(1, 4, 6), (2, 8, 4), (1, 2, 2)})


def test_grid_is_read_back_once_per_forward_and_each_size_computed_once(monkeypatch):
    tower = qwen3_vl_tower()
    use_cached_vision_positions(tower)
    computed = []
    for key, method in list(vision_positions._ORIGINALS.items()):
        table = {"fast_pos_embed_interpolate": "pos_embed", "rot_pos_emb": "rotary"}[key[1]]
        monkeypatch.setitem(vision_positions._ORIGINALS, key, lambda self, grid, table=table, method=method: (
            computed.append((table, tuple(grid[0].tolist()))) or method(self, grid)))
    CountingGrid.reads = 0
    grid = torch.tensor(GRID).as_subclass(CountingGrid)
    tables(tower, grid)
    assert CountingGrid.reads == 1
    sizes = {(1, 4, 6), (2, 8, 4), (1, 2, 2)}
    assert sorted(computed) == sorted((table, size) for table in ("pos_embed", "rotary") for size in sizes)
    computed.clear()
    tables(tower, torch.tensor([[1, 2, 2], [1, 4, 6]]).as_subclass(CountingGrid))
    assert CountingGrid.reads == 2 and computed == []
    reused = torch.tensor([[1, 2, 2]])
    tower.rot_pos_emb(reused)
    reused[0, 1:] = torch.tensor([4, 6])  # the same tensor written in place is read again
    assert torch.equal(tower.rot_pos_emb(reused), transformers_table(tower, "rot_pos_emb", reused))


def test_trained_position_embedding_is_not_cached_and_gets_its_gradient():
    tower = qwen3_vl_tower(torch.float32)
    grid = torch.tensor(GRID)
    tower.pos_embed.weight.requires_grad_(True)
    tower.fast_pos_embed_interpolate(grid).square().sum().backward()
    expected_grad = tower.pos_embed.weight.grad.clone()
    tower.pos_embed.weight.grad = None
    use_cached_vision_positions(tower)
    tower.fast_pos_embed_interpolate(grid).square().sum().backward()
    assert torch.equal(tower.pos_embed.weight.grad, expected_grad)
    assert not tower.position_cache.entries


def test_an_updated_position_embedding_weight_is_not_served_from_the_cache():
    tower = qwen3_vl_tower()
    use_cached_vision_positions(tower)
    grid = torch.tensor(GRID)
    before = tower.fast_pos_embed_interpolate(grid)
    with torch.no_grad():
        tower.pos_embed.weight.mul_(2)  # an in-place update, as an optimizer step or load_state_dict makes
    after = tower.fast_pos_embed_interpolate(grid)
    assert torch.equal(after, transformers_table(tower, "fast_pos_embed_interpolate", grid))
    assert not torch.equal(after, before)


def test_tensor_cache_drops_least_recently_used_beyond_its_budget():
    cache = TensorCache(budget=3 * 4 * 10)  # three float32 tensors of 10 elements
    for key in "abc":
        cache.get(key, lambda: torch.zeros(10))
    cache.get("a", lambda: pytest.fail("a is cached"))
    cache.get("d", lambda: torch.zeros(10))
    assert list(cache.entries) == ["c", "a", "d"] and cache.bytes == 120
    cache.get("big", lambda: torch.zeros(100))  # larger than the budget alone: kept, the rest dropped
    assert list(cache.entries) == ["big"] and cache.bytes == 400


def test_other_towers_of_the_class_keep_transformers_tables_and_replicas_bind_to_themselves():
    tower, other = qwen3_vl_tower(), qwen3_vl_tower()
    use_cached_vision_positions(tower)
    grid = torch.tensor(GRID)
    other.fast_pos_embed_interpolate(grid), other.rot_pos_emb(grid)
    assert not hasattr(other, "position_cache")
    replica = tower._replicate_for_data_parallel()  # what nn.DataParallel runs on each GPU
    assert replica.fast_pos_embed_interpolate.__self__ is replica and replica.position_cache is tower.position_cache


@pytest.mark.parametrize("family, changed", [("qwen3_vl", 1), ("qwen2_5_vl", 0)])
def test_use_cached_vision_positions_changes_each_qwen3_vl_tower_once(tiny_model_dir, family, changed):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family))
    assert use_cached_vision_positions(model) == changed
    assert use_cached_vision_positions(model) == 0
