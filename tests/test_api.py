"""The Python API (``api``): the same answers as the CLI's ``--json``, and typed argument checks."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli
from memfill import day_vectors, fill
from sqlalchemy.orm import Session

import api
from core.config import SleepConfig
from core.errors import UsageError
from core.paths import Paths
from memory import ledger
from memory.db import open_database
from memory.store import EmbeddingRow, write_embeddings

DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]
SAE_DIM = 16


@pytest.fixture
def mem(root):
    """Three days of 12 clips with vision vectors, and memory traces (space sae) on the last."""
    paths = Paths.at(root)
    engine = open_database(paths.database)
    days = fill(engine, paths, DAYS, n_clips=12)
    traces = np.maximum(day_vectors(12, seed=7, dim=SAE_DIM), 0)  # a trace is non-negative
    write_embeddings(engine, paths, space="sae", model_version="sae@2026-01-12", date=DAYS[-1],
                     rows=[EmbeddingRow(c, "vision") for c in days[DAYS[-1]][0]], vectors=traces)
    with Session(engine) as s:
        for day in DAYS:
            ledger.mark_started(s, day, "ingest", "h")
    yield paths, {day: ids for day, (ids, _) in days.items()}
    engine.dispose()


def _cli_json(paths: Paths, *args: str) -> list[dict]:
    proc = run_cli("query", *args, "--json", "--root", str(paths.root))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_query_answers_what_the_cli_prints_as_json(mem):
    paths, ids = mem
    clip = ids["2026-01-11"][4]
    hits = api.query(paths.root, clip=clip, topk=5, date_from=dt.date(2026, 1, 11))
    assert hits and all(isinstance(h, api.Hit) for h in hits)
    assert [h.as_dict() for h in hits] == _cli_json(paths, "--clip", str(clip), "--topk", "5",
                                                    "--from", "2026-01-11")
    assert clip not in {h.clip_id for h in hits} and {h.date for h in hits} <= {"2026-01-11", "2026-01-12"}


def test_query_by_neurons_answers_what_the_cli_prints(mem):
    paths, _ = mem
    hits = api.query(paths.root, neuron=[3, 5], topk=50)
    assert hits and all(h.space == "sae" and h.score > 0 for h in hits)
    assert [h.as_dict() for h in hits] == _cli_json(paths, "--neuron", "3,5", "--topk", "50")


def test_one_neuron_may_be_a_number_or_a_list(mem):
    paths, _ = mem
    assert api.query(paths.root, neuron=3) == api.query(paths.root, neuron=[3]) == api.query(paths.root, neuron="3")


@pytest.mark.parametrize("neuron, message", [(b"3", "expected neuron ids or names"), ([], "at least one"),
                                             ([2, 1.5], "expected a neuron id or name"),
                                             (SAE_DIM, f"has neurons 0 to {SAE_DIM - 1}")])
def test_bad_neurons_are_usage_errors(mem, neuron, message):
    paths, _ = mem
    with pytest.raises(UsageError, match=message):
        api.query(paths.root, neuron=neuron)


@pytest.mark.parametrize("examples", [{"clip": 1, "text": "a dog"}, {"image": "x.jpg", "neuron": 2}, {}])
def test_exactly_one_example_is_required(mem, examples):
    paths, _ = mem
    with pytest.raises(UsageError, match="exactly one of image, audio, clip, fragment, neuron, text"):
        api.query(paths.root, **examples)


@pytest.mark.parametrize("topk", [0, -3, 2.5, "5", True])
def test_topk_must_be_a_whole_number_of_at_least_one(mem, topk):
    paths, ids = mem
    with pytest.raises(UsageError, match="--topk"):
        api.query(paths.root, clip=ids["2026-01-10"][0], topk=topk)


def test_dates_may_be_date_objects_or_text(mem):
    paths, ids = mem
    clip = ids["2026-01-10"][0]
    as_dates = api.query(paths.root, clip=clip, topk=50, date_from=dt.date(2026, 1, 11),
                         date_to=dt.date(2026, 1, 11))
    as_text = api.query(paths.root, clip=clip, topk=50, date_from="2026-01-11", date_to="2026-01-11")
    assert as_dates == as_text and len(as_dates) == 12 and {h.date for h in as_dates} == {"2026-01-11"}


@pytest.mark.parametrize("bad", ["2026-02-30", "11/01/2026", dt.datetime(2026, 1, 11, 8), 20260111])
def test_a_bad_date_is_a_usage_error(mem, bad):
    paths, ids = mem
    with pytest.raises(UsageError):
        api.query(paths.root, clip=ids["2026-01-10"][0], date_from=bad)


@pytest.mark.parametrize("kwargs, message", [({"space": "colour"}, "--space colour"),
                                             ({"modality": "smell"}, "--modality smell"),
                                             ({"clip": "12"}, "expected a clip id"),
                                             ({"image": "/no/such.jpg", "clip": None}, "no such file"),
                                             ({"image": __file__, "clip": None, "space": "sae"},
                                              "an image query searches vision or shared"),
                                             ({"audio": __file__, "clip": None, "space": "vision"},
                                              "an audio query searches audio or shared")])
def test_other_bad_arguments_are_usage_errors(mem, kwargs, message):
    paths, ids = mem
    with pytest.raises(UsageError, match=message):
        api.query(paths.root, **{"clip": ids["2026-01-10"][0], **kwargs})


def test_a_config_object_is_used_as_given_but_takes_no_overrides(mem):
    paths, ids = mem
    clip = ids["2026-01-10"][0]
    assert api.query(paths.root, clip=clip, config=SleepConfig()) == api.query(paths.root, clip=clip)
    with pytest.raises(UsageError, match="overrides"):
        api.query(paths.root, clip=clip, config=SleepConfig(), overrides=["memory.search.index=exact"])


def test_query_before_any_night_is_a_usage_error(root):
    with pytest.raises(UsageError, match="no memory yet"):
        api.query(root, clip=1)


def test_forget_removes_what_plan_forget_names(mem):
    paths, ids = mem
    plan = api.plan_forget(paths.root, "2026-01-11")
    assert plan["database"]["clips"] == 12
    assert api.forget(paths, dt.date(2026, 1, 11)) == plan
    after = api.query(paths.root, clip=ids["2026-01-10"][0], topk=100)
    assert len(after) == 23 and "2026-01-11" not in {h.date for h in after}
    assert api.doctor(paths.root)["ok"]


def test_status_lists_the_nights_and_the_cli_adds_the_daemon(mem):
    from pipeline.status import night_status

    paths, _ = mem
    nights = api.status(paths.root)
    assert list(nights["nights"]) == DAYS and nights["running"] is None
    assert night_status(paths) == {**nights, "daemon": None}


def test_the_api_imports_without_torch():
    code = "import sys; from api import query, Hit; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(api.__all__) == {"query", "Hit", "forget", "plan_forget", "doctor", "status", "versions",
                                "reembed", "list_neurons", "show_neuron", "name_neuron", "journal_query",
                                "journal_add", "JournalHit", "dream_clips"}
