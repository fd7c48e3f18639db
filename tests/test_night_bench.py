"""bench/night.py: the synthetic day, the projection rules, and one short night end to end."""
from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO

from core.config import CONFIG_DIR, load_config
from stages import stage_names


def _bench():
    spec = importlib.util.spec_from_file_location("bench_night", REPO / "bench" / "night.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row(stage: str, seconds: float, steps: int | None = None, train: float | None = None) -> dict:
    return {"stage": stage, "seconds": seconds, "steps": steps, "train_seconds": train}


def test_day_plan_holds_the_hours_in_phone_named_files_across_the_waking_day():
    bench = _bench()
    plan = bench.plan_day(bench.DaySpec(hours=1.0, file_minutes=5))
    assert sum(seconds for _, seconds, _ in plan) == 3600
    assert len(plan) == 12 and all(sum(s.seconds for s in scenes) == seconds for _, seconds, scenes in plan)
    names = [name for name, _, _ in plan]
    assert names[0] == "VID_20260316_070000.mp4" and names == sorted(names)
    assert names[-1] < "VID_20260316_230000.mp4"
    assert bench.plan_day(bench.DaySpec(hours=1.0)) == plan  # seeded


def test_projection_scales_footage_and_keeps_fixed_training_steps():
    bench = _bench()
    cfg = load_config(CONFIG_DIR / "tiny.yaml", ["models.align.min_steps=10", "models.align.max_steps=1000",
                                                 "models.align.epochs=2", "models.align.batch_size=32"])
    night = {"stages": [_row("ingest", 10.0), _row("vision", 5.0, 60, 3.0), _row("align", 2.0, 10, 1.0),
                        _row("retention", 0.5), _row("other", 0.25)],
             "results": {"align": {"pairs": 100, "heldout_pairs": 36}}}
    projection = bench.project(night, cfg, measured_hours=1.0, hours=16.0)
    by = {p["stage"]: p["seconds"] for p in projection["stages"]}
    assert by["ingest"] == pytest.approx(160.0)
    assert by["vision"] == pytest.approx(3.0 + 2.0 * 16)  # 60 steps either way; decoding and embedding x16
    # 64 training pairs -> 1024: 2 epochs of 32 batches = 64 steps instead of the 10 measured.
    assert by["align"] == pytest.approx(1.0 * 64 / 10 + 1.0 * 16)
    assert by["retention"] == 0.5 and by["other"] == 0.25
    assert projection["seconds"] == pytest.approx(sum(by.values()), abs=0.1)


def test_short_night_rows_sum_to_the_night_and_project(tmp_path):
    pytest.importorskip("timm")
    bench = _bench()
    spec = bench.DaySpec(hours=0.01, size="320x180", fps=10, bitrate="1M")
    figures = bench.measure(spec, str(CONFIG_DIR / "tiny.yaml"), cache=tmp_path / "cache", workdir=tmp_path / "work",
                            device="cpu", project_hours=16, baseline_steps=2, baseline_warmup=1, log=lambda *_: None)
    night = figures["night"]
    assert night["ok"], night["errors"]
    rows = night["stages"]
    assert [r["stage"] for r in rows] == [*stage_names(), "other"]
    assert sum(r["seconds"] for r in rows) == pytest.approx(night["seconds"], abs=0.05)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=0.01)
    assert all(r["peak_tree_rss_mb"] >= r["peak_rss_mb"] > 0 for r in rows)

    projection = figures["projection"]
    assert projection["factor"] == pytest.approx(1600)
    by = {p["stage"]: p for p in projection["stages"]}
    ingest = next(r for r in rows if r["stage"] == "ingest")
    assert by["ingest"]["seconds"] == pytest.approx(ingest["seconds"] * 1600, abs=0.1)
    vision = next(r for r in rows if r["stage"] == "vision")
    assert vision["steps"] == 60 and "fixed" in by["vision"]["rule"]
    assert projection["seconds"] > night["seconds"]

    assert [b["stage"] for b in figures["baselines"]] == ["vision", "audio", "dream"]
    for b in figures["baselines"]:
        assert b["stock_per_second"] > 0 and b["ours_per_second"] > 0
        assert b["ratio"] == pytest.approx(b["ours_per_second"] / b["stock_per_second"], rel=0.01)
    assert bench.make_day(spec, tmp_path / "cache")["cached"]  # a second run reuses the day
