"""bench/jepa.py runs end to end (CPU, tiny sizes, two steps); the GPU figure is its real job."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_bench_smoke_on_cpu(capsys):
    pytest.importorskip("timm")
    path = Path(__file__).resolve().parent.parent / "bench" / "jepa.py"
    spec = importlib.util.spec_from_file_location("bench_jepa", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--json"])
    assert result["jepa_images_per_s"] > 0 and result["timm_vit_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["jepa_images_per_s"] / result["timm_vit_images_per_s"], rel=0.01)
    assert '"ratio"' in capsys.readouterr().out
