"""The TopK sparse autoencoder: sparsity, the unit-norm decoder, AuxK, and that it learns.

The end-to-end night (stage ``sae`` on FFmpeg-made footage, ``query --neuron``, the report)
is in ``test_demo.py``, which runs every stage of the tiny night.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import ConfigError, SaeConfig, load_config
from models.batches import night_steps
from models.sae.autoencoder import SparseAutoencoder, fraction_of_variance_unexplained
from models.sae.train import encode, evaluate, train_sae
from stages.sae import strongest_neurons


def sparse_data(n: int, dim: int = 32, atoms: int = 48, active: int = 3, seed: int = 0):
    """Vectors that are sums of ``active`` of ``atoms`` random unit directions: the ground truth
    a sparse dictionary should find."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(atoms, dim))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n, atoms))
    for row in codes:
        row[rng.choice(atoms, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    return (codes @ dictionary).astype(np.float32), dictionary


def test_codes_have_at_most_k_non_negative_entries_and_the_decoder_starts_tied_and_unit():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 40, k=5)
    latents = sae.encode(torch.randn(64, 16))
    assert latents.shape == (64, 40)
    latents = latents.detach()
    assert int((latents != 0).sum(1).max()) <= 5 and float(latents.min()) >= 0
    torch.testing.assert_close(sae.decoder.weight.norm(dim=0), torch.ones(40))
    cos = torch.nn.functional.cosine_similarity(sae.decoder.weight.t(), sae.encoder.weight, dim=1)
    torch.testing.assert_close(cos, torch.ones(40))


def test_the_parallel_part_of_the_decoder_gradient_is_removed():
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 12, k=3)
    sae.decoder.weight.grad = torch.randn_like(sae.decoder.weight)
    sae.remove_parallel_decoder_grad_()
    along = (sae.decoder.weight * sae.decoder.weight.grad).sum(0)
    torch.testing.assert_close(along, torch.zeros(12), atol=1e-6, rtol=0)


def test_auxk_trains_dead_neurons_on_the_residual():
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 12, k=2, aux_k=4, dead_steps=3)
    sae.train()
    x = torch.randn(32, 8)
    with torch.no_grad():
        sae.steps_since_fired.fill_(5)  # everyone silent for 5 steps...
    _, parts = sae(x)
    fired = (parts["latents"] > 0).any(0)
    assert bool((sae.steps_since_fired[fired] == 0).all())  # ...the ones that fired are live again
    assert bool((sae.steps_since_fired[~fired] == 6).all())
    assert float(parts["aux"].detach()) > 0
    parts["aux"].backward()
    dead_rows = sae.encoder.weight.grad[~fired].abs().sum(1)
    assert bool((dead_rows > 0).any()), "AuxK must send gradient to dead neurons"

    sae.zero_grad()
    sae.eval()  # no AuxK and no bookkeeping outside training
    before = sae.steps_since_fired.clone()
    _, parts = sae(x)
    assert float(parts["aux"]) == 0 and torch.equal(before, sae.steps_since_fired)


def test_it_finds_the_atoms_of_sparse_data_far_better_than_an_untrained_dictionary():
    """Measured 2026-11-23 (this seed): held-out FVU 0.11 trained vs 0.69 untrained (the
    untrained one with the same data-median pre-bias); 38 of the 48 true atoms found with
    cosine > 0.9."""
    x, atoms = sparse_data(3000)
    cfg = SaeConfig(latents=64, k=4, aux_k=16, dead_steps=20, batch_size=128, epochs=20,
                    min_steps=100, max_steps=600, lr=3e-3, warmup_steps=5)
    trained = train_sae(x[:2500], cfg, "cpu", seed=0, progress=False)
    held = x[2500:]
    metrics = evaluate(trained.model, held, encode(trained.model, held, "cpu"), "cpu")

    untrained = SparseAutoencoder(32, 64, 4)
    with torch.no_grad():
        untrained.pre_bias.copy_(torch.from_numpy(x[:2500]).median(0).values)
    baseline = fraction_of_variance_unexplained(untrained, torch.from_numpy(held))

    assert metrics["fvu"] < 0.2 and baseline > 0.5, (metrics, baseline)
    assert metrics["active_per_vector"] <= 4
    found = (atoms @ trained.model.decoder.weight.detach().numpy()).max(1) > 0.9
    assert found.sum() >= 30, f"{found.sum()} of 48 atoms found"
    torch.testing.assert_close(trained.model.decoder.weight.norm(dim=0), torch.ones(64))


def test_training_continues_from_a_checkpoint():
    x, _ = sparse_data(600, seed=1)
    cfg = SaeConfig(latents=64, k=4, aux_k=0, batch_size=100, min_steps=30, max_steps=30, epochs=1,
                    lr=1e-2, warmup_steps=0)
    first = train_sae(x, cfg, "cpu", seed=0, progress=False)
    state = {"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(), "step": first.step}
    second = train_sae(x, cfg, "cpu", seed=0, resume=state, progress=False)
    assert second.step == 60 and second.steps == 30
    # The first batch of both runs is the same (same seed): resumed weights start far lower.
    assert second.history[0]["mse"] < 0.7 * first.history[0]["mse"]


def test_night_steps_and_config_checks():
    cfg = SaeConfig(batch_size=100, epochs=3, min_steps=5, max_steps=50)
    assert night_steps(1000, cfg) == 30 and night_steps(10, cfg) == 5 and night_steps(10**6, cfg) == 50
    with pytest.raises(ValueError, match="k 9 > latents 8"):
        SaeConfig(latents=8, k=9, aux_k=0)


def test_a_bad_sae_setting_is_reported_with_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  sae:\n    latents: 8\n    k: 9\n    aux_k: 0\n")
    with pytest.raises(ConfigError, match="k 9 > latents 8"):
        load_config(bad)


def test_strongest_neurons_ranks_by_clips_led_and_lists_distinct_clips():
    acts = np.array([[0.9, 0.1, 0.0],    # clip 1: neuron 0 leads
                     [0.8, 0.0, 0.3],    # clip 1 (its other sense): neuron 0 leads
                     [0.2, 0.0, 0.7],    # clip 2: neuron 2
                     [0.5, 0.0, 0.1],    # clip 3: neuron 0
                     [0.0, 0.0, 0.0]],   # clip 4: silent
                    dtype=np.float32)
    clips = np.array([1, 1, 2, 3, 4])
    neurons = strongest_neurons(acts, clips, count=5, moments=2)
    assert [n["neuron"] for n in neurons] == [0, 2]
    assert neurons[0]["clips_led"] == 2 and neurons[0]["rows_fired"] == 4
    assert [m["clip_id"] for m in neurons[0]["top"]] == [1, 3]  # clip 1 once, though two rows fire
    assert neurons[1]["top"][0] == {"clip_id": 2, "activation": 0.7}
    assert strongest_neurons(acts, clips, count=0, moments=2) == []


# -- kinds (topk, batchtopk, l1), their figures, and recovery of a known dictionary -------------

def dictionary_data(n: int, dim: int, atoms: int, active: int, *, rows_seed: int, noise: float = 0.01):
    """``n`` vectors, each a non-negative combination of ``active`` of ``atoms`` unit directions
    (weights in [0.5, 1.5]) plus Gaussian noise of std ``noise`` per coordinate. The directions
    depend only on ``(atoms, dim)``; ``rows_seed`` draws fresh rows of the same dictionary."""
    directions = np.random.default_rng(0).normal(size=(atoms, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rng = np.random.default_rng(rows_seed)
    chosen = torch.rand(n, atoms, generator=torch.Generator().manual_seed(rows_seed)).topk(active, dim=1).indices
    codes = np.zeros((n, atoms), np.float32)
    np.put_along_axis(codes, chosen.numpy(), rng.uniform(0.5, 1.5, (n, active)), axis=1)
    return (codes @ directions + noise * rng.normal(size=(n, dim))).astype(np.float32), directions


def best_match_cosine(directions: np.ndarray, model: SparseAutoencoder) -> float:
    """For each true direction the highest cosine with any (unit) decoder column, averaged."""
    return float((directions @ model.decoder.weight.detach().cpu().numpy()).max(axis=1).mean())


def recovery(cfg: SaeConfig, dim: int, atoms: int, rows: int) -> dict:
    """Train ``cfg`` on ``rows`` vectors of a known dictionary; measure it on 8000 fresh ones."""
    x, directions = dictionary_data(rows, dim, atoms, cfg.k, rows_seed=1)
    trained = train_sae(x, cfg, "cpu", seed=0, progress=False)
    fresh, _ = dictionary_data(8000, dim, atoms, cfg.k, rows_seed=2)
    metrics = evaluate(trained.model, fresh, encode(trained.model, fresh, "cpu"), "cpu",
                       rows_label="8000 fresh rows")
    untrained = SparseAutoencoder(dim, cfg.latents, cfg.k)
    figures = {"kind": cfg.kind, "cosine": round(best_match_cosine(directions, trained.model), 4),
               "untrained_cosine": round(best_match_cosine(directions, untrained), 4),
               "dead_fresh": metrics["dead_share"], "dead_training": metrics["dead_share_training"],
               "mean_l0": metrics["mean_l0"], "fvu": metrics["fvu"], "train_seconds": round(trained.seconds, 1)}
    print(f"\nrecovery {dim}->{cfg.latents} latents, {atoms} directions, k {cfg.k}: {figures}")
    return {**figures, "model": trained.model}


def test_topk_recovers_a_small_known_dictionary():
    """The default-run stand-in for the default-size test below (about 40 s of 2 idle cores, far
    more on a shared machine, so it is marked slow): a quarter of its width, the same shape of
    problem (as many true directions as latents, k active). Measured (this seed): mean
    best-match cosine 0.972, dead 3.9 % on fresh rows, 2.3 % in training."""
    cfg = SaeConfig(latents=256, k=4, batch_size=256, min_steps=600, max_steps=600, lr=1e-2, warmup_steps=20)
    got = recovery(cfg, dim=64, atoms=256, rows=60_000)
    assert got["cosine"] >= 0.9 and got["untrained_cosine"] < 0.6, got
    assert got["dead_fresh"] < 0.05 and got["dead_training"] < 0.05, got


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "batchtopk", "l1"])
def test_recovers_a_known_dictionary_at_the_default_size(kind):
    """The issue's bar, at the default width (the shared space), ``latents`` and ``k``: as many
    true directions as latents. TopK must reach a mean best-match cosine of 0.9 with under 5 %
    dead neurons; the other kinds are printed for comparison and must beat an untrained
    dictionary by far. Measured (this seed), cosine / dead on fresh rows / in training / L0:
    topk 0.956 / 2.6 % / 1.2 % / 16; batchtopk 0.933 / 3.9 % / 1.5 % / 16.2; l1 0.973 / 0.3 % /
    0.1 % / 30; untrained 0.202."""
    from core.config import AlignConfig

    base = SaeConfig()
    cfg = SaeConfig(kind=kind, batch_size=256, min_steps=2000, max_steps=2000, lr=5e-3, warmup_steps=20)
    got = recovery(cfg, dim=AlignConfig().dim, atoms=base.latents, rows=128_000)
    if kind == "topk":
        assert got["cosine"] >= 0.9, got
        assert got["dead_fresh"] < 0.05 and got["dead_training"] < 0.05, got
    else:
        assert got["cosine"] >= got["untrained_cosine"] + 0.3, got


@pytest.mark.parametrize("kind", ["batchtopk", "l1"])
def test_the_other_kinds_recover_a_small_known_dictionary_far_better_than_untrained(kind):
    """Measured (this seed): batchtopk mean best-match cosine 0.947, L0 4.01, dead 6.3 % on fresh
    rows; l1 0.836, L0 38; an untrained dictionary 0.345."""
    cfg = SaeConfig(kind=kind, latents=256, k=4, batch_size=256, min_steps=600, max_steps=600, lr=1e-2,
                    warmup_steps=20)
    got = recovery(cfg, dim=64, atoms=256, rows=60_000)
    assert got["cosine"] >= 0.8 and got["cosine"] >= got["untrained_cosine"] + 0.3, got
    assert got["mean_l0"] < 256 / 4, got


def test_batchtopk_keeps_k_times_batch_activations_across_the_batch_in_training():
    torch.manual_seed(0)
    sae = SparseAutoencoder(16, 40, k=5, kind="batchtopk")
    sae.train()
    _, parts = sae(torch.randn(32, 16))
    per_row = (parts["latents"] > 0).sum(1)
    assert int(per_row.sum()) == 5 * 32
    assert int(per_row.max()) > 5, "the budget is the batch's, not each row's"
    # The inference threshold is the smallest kept activation (the first batch sets it) and
    # travels in checkpoints.
    assert float(sae.threshold) == pytest.approx(float(parts["latents"][parts["latents"] > 0].min()))
    state = sae.state_dict()
    assert "threshold" in state
    again = SparseAutoencoder(16, 40, k=5, kind="batchtopk")
    again.load_state_dict(state)
    assert float(again.threshold) == float(sae.threshold)
    assert "threshold" not in SparseAutoencoder(16, 40, k=5).state_dict()  # old topk checkpoints load


def test_batchtopk_inference_keeps_about_k_per_vector_whatever_the_batch():
    x, _ = sparse_data(3000)
    cfg = SaeConfig(kind="batchtopk", latents=64, k=4, aux_k=16, dead_steps=20, batch_size=128,
                    min_steps=300, max_steps=300, lr=3e-3, warmup_steps=5)
    model = train_sae(x[:2500], cfg, "cpu", seed=0, progress=False).model
    codes = encode(model, x[2500:], "cpu")
    mean_l0 = float((codes > 0).sum(1).mean())
    assert 4 / 2 <= mean_l0 <= 4 * 2, mean_l0
    alone = encode(model, x[2500:2501], "cpu")  # JumpReLU: a row's code does not depend on its batch
    np.testing.assert_allclose(alone[0], codes[0], rtol=1e-5, atol=1e-6)


def test_l1_loss_decreases_and_its_codes_are_sparse():
    x, _ = sparse_data(3000)
    cfg = SaeConfig(kind="l1", latents=64, k=4, aux_k=0, batch_size=128, min_steps=800, max_steps=800,
                    lr=3e-3, warmup_steps=5)
    trained = train_sae(x[:2500], cfg, "cpu", seed=0, progress=False)
    loss = [h["mse"] + cfg.l1_coef * h["l1"] for h in trained.history]
    assert loss[-1] < 0.5 * loss[0], loss
    assert trained.history[-1]["l1"] > 0
    metrics = evaluate(trained.model, x[2500:], encode(trained.model, x[2500:], "cpu"), "cpu")
    assert metrics["mean_l0"] < 64 / 4, metrics


def test_evaluate_reports_explained_variance_mean_l0_and_both_dead_shares_with_their_windows():
    x, _ = sparse_data(400)
    sae = SparseAutoencoder(32, 48, k=3, dead_steps=10)
    with torch.no_grad():
        sae.steps_since_fired[:12] = 10  # a quarter silent for the whole training window
    metrics = evaluate(sae, x, encode(sae, x, "cpu"), "cpu", rows_label="the 400 test rows")
    assert metrics["explained_variance"] == pytest.approx(1 - metrics["fvu"], abs=1e-4)
    assert metrics["mean_l0"] == metrics["active_per_vector"] == 3
    assert metrics["dead_share_training"] == 0.25
    assert metrics["dead_training_window"] == "no firing in the last 10 training steps"
    assert metrics["dead_window"] == "fires for none of the 400 test rows"
    assert metrics["dead_share"] == round(1 - metrics["neurons_used"] / 48, 4)


def test_an_unknown_sae_kind_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"models\.sae\.kind: .*'topk', 'batchtopk' or 'l1'.*bogus"):
        load_config(None, ["models.sae.kind=bogus"])
    with pytest.raises(ValueError, match="l1_coef must be > 0 when kind is l1"):
        SaeConfig(kind="l1", l1_coef=0)
