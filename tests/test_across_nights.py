"""Day-1 memories after seven nights of learning encoders (bench/across_nights.py on the tiny config).

The issue's bar, image R@1 of day-1 probes against the whole memory: (b) night 7 after
re-embedding within 5 points of (a) night 1, and (c) night 7 through the maps only at
least 0.9 x (b). On the tiny config (60 JEPA steps a night, 9 probes) the figures swing by
a probe or two from run to run and the bar is not met reliably (BENCHMARKS.md, "Across
nights", has the runs); this test holds what the tiny config does show every time: day-1
moments stay findable far above chance both ways, and the report says so.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO

from core.config import CONFIG_DIR


def _bench():
    spec = importlib.util.spec_from_file_location("across_nights", REPO / "bench" / "across_nights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_day_one_probes_stay_findable_after_seven_nights(tmp_path):
    figures = _bench().measure(tmp_path, str(CONFIG_DIR / "tiny.yaml"), log=lambda *_: None)
    print(figures)  # the figures, for BENCHMARKS.md (pytest -s)
    assert all(night["ok"] for night in figures["nights"].values()), figures["nights"]
    assert figures["a"]["image_r1"] >= 0.5, figures["a"]  # day 1 alone: 9 clips, chance 0.11
    for key in ("b", "c"):  # all seven days: 60 clips, chance 0.017
        assert figures[key]["image_r1"] >= 10 * figures[key]["chance"], (key, figures[key])
    assert figures["b"]["chance"] < figures["a"]["chance"]  # (b) and (c) search all seven days
