"""``memory.encryption: on`` over a whole night (issue #18).

One tiny night over a recording whose file name, journal and pictures carry markers, run
through the CLI as cron would (the passphrase from ``SLEEP_PASSPHRASE_FILE``). Then:

- no marker is found in any file under the root: not the source file's name, not a journal
  line (the user's own ``journal.txt`` and one that ``journal add`` wrote), not a byte run
  of a frame or of an audio segment, and the database is no plain SQLite file. The user's
  own inputs in ``data/raw`` (the recording, the journal they wrote) are theirs, and left
  out of the scan: sleep never writes them;
- queries, the report, a dream and ``doctor`` work as on a plain memory;
- a wrong passphrase and a missing one are a clear error, and nothing under the root
  changes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import REPO, make_media, run_cli

from core.keys import ScryptCost, init_key
from core.paths import Paths

DATE = "2026-01-15"
SOURCE_MARK = "zanzibar-holiday"
JOURNAL_MARK = "quokka-lighthouse"
ADDED_MARK = "xylophone-soup"
PASSPHRASE = "correct horse battery staple"
# The tiny config with its trainers cut short: what is tested is where bytes go.
FAST = ["models.reconstruct.min_steps=40", "models.reconstruct.max_steps=40", "models.inpaint.steps=20",
        "dream.steps=10", "models.jepa.steps=20", "models.align.min_steps=40", "models.align.max_steps=40",
        "memory.encryption=true"]


def _options(root: Path) -> list[str]:
    args = ["--root", str(root), "--config", str(REPO / "configs/tiny.yaml")]
    for override in FAST:
        args += ["--set", override]
    return args


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


def _env(passphrase_file: Path | None) -> dict:
    env = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    if passphrase_file is not None:
        env["SLEEP_PASSPHRASE_FILE"] = str(passphrase_file)
    return env


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sealed_night(tmp_path_factory):
    """A sealed root after one tiny night and a ``journal add``: (root, inputs, passphrase file)."""
    base = tmp_path_factory.mktemp("sealed")
    root = base / "root"
    raw = root / "data" / "raw" / DATE
    recording = make_media(raw / f"{SOURCE_MARK}.mp4", seconds=9.0)
    journal = raw / "journal.txt"
    journal.write_text(f"09:00 walked the {JOURNAL_MARK} pier at dawn\n10:30 coffee by the harbour\n")
    init_key(root / "memory" / "key.json", PASSPHRASE, cost=ScryptCost(n=2**12))
    passphrase_file = _secret(base / "passphrase", PASSPHRASE)
    env = _env(passphrase_file)
    added = run_cli("journal", "add", "--date", DATE, f"11:00 ate the {ADDED_MARK} at noon",
                    *_options(root), env=env)
    assert added.returncode == 0, added.stderr
    night = run_cli("run", "--date", DATE, *_options(root), env=env, timeout=900)
    assert night.returncode == 0, night.stdout + night.stderr
    return root, {recording, journal}, passphrase_file


def _markers(root: Path) -> dict[str, bytes]:
    """The plaintext byte runs that must not be found: names, journal lines, a frame's and a
    sound's bytes (read through the vault, so as sealed files decrypt)."""
    paths = Paths.at(root)
    frame = next(paths.frames(__import__("datetime").date.fromisoformat(DATE)).rglob("*.jpg"))
    segment = next(paths.audio_segments(__import__("datetime").date.fromisoformat(DATE)).rglob("*.wav"))
    frame_bytes, segment_bytes = paths.vault.read_bytes(frame), paths.vault.read_bytes(segment)
    assert frame_bytes[:2] == b"\xff\xd8" and segment_bytes[:4] == b"RIFF"
    middle = len(frame_bytes) // 2
    return {"source name": SOURCE_MARK.encode(), "journal line": JOURNAL_MARK.encode(),
            "added journal line": ADDED_MARK.encode(),
            "frame bytes": frame_bytes[middle:middle + 48],
            "audio bytes": segment_bytes[len(segment_bytes) // 2:len(segment_bytes) // 2 + 48],
            "plain SQLite header": b"SQLite format 3\x00"}


def test_no_plaintext_marker_anywhere_under_the_root(sealed_night, monkeypatch):
    root, inputs, passphrase_file = sealed_night
    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(passphrase_file))
    from core import vault

    vault.forget_all()
    markers = _markers(root)
    scanned, found = 0, []
    for path in root.rglob("*"):
        if not path.is_file() or path in inputs:
            continue
        data = path.read_bytes()
        scanned += 1
        found += [f"{name} in {path.relative_to(root)}" for name, mark in markers.items() if mark in data]
        found += [f"{name} in the file name {path.relative_to(root)}" for name, mark in markers.items()
                  if name.endswith("name") and mark.decode() in str(path.relative_to(root))]
    assert scanned > 50, f"only {scanned} files: did the night write its outputs?"
    assert not found, "plaintext under a sealed root:\n" + "\n".join(found)
    vault.forget_all()


def test_queries_report_dream_and_doctor_work_sealed(sealed_night, tmp_path, monkeypatch):
    root, _, passphrase_file = sealed_night
    env = _env(passphrase_file)
    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(passphrase_file))
    from core import vault

    vault.forget_all()
    paths = Paths.at(root)
    frame = sorted(paths.frames(__import__("datetime").date.fromisoformat(DATE)).rglob("*.jpg"))[3]
    probe = tmp_path / "photo.jpg"  # outside the root: the user's own photo
    probe.write_bytes(paths.vault.read_bytes(frame))
    vault.forget_all()

    found = run_cli("query", "--image", str(probe), "--json", *_options(root), env=env)
    assert found.returncode == 0, found.stderr
    assert DATE in found.stdout and '"clip_id"' in found.stdout
    assert "layout:" not in found.stderr, found.stderr  # the hits' sealed keyframes were read and ranked

    journal = run_cli("query", "--journal", "a lighthouse pier", "--json", *_options(root), env=env)
    assert journal.returncode == 0, journal.stderr
    assert JOURNAL_MARK in journal.stdout  # decrypted for the user who holds the key

    checked = run_cli("doctor", "--read-data", "--root", str(root), env=env)  # no --config: unlocks from the env
    assert checked.returncode == 0, checked.stdout + checked.stderr

    page = run_cli("report", "--date", DATE, "--print", *_options(root), env=env)
    assert page.returncode == 0, page.stderr
    assert "<html" in page.stdout.lower()


@pytest.mark.parametrize("passphrase", ["a wrong passphrase", None])
def test_wrong_or_missing_passphrase_is_a_clear_error_and_writes_nothing(sealed_night, tmp_path, passphrase):
    root, _, _ = sealed_night
    passphrase_file = _secret(tmp_path / "wrong", passphrase) if passphrase else None
    before = _snapshot(root)
    night = run_cli("run", "--date", DATE, "--force", *_options(root), env={
        **_env(passphrase_file), "SLEEP_PASSPHRASE_FILE": str(passphrase_file or "")})
    assert night.returncode == 2, night.stdout + night.stderr
    expected = "wrong passphrase" if passphrase else "no passphrase"
    assert expected in night.stderr.lower(), night.stderr
    assert "Traceback" not in night.stderr
    found = run_cli("query", "--clip", "1", *_options(root), env={
        **_env(passphrase_file), "SLEEP_PASSPHRASE_FILE": str(passphrase_file or "")})
    assert found.returncode == 2 and expected in found.stderr.lower(), found.stderr
    assert _snapshot(root) == before


def test_a_config_that_disagrees_with_the_memory_is_refused(sealed_night, root):
    sealed_root, _, passphrase_file = sealed_night
    off = run_cli("status", "--root", str(sealed_root), env=_env(passphrase_file))
    # status has no --config: it unlocks from the passphrase sources, and reads
    assert off.returncode == 0, off.stderr
    plain = run_cli("query", "--clip", "1", "--root", str(sealed_root), "--config", str(REPO / "configs/tiny.yaml"),
                    env=_env(passphrase_file))
    assert plain.returncode == 2 and "set memory.encryption: on" in plain.stderr, plain.stderr
    (root / "data" / "raw" / DATE).mkdir(parents=True)
    no_key = run_cli("run", "--date", DATE, "--root", str(root), "--config", str(REPO / "configs/tiny.yaml"),
                     "--set", "memory.encryption=true", env=_env(passphrase_file))
    assert no_key.returncode == 2 and "sleep.py key init" in no_key.stderr, no_key.stderr
    assert not (root / "memory").exists() and not (root / "reports").exists()


def test_the_ingest_workers_lines_reach_the_sealed_log(sealed_night, monkeypatch):
    # A spawned worker has no handlers of its own and a sealed log is written by the night's
    # process only: the workers' records travel to it through a queue (core.logs.worker_records).
    root, _, passphrase_file = sealed_night
    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(passphrase_file))
    from core import vault

    vault.forget_all()
    paths = Paths.at(root)
    text = paths.vault.read_text(paths.report(__import__("datetime").date.fromisoformat(DATE)) / "sleep.log")
    vault.forget_all()
    pid = re.compile(r" \[(\d+)\]: ")
    workers = {pid.search(line)[1] for line in text.splitlines() if " ingest.extract " in line}
    night = {pid.search(line)[1] for line in text.splitlines() if " stages.ingest " in line}
    assert workers and night, text[-2000:]
    assert not workers & night  # written by the workers, logged by the night
