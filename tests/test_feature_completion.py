"""Feature-space completion (issue #16): fragment masks, the token inpainter, the PCA
neighbour agreement, and ``bench/feature_completion.py`` on FFmpeg scenes."""
from __future__ import annotations

import datetime as dt
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from jepa_media import RETRIEVAL_SCENES, insert_day, make_scene_frames

from core.config import FeatureCompletionConfig
from core.paths import Paths
from memory.db import make_sessionmaker, open_database
from models.vision.inpaint import (
    PatchInpainter,
    inpaint_loss,
    masked_positions,
    random_patch_mask,
)
from models.vision.inpaint_train import train_inpainter
from models.vision.masks import apply_masks
from models.vision.vit import VisionTransformer
from stages import Night

DAY = dt.date(2026, 1, 15)
BENCH = Path(__file__).resolve().parent.parent / "bench" / "feature_completion.py"


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: small networks run several times faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_feature_completion", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_block_mask_keeps_one_rectangle_of_the_share_and_is_deterministic():
    keep = random_patch_mask(6, 8, 0.25, torch.Generator().manual_seed(0))
    assert keep.shape == (6, 16) and keep.dtype == torch.int64
    assert torch.equal(keep, random_patch_mask(6, 8, 0.25, torch.Generator().manual_seed(0)))
    assert not torch.equal(keep, random_patch_mask(6, 8, 0.25, torch.Generator().manual_seed(1)))
    for row in keep:
        assert torch.equal(row, row.sort().values)
        rows, cols = (row // 8).unique(), (row % 8).unique()
        assert len(rows) == len(cols) == 4 and rows.diff().eq(1).all() and cols.diff().eq(1).all()
    assert len({tuple(r.tolist()) for r in keep}) > 1  # placed anywhere, not always the same place
    for grid in (8, 14, 16):
        share = random_patch_mask(2, grid, 0.25, torch.Generator().manual_seed(0)).shape[1] / grid**2
        assert abs(share - 0.25) < 0.05


def test_scattered_mask_keeps_the_share_of_distinct_patches():
    keep = random_patch_mask(4, 14, 0.25, torch.Generator().manual_seed(0), block=False)
    assert keep.shape == (4, 49)
    assert all(len(row.unique()) == 49 and int(row.max()) < 196 for row in keep)
    assert torch.equal(keep, random_patch_mask(4, 14, 0.25, torch.Generator().manual_seed(0), block=False))
    with pytest.raises(ValueError, match="keep_share"):
        random_patch_mask(4, 14, 0.0, torch.Generator())


def test_masked_positions_are_the_complement_of_the_kept_ones():
    keep = random_patch_mask(3, 8, 0.25, torch.Generator().manual_seed(2))
    hidden = masked_positions(keep, 64)
    assert hidden.shape == (3, 48)
    for k, h in zip(keep, hidden):
        assert sorted(k.tolist() + h.tolist()) == list(range(64))


def test_the_inpainter_predicts_the_whole_grid_and_a_few_steps_lower_its_loss():
    torch.manual_seed(0)
    model = PatchInpainter(num_patches=16, enc_dim=12, dim=32, depth=1, heads=2)
    generator = torch.Generator().manual_seed(0)
    # Random tokens, each a fixed function of its image's 4-d code: the hidden ones can be
    # inferred from the visible ones.
    mixing = torch.randn(16, 4, 12, generator=generator)
    codes = torch.randn(64, 4, generator=generator)
    tokens = torch.einsum("bc,ncd->bnd", codes, mixing)  # (64, 16, 12)
    keep = random_patch_mask(64, 4, 0.25, generator)
    visible = apply_masks(tokens, keep)
    assert model(visible, keep).shape == (64, 16, 12)
    model.token_mean.copy_(tokens.flatten(0, 1).mean(0))
    model.token_std.copy_(tokens.flatten(0, 1).std(0))
    torch.testing.assert_close(model.complete(visible, keep),
                               model(visible, keep) * model.token_std + model.token_mean)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        loss = inpaint_loss(model(visible, keep), model.standardise(tokens), masked_positions(keep, 16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_train_inpainter_fits_a_frozen_encoder_and_keeps_its_token_statistics():
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, dim=16, depth=1, heads=2)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = FeatureCompletionConfig(dim=16, depth=1, heads=2, batch_size=8, warmup_steps=2, lr=3e-3)
    model, history = train_inpainter(encoder, images, cfg, "cpu", steps=40, seed=0, progress=False)
    assert len(history) == 40 and not model.training
    assert np.mean(history[-5:]) < np.mean(history[:5])
    assert model.token_std.min() > 0 and not torch.equal(model.token_mean, torch.zeros(16))
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # the encoder stays frozen
    with pytest.raises(ValueError, match="at least one frame"):
        train_inpainter(encoder, images[:0], cfg, "cpu", steps=1, progress=False)


def test_pca_keeps_every_neighbour_at_full_size_and_fewer_at_small_ones():
    pca_knn_agreement = _bench().pca_knn_agreement
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 32)) + 2.0  # an offset, as real embeddings share a direction
    out = pca_knn_agreement(vectors, [4, 16, 32], k=10)
    assert (out["vectors"], out["dim"], out["k"]) == (300, 32, 10)
    assert [s["dim"] for s in out["sizes"]] == [4, 16, 32]
    full = out["sizes"][2]
    assert full["agreement"] == 1.0 and full["variance_kept"] == 1.0
    assert out["sizes"][0]["agreement"] < 0.5 and out["sizes"][0]["agreement"] < out["sizes"][1]["agreement"]

    assert pca_knn_agreement(vectors[:5], [2], k=10)["k"] == 4  # at most every other vector
    with pytest.raises(ValueError, match="two vectors"):
        pca_knn_agreement(vectors[:1], [2])


def test_pca_of_vectors_in_a_small_subspace_keeps_their_neighbours_at_that_size():
    pca_knn_agreement = _bench().pca_knn_agreement
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 6)))[0].T  # (6, 64) orthonormal
    vectors = 3.0 + rng.normal(size=(400, 6)) @ basis + 1e-4 * rng.normal(size=(400, 64))
    out = pca_knn_agreement(vectors, [2, 6], k=10)
    assert out["sizes"][1]["agreement"] > 0.97 and out["sizes"][1]["variance_kept"] > 0.999
    assert out["sizes"][0]["agreement"] < 0.8


def test_bench_on_ffmpeg_scenes_reports_inpainted_beside_visible_recall(root, tiny_cfg):
    """Nine lavfi scenes in colour, one clip of 24 frames each, the tiny vision model; the
    inpainter trained 300 steps (the bench's ``--steps``), as in BENCHMARKS.md. Figures printed (``-s``)."""
    from stages import vision as vision_stage

    cfg = tiny_cfg.model_copy(update={"models": tiny_cfg.models.model_copy(update={"heldout_fraction": 0.25})})
    paths = Paths.at(root)
    engine = open_database(paths.database)
    frames = make_scene_frames(paths.frames(DAY), scenes=RETRIEVAL_SCENES, seconds=6, fps=4,
                               look=lambda i: "format=yuv420p")
    insert_day(make_sessionmaker(engine), root, DAY, frames)
    night = Night(DAY, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))
    assert vision_stage.run(night)["trained"]
    engine.dispose()

    figures = _bench().measure(root, DAY, str(BENCH.parent.parent / "configs" / "tiny.yaml"),
                               ["models.heldout_fraction=0.25"], steps=300)
    recall = figures["recall"]
    print("\nR@1/R@5:", {kind: (r["top1"], r["top5"]) for kind, r in recall.items()},
          f"ratio {figures['ratio_top1']}, chance {figures['chance_top1']}, {figures['queries']} fragments;",
          "PCA:", {space: [(s["dim"], s["agreement"]) for s in p["sizes"]] for space, p in figures["pca"].items()})

    assert figures["clips"] == len(RETRIEVAL_SCENES) and figures["chance_top1"] == round(1 / 9, 4)
    assert figures["train_frames"] + figures["heldout_frames"] == 24 * len(RETRIEVAL_SCENES)
    assert figures["queries"] == 4 * figures["heldout_frames"] >= 160
    assert (figures["patches"], figures["visible_patches"]) == (64, 16)  # a 4 x 4 block of the 8 x 8 grid
    assert set(recall) == {"visible", "inpainted", "clean"}
    for row in recall.values():
        assert 0 <= row["top1"] <= row["top5"] <= 1 and -1 <= row["cosine"] <= 1
    assert recall["clean"]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert figures["ratio_top1"] == round(recall["inpainted"]["top1"] / recall["visible"]["top1"], 3)
    assert figures["steps"] == 300 and figures["loss_last"] < figures["loss_first"]

    clips, frame_space = figures["pca"]["vision"], figures["pca"]["vision_frame"]
    assert [s["dim"] for s in frame_space["sizes"]] == [8, 16, 32]
    assert (frame_space["vectors"], frame_space["dim"], frame_space["k"]) == (216, 64, 10)
    assert all(0 <= s["agreement"] <= 1 and 0 <= s["variance_kept"] <= 1 for s in frame_space["sizes"])
    # Nine clip vectors: each has the other eight as its neighbours, whatever the compression.
    assert clips["k"] == 8 and all(s["agreement"] == 1.0 for s in clips["sizes"])


def test_the_inpaint_stage_trains_measures_continues_and_reports(tmp_path):
    """Two tiny nights of real FFmpeg media: the stage trains the inpainter on each night's frames
    (the second continuing the first), measures held-out block fragments three ways and the
    PCA neighbours, saves a checkpoint and fills its report section."""
    import json

    from two_days import DAY1, DAY2, record_day

    from core.config import CONFIG_DIR, load_config
    from models.checkpoint import load_checkpoint
    from pipeline.runner import run_night

    root = tmp_path / "root"
    paths = Paths.at(root)
    cfg = load_config(CONFIG_DIR / "tiny.yaml", ["models.heldout_fraction=0.3"])
    for date in (DAY1, DAY2):
        record_day(root, date)
        outcome = run_night(date, cfg, paths, only=["ingest", "keep", "vision", "inpaint"])
        assert outcome.ok and outcome.states["inpaint"] == "done", outcome.errors
    summary = json.loads((paths.report(DAY2) / "summary.json").read_text())
    result, figures = summary["inpaint"], summary["metrics"]["inpaint"]
    assert result["trained"] and result["resumed_from"] == DAY1.isoformat(), result
    assert figures["steps"] == cfg.models.inpaint.steps and figures["clips"] == 8
    assert figures["queries"] == cfg.models.inpaint.views * figures["heldout_frames"] > 0
    assert set(figures["recall"]) == {"visible", "inpainted", "clean"}
    assert figures["recall"]["clean"]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert figures["top1_inpainted"] == figures["recall"]["inpainted"]["top1"]
    assert [s["dim"] for s in figures["pca"]["vision_frame"]["sizes"]] == [8, 16, 32]
    state = load_checkpoint(paths.checkpoints / "inpaint" / f"{DAY2}.pt", ("model", "num_patches", "enc_dim"))
    assert (state["num_patches"], state["enc_dim"], state["input_version"]) == (64, 64, f"jepa@{DAY2}")
    page = (paths.report(DAY2) / "index.html").read_text()
    assert "the inpainted whole grid" in page and "Memories stored compressed" in page
