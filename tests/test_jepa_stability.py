"""A step whose gradient is not finite costs the night one step, not the night.

On an H200 (torch 2.11, bf16, configs/default.yaml on the demo day) the I-JEPA loss turned
NaN between steps 450 and 650 and the vision stage failed, taking reconstruct and dream with
it. The trainer now clips the gradient norm (models.jepa.grad_clip) and turns a step whose
gradient is not finite into a zero-gradient step, counted; only a run of such steps with no
finite one between two log lines stops the night, with advice.
"""
from __future__ import annotations

import datetime as dt

import pytest
import torch

from core.config import CONFIG_DIR, load_config
from models.vision.train import JepaTrainer, train_night


def _cfg(**update):
    return load_config(CONFIG_DIR / "tiny.yaml").models.jepa.model_copy(update=update)


def _batch(cfg) -> torch.Tensor:
    return torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _poison(trainer: JepaTrainer, steps: set[int]) -> None:
    """Make the gradient NaN at the given global steps (as an overflow in bf16 would)."""
    backward = trainer._backward

    def poisoned(loss_fn, images, masks, scale):
        loss, distill = backward(loss_fn, images, masks, scale)
        if trainer.global_step in steps:
            for p in trainer.model.encoder.parameters():
                p.grad.fill_(float("nan"))
            loss = loss * float("nan")
        return loss, distill

    trainer._backward = poisoned


def test_a_step_whose_gradient_is_not_finite_is_skipped_and_counted():
    cfg = _cfg()
    trainer = JepaTrainer(cfg, "cpu")
    _poison(trainer, {1})
    batch = _batch(cfg)
    losses = [float(trainer.step(batch, step, 4)[0]) for step in range(4)]

    assert losses[1] != losses[1] and all(v == v for v in losses[:1] + losses[2:])
    assert int(trainer.skipped) == 1
    for p in list(trainer.model.parameters()) + list(trainer.ema.state_dict().values()):
        if torch.is_tensor(p):
            assert torch.isfinite(p).all(), "a NaN gradient reached the weights"


def test_the_gradient_norm_is_clipped_to_grad_clip_and_left_alone_at_zero():
    def norm_at_step(cfg) -> float:
        trainer = JepaTrainer(cfg, "cpu")
        seen = []
        step = trainer.optimizer.step

        def recording_step(*args, **kwargs):
            grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            return step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        trainer.step(_batch(cfg), 0, 1)
        return seen[0]

    free = norm_at_step(_cfg(grad_clip=0.0))
    assert free > 0.02, "the test needs a gradient larger than the clip"
    assert norm_at_step(_cfg(grad_clip=0.01)) == pytest.approx(0.01, rel=1e-3)


def test_a_night_with_a_few_bad_steps_finishes_and_says_how_many(tmp_path, monkeypatch):
    cfg = _cfg(steps=8, warmup_steps=2, log_every=4)
    init = JepaTrainer.__init__

    def init_poisoned(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _poison(self, {2, 5})

    monkeypatch.setattr(JepaTrainer, "__init__", init_poisoned)
    result = train_night(cfg, _batch(cfg), None, date=dt.date(2026, 1, 15), checkpoint_dir=tmp_path,
                         device="cpu", progress=False)
    assert result.skipped_steps == 2
    assert [i for i, v in enumerate(result.losses) if v != v] == [2, 5]


def test_a_night_whose_gradient_is_never_finite_stops_with_advice(tmp_path, monkeypatch):
    cfg = _cfg(steps=8, warmup_steps=2, log_every=4)
    init = JepaTrainer.__init__

    def init_poisoned(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _poison(self, set(range(4, 8)))  # the second log interval, all of it

    monkeypatch.setattr(JepaTrainer, "__init__", init_poisoned)
    with pytest.raises(FloatingPointError, match=r"from 5 to 8 .*lower models\.jepa\.lr"):
        train_night(cfg, _batch(cfg), None, date=dt.date(2026, 1, 15), checkpoint_dir=tmp_path,
                    device="cpu", progress=False)


def test_training_never_runs_cudnn_attention():
    """cuDNN's attention kernel gave the non-finite gradients on the H200 (and slow first
    steps): the training step turns it off around the forward, whose choice the backward
    follows, and leaves the process's setting as it was."""
    cfg = _cfg()
    trainer = JepaTrainer(cfg, "cpu")
    seen = []
    forward = trainer.model.forward

    def recording_forward(*args):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return forward(*args)

    trainer.loss_fn = recording_forward
    before = torch.backends.cuda.cudnn_sdp_enabled()
    trainer.step(_batch(cfg), 0, 1)
    assert seen == [(False, True)]
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
