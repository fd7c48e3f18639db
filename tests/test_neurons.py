"""Memory-trace neurons people can use: stable ids across nights, names, and +/- retrieval."""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pytest
from conftest import run_cli
from memfill import add_day

import api
from core.errors import UsageError
from core.paths import Paths
from memory import assign_identities, make_sessionmaker, neuron_latents, open_database
from memory.store import EmbeddingRow, write_embeddings
from models.sae.identity import match_latents
from stages import Night

DAY1, DAY2 = dt.date(2026, 5, 4), dt.date(2026, 5, 5)


# --- matching ----------------------------------------------------------------------------------

def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_matching_follows_a_shuffled_dictionary_and_refuses_strangers():
    rng = np.random.default_rng(0)
    old = _unit(rng.standard_normal((24, 32)))
    order = rng.permutation(24)
    new = _unit(old[order] + 0.05 * rng.standard_normal((24, 32)))
    new[5] = _unit(rng.standard_normal((1, 32)))[0]  # one neuron reborn somewhere else
    pairs = match_latents(new, old, threshold=0.7)
    assert {(n, o) for n, o, _ in pairs} == {(n, int(order[n])) for n in range(24) if n != 5}
    assert min(c for _, _, c in pairs) > 0.9
    with pytest.raises(ValueError, match="width"):
        match_latents(new, old[:, :16], 0.7)


def test_identities_follow_the_matches_and_a_rerun_gives_the_same_ids(root):
    engine = open_database(Paths.at(root).database)
    try:
        first = assign_identities(engine, "sae@2026-05-04", 6, [], None)
        assert len(first.born) == 6 and neuron_latents(engine, "sae@2026-05-04") == {i: i for i in range(6)}
        api.name_neuron(root, 2, "kitchen")
        # Night 2: latents shuffled; old latent 4 unmatched (lost), new latent 0 unmatched (born).
        matches = [(1, 2, 0.95), (2, 0, 0.9), (3, 1, 0.88), (4, 3, 0.8), (5, 5, 0.99)]
        second = assign_identities(engine, "sae@2026-05-05", 6, matches, "sae@2026-05-04", 6)
        ids = neuron_latents(engine, "sae@2026-05-05")
        assert ids[2] == 1 and ids[0] == 2 and ids[5] == 5 and 4 not in ids
        assert [b["latent"] for b in second.born] == [0] and second.born[0]["id"] == 6
        assert [(lost["id"], lost["previous_latent"]) for lost in second.lost] == [(4, 4)]
        summary = second.as_dict()
        assert summary["kept"] == 5 and summary["kept_listed"][0]["name"] == "kitchen"
        again = assign_identities(engine, "sae@2026-05-05", 6, matches, "sae@2026-05-04", 6)
        assert neuron_latents(engine, "sae@2026-05-05") == ids and again.born[0]["id"] == 6
        shown = api.show_neuron(root, "kitchen")
        assert shown["id"] == 2 and [h["latent"] for h in shown["history"]] == [2, 1]
        assert [h["match_cosine"] for h in shown["history"]] == [None, 0.95]
    finally:
        engine.dispose()


# --- a planted memory: composite retrieval ------------------------------------------------------

SAE_DIM = 12
VERSION = "sae@2026-05-04"
# (rows, {latent: activation}): A is what "+3 -5" must find; B fires 3 but more 5; C and D fire no 3.
GROUPS = {"A": (6, {3: 0.8, 7: 0.6}), "B": (4, {3: 0.5, 5: 0.8}), "C": (5, {5: 0.9, 1: 0.4}), "D": (5, {9: 1.0})}


@pytest.fixture
def planted(root):
    paths = Paths.at(root)
    engine = open_database(paths.database)
    n = sum(rows for rows, _ in GROUPS.values())
    clips = add_day(engine, paths, DAY1.isoformat(), n)
    vectors, group_of, k = np.zeros((n, SAE_DIM), np.float32), {}, 0
    for name, (rows, active) in GROUPS.items():
        for _ in range(rows):
            for latent, value in active.items():
                vectors[k, latent] = value * (1 + 0.01 * k)
            group_of[clips[k]] = name
            k += 1
    write_embeddings(engine, paths, space="sae", model_version=VERSION, date=DAY1.isoformat(),
                     rows=[EmbeddingRow(c, "vision") for c in clips], vectors=vectors)
    assign_identities(engine, VERSION, SAE_DIM, [], None)
    engine.dispose()
    api.name_neuron(root, 3, "kitchen")
    api.name_neuron(root, 5, "evening")
    return root, group_of


def test_composite_retrieval_returns_exactly_the_planted_items(planted):
    root, group_of = planted
    planted_items = {c for c, g in group_of.items() if g == "A"}
    top = api.query(root, positive=["kitchen"], negative=["evening"], topk=6)
    print(f"\n+kitchen -evening, top 6: groups {[group_of[h.clip_id] for h in top]}")
    assert {h.clip_id for h in top} == planted_items
    everything = api.query(root, positive=["kitchen"], negative=["evening"], topk=50)
    # Every moment where kitchen fires, A first; none where it does not, whatever evening does.
    assert [group_of[h.clip_id] for h in everything] == ["A"] * 6 + ["B"] * 4
    assert all(h.score < 0 for h in everything[6:])
    # Two positives: a moment counts when either fires; ids and names mix.
    either = api.query(root, neuron=["kitchen", 9], topk=50)
    assert {group_of[h.clip_id] for h in either} == {"A", "B", "D"}


def test_the_cli_answers_what_the_api_returns(planted):
    root, _ = planted
    hits = api.query(root, positive=["kitchen", 7], negative="evening", topk=20)
    proc = run_cli("query", "--neuron", "kitchen", "--neuron", "7", "--not", "evening", "--json", "--topk", "20",
                   "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [h.as_dict() for h in hits]
    listing = run_cli("neuron", "list", "--json", "--root", str(root))
    assert listing.returncode == 0, listing.stderr
    neurons = {n["id"]: n for n in json.loads(listing.stdout)["neurons"]}
    assert neurons[3]["name"] == "kitchen" and neurons[3]["fires"] == 10 and neurons[9]["fires"] == 5
    assert set(neurons) == {1, 3, 5, 7, 9}  # the silent ones are left out
    assert neurons[3]["top"][0]["wall_start"] and len({m["clip_id"] for m in neurons[3]["top"]}) == 3
    shown = run_cli("neuron", "show", "evening", "--root", str(root))
    assert shown.returncode == 0 and 'neuron 5 "evening"' in shown.stdout and "fires in 9 of 20" in shown.stdout
    renamed = run_cli("neuron", "name", "3", "evening", "--root", str(root))
    assert renamed.returncode == 2 and "neuron 5 is already named 'evening'" in renamed.stderr
    assert run_cli("neuron", "unname", "evening", "--root", str(root)).returncode == 0
    assert run_cli("neuron", "name", "3", "evening", "--root", str(root)).returncode == 0
    assert api.show_neuron(root, "evening")["id"] == 3


@pytest.mark.parametrize("given, message", [
    ({"neuron": "nowhere"}, "no neuron is named 'nowhere'"),
    ({"neuron": [2, 1.5]}, "expected a neuron id or name"),
    ({"neuron": "kitchen", "negative": "kitchen"}, "both wanted"),
    ({"negative": "evening"}, "name at least one --neuron"),
    ({"neuron": "kitchen", "positive": "kitchen"}, "not both"),
    ({"neuron": 40}, "no neuron 40"),
])
def test_bad_neuron_queries_are_usage_errors(planted, given, message):
    root, _ = planted
    with pytest.raises(UsageError, match=message):
        api.query(root, **given)


@pytest.mark.parametrize("name, message", [("12", "not only digits"), ("a,b", "no comma"), ("", "1 to 64")])
def test_a_name_that_would_read_as_something_else_is_refused(planted, name, message):
    root, _ = planted
    with pytest.raises(UsageError, match=message):
        api.name_neuron(root, 7, name)


# --- two nights of the sae stage ------------------------------------------------------------------

ATOMS, WIDTH = 16, 24


def _sparse(rng, atoms: np.ndarray, n: int, kitchen_rows: int) -> np.ndarray:
    """Each row 2 atoms with positive weights; the first ``kitchen_rows`` rows hold atom 0."""
    x = np.zeros((n, atoms.shape[1]), np.float32)
    for i in range(n):
        chosen = rng.choice(np.arange(1, len(atoms)), 2, replace=False)
        if i < kitchen_rows:
            chosen[0] = 0
        x[i] = (rng.uniform(0.5, 1.5, 2)[:, None] * atoms[chosen]).sum(0)
    return x


def _sae_night(root, cfg, date: dt.date, vectors: np.ndarray) -> tuple[dict, list[int]]:
    from stages.sae import run

    paths = Paths.at(root)
    engine = open_database(paths.database)
    try:
        clips = add_day(engine, paths, date.isoformat(), len(vectors), seed=date.day)
        write_embeddings(engine, paths, space="shared", model_version=f"align@{date}", date=date.isoformat(),
                         rows=[EmbeddingRow(c, "vision") for c in clips], vectors=vectors)
        night = Night(date, cfg, paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))
        return run(night), clips
    finally:
        engine.dispose()


def test_a_name_given_on_night_one_is_found_on_night_two_after_a_warm_retrain(root, tiny_cfg):
    rng = np.random.default_rng(3)
    atoms = _unit(rng.standard_normal((ATOMS, WIDTH))).astype(np.float32)
    sae = tiny_cfg.models.sae.model_copy(update={"latents": 24, "k": 2, "aux_k": 8, "min_steps": 300,
                                                 "max_steps": 300, "batch_size": 64, "lr": 0.01})
    cfg = tiny_cfg.model_copy(update={"models": tiny_cfg.models.model_copy(update={"sae": sae})})

    day1 = _sparse(rng, atoms, 160, kitchen_rows=30)
    night1, _ = _sae_night(root, cfg, DAY1, day1)
    assert night1["identities"]["born"] == 24 and night1["identities"]["previous_version"] is None
    # The person names the neuron whose moments are the kitchen (atom 0's rows).
    listing = api.list_neurons(root, moments=5)
    kitchen = max(listing["neurons"], key=lambda n: sum(m["clip_id"] <= 30 for m in n["top"]))
    api.name_neuron(root, kitchen["id"], "kitchen")

    # Night 2 overlaps night 1 (the same atoms, new moments, the kitchen again) and continues its model.
    day2 = _sparse(rng, atoms, 160, kitchen_rows=30)
    night2, clips2 = _sae_night(root, cfg, DAY2, day2)
    ids = night2["identities"]
    assert night2["resumed_from"] == DAY1.isoformat() and ids["previous_version"] == f"sae@{DAY1}"
    kept = {k["id"]: k for k in ids["kept_listed"]}
    assert kitchen["id"] in kept and kept[kitchen["id"]]["name"] == "kitchen"
    print(f"\nkitchen (neuron {kitchen['id']}) kept on night 2, match cosine {kept[kitchen['id']]['cosine']}; "
          f"night 2: {ids['kept']} kept (mean cosine {ids['match_cosine']['mean']}), {ids['born']} born, "
          f"{ids['lost']} lost")
    assert kept[kitchen["id"]]["cosine"] >= sae.match_threshold
    # And the name finds night 2's kitchen moments.
    hits = api.query(root, neuron="kitchen", topk=10, date_from=DAY2, date_to=DAY2, config=cfg)
    assert hits and sum(h.clip_id in clips2[:30] for h in hits) >= 8
