"""Unit tests of the I-JEPA parts: masks, apply_masks, positions, schedules, EMA, checkpoints."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from models import schedules
from models.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
)
from models.ema import EMA
from models.vision.masks import MultiBlockMaskCollator, apply_masks
from models.vision.vit import VisionTransformer, sincos_2d


def _collator(**kw):
    args = dict(grid=14, num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
                context_scale=(0.85, 1.0), min_keep=10, seed=0)
    return MultiBlockMaskCollator(**{**args, **kw})


@pytest.mark.parametrize("step", range(25))
def test_masks_never_show_a_target_patch_to_the_context(step):
    masks = _collator()(32, step)
    ctx, tgt = masks.context, masks.targets
    for b in range(ctx.shape[0]):
        assert not set(ctx[b].tolist()) & set(tgt[:, b].flatten().tolist())


def test_mask_shapes_follow_the_config():
    grid, B = 14, 16
    for step in range(40):
        masks = _collator()(B, step)
        M, b, nt = masks.targets.shape
        assert (M, b) == (4, B)
        assert masks.context.shape[0] == B and masks.context.shape[1] >= 10  # min_keep
        # every target block is a rectangle of 0.15-0.2 of the grid (rounding allowed)
        assert 0.15 * grid * grid * 0.75 <= nt <= 0.2 * grid * grid * 1.3
        for m in range(M):
            for i in range(B):
                rows, cols = np.divmod(masks.targets[m, i].numpy(), grid)
                h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
                assert h * w == nt  # a full block: no holes
                assert 0.5 <= h / w <= 2.0
        # indices are sorted, unique, inside the grid
        assert (masks.context.diff(dim=1) > 0).all() and masks.context.max() < grid * grid


def test_masks_are_a_function_of_the_step():
    a, b, c = _collator()(8, 7), _collator()(8, 7), _collator()(8, 8)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context))


def test_static_masks_keep_one_shape_hide_every_target_and_follow_the_step():
    """models.jepa.static_masks: one (context, target) size at every step, so torch.compile
    builds one graph; the context size is the dynamic masks' median cut, not their smallest."""
    static, dynamic = _collator(static=True), _collator()
    nc, nt = static.static_sizes
    assert nt == 25  # the smallest 0.15-0.2 block at aspect 0.75-1.5 on 14 x 14 (5 x 5)
    typical = np.median([dynamic(128, step).context.shape[1] for step in range(40)])
    assert 0.8 * typical <= nc <= 1.2 * typical, (nc, typical)
    for step in range(40):
        masks = static(32, step)
        assert masks.context.shape == (32, nc) and masks.targets.shape == (4, 32, nt)
        for b in range(32):
            assert not set(masks.context[b].tolist()) & set(masks.targets[:, b].flatten().tolist())
        assert (masks.context.diff(dim=1) > 0).all() and (masks.targets.diff(dim=2) > 0).all()
    again = _collator(static=True)(32, 7)
    assert torch.equal(again.context, static(32, 7).context) and torch.equal(again.targets, static(32, 7).targets)
    assert _collator().static_sizes is None


def test_masks_keep_min_keep_even_when_targets_cover_much():
    masks = _collator(grid=8, target_scale=(0.2, 0.2), min_keep=12)(64, 3)
    assert masks.context.shape[1] >= 12


def test_apply_masks_gathers_per_sequence():
    x = torch.arange(2 * 5 * 3).reshape(2, 5, 3).float()  # (B, N, D)
    idx = torch.tensor([[0, 4], [3, 1]])
    out = apply_masks(x, idx)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], x[0, 4]) and torch.equal(out[1, 0], x[1, 3])


def test_sincos_positions_are_distinct_per_patch():
    pos = sincos_2d(32, 6)
    assert pos.shape == (36, 32)
    assert torch.cdist(pos, pos).add(torch.eye(36)).min() > 1e-3


def test_encoder_with_keep_encodes_only_those_patches():
    vit = VisionTransformer(32, 8, 16, 1, 2)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15]])
    assert vit(torch.randn(2, 3, 32, 32), keep).shape == (2, 3, 16)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 16, 16)


def test_schedules_hit_their_endpoints():
    assert schedules.warmup_cosine(0, 100, 10, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-4)
    assert schedules.warmup_cosine(10, 100, 10, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert schedules.warmup_cosine(100, 100, 10, 1e-4, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert schedules.cosine(0, 50, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.cosine(50, 50, 0.04, 0.4) == pytest.approx(0.4)
    assert schedules.linear(25, 50, 0.996, 1.0) == pytest.approx(0.998)


def test_ema_moves_by_one_minus_momentum():
    source, shadow = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in shadow.state_dict().items()}
    ema = EMA(shadow)
    ema.step(source, 0.9)
    for name, value in shadow.state_dict().items():
        expected = 0.9 * before[name] + 0.1 * source.state_dict()[name]
        assert torch.allclose(value, expected, atol=1e-6)
    assert not any(p.requires_grad for p in shadow.parameters())
    frozen = {k: v.clone() for k, v in shadow.state_dict().items()}
    ema.step(source, 1.0)  # momentum 1 leaves it unchanged
    assert all(torch.equal(frozen[k], v) for k, v in shadow.state_dict().items())
    target = torch.nn.Linear(4, 3)
    ema.copy_to(target)
    assert torch.equal(target.weight, shadow.weight)
    restored = EMA(torch.nn.Linear(4, 3))
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2 and torch.equal(restored.shadow.weight, shadow.weight)


def test_checkpoint_pointer_and_previous(tmp_path):
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, d2, {"step": 2})
    save_checkpoint(tmp_path, d1, {"step": 1})  # re-running an older night keeps the newest
    assert latest_checkpoint(tmp_path).name == "2026-01-02.pt"
    assert previous_checkpoint(tmp_path, d2).name == "2026-01-01.pt"
    assert previous_checkpoint(tmp_path, d1) is None
    assert load_checkpoint(tmp_path / "2026-01-02.pt", ("step",))["step"] == 2


def test_corrupt_checkpoint_is_an_error(tmp_path):
    path = save_checkpoint(tmp_path, dt.date(2026, 1, 1), {"step": 1})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    (tmp_path / "latest").write_text("2026-03-03\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path)
