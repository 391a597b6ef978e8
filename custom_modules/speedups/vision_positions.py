"""Qwen3-VL's vision position tables from a cache per image size instead of per-image host loops.

Each Qwen3-VL ViT forward builds two tables from `grid_thw`: the learned position embedding interpolated to
every image's patch grid (`fast_pos_embed_interpolate`) and the 2-D rotary table (`rot_pos_emb`). transformers
builds both in Python loops over the images: it reads `grid_thw` back to the host (twice), then per image does
linspace and index arithmetic on CPU tensors, turns every patch's four indices and weights into Python lists and
back into a tensor, and queues a dozen small kernels. That host work comes right after the read-back has drained
the GPU's queue, so the GPU waits through all of it (for 16 448x448 images, 74 ms of Python on a slow CPU core,
which stays on the host when the tower runs on a GPU).

An image's rows in both tables depend only on its (t, h, w), the frozen position-embedding weight and the rotary
frequencies. This module computes them once per image size, with transformers' own methods on a one-image grid,
and after that concatenates cached rows: the same bits, one read-back of the grid per forward and one
concatenation per table. The cache keeps the most recently used sizes up to CACHE_BYTES per tower. While the
position-embedding weight is being trained (full ViT tuning) its table is not cached: transformers' method runs,
so the gradient reaches the weight. `tests/unit/test_vision_positions.py` checks both tables and the tower's
output bit for bit against transformers'.

The two methods are replaced on the tower's class, so they bind to whichever module runs them (DataParallel
replicas too); a tower that was not given a cache keeps transformers' behaviour.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from custom_modules.speedups.parts import vision_towers

CACHE_BYTES = 256 * 2**20  # per tower: ~140 image sizes of 28x28 patches at Qwen3-VL-8B's width 1152, in bf16
_last_grid: list = []  # [(grid_thw, its _version, rows)] of the last read-back: a forward's two tables share the tensor


class TensorCache:
    """Tensors by key, least recently used dropped first once they hold more than `budget` bytes."""

    def __init__(self, budget: int):
        self.budget, self.bytes, self.entries = budget, 0, OrderedDict()

    def get(self, key, make):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = make()
        self.bytes += value.nbytes
        while self.bytes > self.budget and len(self.entries) > 1:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.nbytes
        return value


def grid_rows(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    """`grid_thw` as host tuples, read back once per tensor and content (the rotary table asks for the same tensor
    again; `_version` moves when a reused tensor is written in place)."""
    last = _last_grid[0] if _last_grid else None
    if last is not None and last[0] is grid_thw and last[1] == grid_thw._version:
        return last[2]
    rows = [tuple(row) for row in grid_thw.tolist()]
    _last_grid[:] = [(grid_thw, grid_thw._version, rows)]
    return rows


def transformers_table(tower, name: str, grid_thw):
    """The table from transformers' own method `name` (which this module replaced on the tower's class)."""
    owner = next(cls for cls in type(tower).__mro__ if (cls, name) in _ORIGINALS)
    return _ORIGINALS[owner, name](tower, grid_thw)


def _per_image(tower, grid_thw, name: str, weight_key: tuple):
    parts = [tower.position_cache.get((name, row, *weight_key),
                                      lambda row=row: transformers_table(tower, name, torch.tensor([row])))
             for row in grid_rows(grid_thw)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def fast_pos_embed_interpolate(self, grid_thw):
    weight = self.pos_embed.weight
    if not hasattr(self, "position_cache") or (weight.requires_grad and torch.is_grad_enabled()):
        return transformers_table(self, "fast_pos_embed_interpolate", grid_thw)
    # _version moves with every in-place update of the weight (optimizer step, load_state_dict)
    weight_key = (weight.device, weight.dtype, weight.data_ptr(), weight._version)
    return _per_image(self, grid_thw, "fast_pos_embed_interpolate", weight_key)


def rot_pos_emb(self, grid_thw):
    if not hasattr(self, "position_cache"):
        return transformers_table(self, "rot_pos_emb", grid_thw)
    return _per_image(self, grid_thw, "rot_pos_emb", (self.rotary_pos_emb.inv_freq.device,))


_ORIGINALS: dict = {}  # (class, method name) -> transformers' function
_REPLACEMENTS = {"fast_pos_embed_interpolate": fast_pos_embed_interpolate, "rot_pos_emb": rot_pos_emb}


def _replace_on_class(cls: type) -> None:
    for name, replacement in _REPLACEMENTS.items():
        owner = next(c for c in cls.__mro__ if name in vars(c))
        if vars(owner)[name] is not replacement:
            _ORIGINALS[owner, name] = vars(owner)[name]
            setattr(owner, name, replacement)


def use_cached_vision_positions(model) -> int:
    """Give every Qwen3-VL vision tower in `model` the cached position tables; returns how many changed.

    The methods are replaced on the tower's class, so that they bind to whichever module runs them (a
    DataParallel replica included); a tower without a `position_cache` keeps transformers' behaviour."""
    changed = 0
    for tower in vision_towers(model):
        if all(hasattr(tower, name) for name in _REPLACEMENTS) and not hasattr(tower, "position_cache"):
            _replace_on_class(type(tower))
            tower.position_cache = TensorCache(CACHE_BYTES)
            changed += 1
    return changed
