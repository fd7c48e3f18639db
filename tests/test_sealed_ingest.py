"""Ingest and the readers of its outputs on a sealed memory (``memory.encryption: on``, #18).

One small day (a video with sound, a voice memo) is ingested into a plain root and into a
sealed one. The sealed root must hold only sealed frames, segments and clip copies, each
opening under its final name as a valid JPEG, WAV or MP4, with the same clips as the plain
run, and FFmpeg's plaintext must be gone from the scratch folder. Then the readers that
follow ingest (keep, the vision and audio loaders, episodes' loudness, the probe set, the
journal) read the sealed files as they read plain ones.
"""
from __future__ import annotations

import datetime as dt
import errno
import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from conftest import make_media
from PIL import Image

from core import vault
from core.atomic import TMP_MARK
from core.config import CONFIG_DIR, load_config
from core.diskfull import DiskFull
from core.keys import ScryptCost, init_key, unlock
from core.paths import Paths
from core.sealed import is_sealed
from memory.db import make_sessionmaker, open_database
from stages import Night

DAY = dt.date(2026, 1, 15)
PASSPHRASE = "pw"
OUTPUTS = ("clips", "frames", "audio")
MAGIC = {".jpg": b"\xff\xd8\xff", ".wav": b"RIFF", ".mp4": b"ftyp"}


def _cfg(sealed: bool):
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    return cfg.model_copy(update={
        "ingest": cfg.ingest.model_copy(update={"write_clips": True, "workers": 1}),
        "memory": cfg.memory.model_copy(update={"encryption": sealed})})


def _night(root: Path, sealed: bool) -> Night:
    paths = Paths.at(root)
    engine = open_database(paths.database)
    return Night(DAY, _cfg(sealed), paths, engine, make_sessionmaker(engine), "cpu", logging.getLogger("test"))


def _make_day(raw: Path) -> None:
    make_media(raw / "VID_20260115_081502.mp4", seconds=7, extra=["-g", "10"])
    make_media(raw / "voice memo.m4a", seconds=4, video=None)


def _scratch_leftovers() -> set[str]:
    return {p.name for p in vault.scratch_dir().glob("sleep-*")}


def _files(root: Path) -> list[Path]:
    return sorted(p for kind in OUTPUTS for p in (root / "data" / kind).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """The day ingested into a plain root and into a sealed one: ``(plain, sealed, results, scratch before)``."""
    from stages import ingest

    base = tmp_path_factory.mktemp("sealed_ingest")
    plain, sealed = base / "plain", base / "sealed"
    for root in (plain, sealed):
        _make_day(root / "data" / "raw" / DAY.isoformat())
    master = init_key(sealed / "memory" / "key.json", PASSPHRASE, cost=ScryptCost(n=2**10))
    vault.register(sealed, master)
    before = _scratch_leftovers()
    results = {}
    try:
        for name, root in (("plain", plain), ("sealed", sealed)):
            night = _night(root, name == "sealed")
            try:
                results[name] = ingest.run(night)
            finally:
                night.engine.dispose()
        yield plain, sealed, results, before
    finally:
        vault.forget_all()


@pytest.fixture
def sealed_night(days):
    """A night on the sealed root (its key registered again: another test may have dropped it)."""
    _, sealed, _, _ = days
    vault.register(sealed, unlock(sealed / "memory" / "key.json", PASSPHRASE))
    night = _night(sealed, True)
    yield night
    night.engine.dispose()


def test_sealed_ingest_counts_as_a_plain_one(days):
    _, _, results, _ = days
    totals = [{k: r[k] for k in ("clips", "frames", "audio_segments")} for r in (results["plain"], results["sealed"])]
    assert totals[0] == totals[1] and totals[0]["clips"] == 5 and totals[0]["frames"] == 7
    assert results["sealed"]["failed"] == [] and results["sealed"]["added"] == results["plain"]["added"]


def test_every_output_is_sealed_and_opens_under_its_final_name(days):
    plain, sealed, _, _ = days
    files = _files(sealed)
    suffixes = {p.suffix for p in files}
    assert suffixes == {".jpg", ".wav", ".mp4"}, suffixes
    # The same files by name as the plain run's, each sealed.
    assert [p.relative_to(sealed) for p in files] == [p.relative_to(plain) for p in _files(plain)]
    keyring = Paths.at(sealed).vault
    for path in files:
        assert is_sealed(path), path
        data = keyring.read_bytes(path)
        assert MAGIC[path.suffix] in data[:12], path
        assert data == (plain / path.relative_to(sealed)).read_bytes()  # FFmpeg is deterministic
        if path.suffix == ".jpg":
            with keyring.open(path) as fh, Image.open(fh) as image:
                assert min(image.size) == 96
        elif path.suffix == ".wav":
            with keyring.open(path) as fh:
                wave, rate = sf.read(fh)
            assert rate == 16000 and len(wave) > 0
    for path in (plain / "data").rglob("*"):
        assert not path.is_file() or path.is_relative_to(plain / "data" / "raw") or not is_sealed(path)
    assert not [p for p in sealed.rglob(f"*{TMP_MARK}*")]


def test_nothing_is_left_in_the_scratch_folder(days):
    _, _, _, before = days
    assert _scratch_leftovers() - before == set()


def test_a_full_disk_while_sealing_names_the_final_folder(tmp_path, monkeypatch):
    from ingest import extract

    keyring = vault.Vault(tmp_path / "root", b"k" * 32)
    work, tmp = tmp_path / "scratch", tmp_path / "root" / "data" / "frames" / ".k.tmp-1"
    work.mkdir()
    tmp.mkdir(parents=True)
    (work / "00000_0.jpg").write_bytes(b"\xff\xd8" * 100)

    def no_room(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extract.SealedWriter, "write", no_room)
    final = tmp_path / "root" / "data" / "frames" / "k"
    with pytest.raises(DiskFull) as caught:
        extract._seal_outputs(keyring, {"frames": work}, {"frames": tmp}, {"frames": final})
    assert caught.value.filename == str(final) and caught.value.errno == errno.ENOSPC


def test_clip_copies_are_sealed_while_ffmpeg_writes_the_next(tmp_path):
    from ingest.command import SEGMENT_LIST
    from ingest.extract import CopySealer

    key = b"k" * 32
    root = tmp_path / "root"
    work, tmp, final = tmp_path / "scratch", root / "data" / "clips" / ".k.tmp-1", root / "data" / "clips" / "k"
    work.mkdir()
    tmp.mkdir(parents=True)
    for n in range(3):
        (work / f"{n:05d}.mp4").write_bytes(b"copy %d" % n)
    sealer = CopySealer(vault.Vault(root, key), work, tmp, final)
    sealer()  # no list yet: FFmpeg has finished no copy
    (work / SEGMENT_LIST).write_text("00000.mp4,0.000000,3.200000\n00001.mp4,3.2")  # the second still written
    sealer()
    assert sorted(p.name for p in tmp.iterdir()) == ["00000.mp4"] and not (work / "00000.mp4").exists()
    (work / SEGMENT_LIST).write_text("00000.mp4,0.000000,3.200000\n00001.mp4,3.200000,6.200000\n"
                                     "00002.mp4,6.200000,7.000000\n")
    sealer(finished=True)
    assert sorted(p.name for p in tmp.iterdir()) == ["00000.mp4", "00001.mp4", "00002.mp4"]
    assert sorted(p.name for p in work.iterdir()) == [SEGMENT_LIST]  # the list is read by _file_outputs
    for n in range(3):  # each opens where its folder is renamed to
        assert vault.Vault(root, key).open(tmp / f"{n:05d}.mp4", name_as=final / f"{n:05d}.mp4").read() == b"copy %d" % n


def test_a_long_recording_seals_its_copies_as_ffmpeg_goes(tmp_path, monkeypatch):
    """In this process (the pool's workers cannot be patched): copies sealed while FFmpeg runs
    end up as a plain memory's, and the scratch folder never held them all at once."""
    from ingest import extract
    from ingest.probe import probe_file

    source = make_media(tmp_path / "long.mp4", seconds=40, extra=["-g", "10"])
    early = []

    class Watched(extract.CopySealer):
        def __call__(self, finished=False):
            before = len(self.sealed)
            super().__call__(finished)
            if not finished:
                early.append(len(self.sealed) - before)

    monkeypatch.setattr(extract, "POLL_SECONDS", 0.002)
    monkeypatch.setattr(extract, "CopySealer", Watched)
    results, roots = [], []
    for name, key in (("plain", None), ("sealed", b"k" * 32)):
        root = tmp_path / name
        (root / "memory").mkdir(parents=True)
        vault.register(root, key)
        folders = {kind: root / "data" / kind / DAY.isoformat() / "k" for kind in ("frames", "audio", "clips")}
        job = extract.Job(path=str(source), info=probe_file(source), cfg=_cfg(key is not None).ingest,
                          root=str(root), frames_dir=str(folders["frames"]), audio_dir=str(folders["audio"]),
                          clips_dir=str(folders["clips"]))
        results.append(extract.extract_source(job))
        roots.append(root)
    vault.forget_all()
    plain, sealed = results
    assert sealed.reason is None and [(c.index, c.frames, c.audio, c.video_path) for c in sealed.clips] == [
        (c.index, c.frames, c.audio, c.video_path) for c in plain.clips]
    copies = sorted((roots[1] / "data" / "clips").rglob("*.mp4"))
    assert len(copies) >= 10 and all(is_sealed(p) for p in copies)
    keyring = vault.Vault(roots[1], b"k" * 32)
    assert [keyring.read_bytes(p) for p in copies] == [
        (roots[0] / p.relative_to(roots[1])).read_bytes() for p in copies]
    assert sum(early) > 0, "no copy was sealed before FFmpeg exited"


def test_ffmpeg_is_watched_while_it_runs_and_killed_on_a_failure(monkeypatch):
    import sys
    import time

    from ingest import extract

    monkeypatch.setattr(extract, "POLL_SECONDS", 0.02)
    calls = []
    proc = extract._run_ffmpeg([sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.stderr.write('said')"],
                               lambda: calls.append(1))
    assert proc.returncode == 0 and proc.stderr == "said" and calls

    def full():
        raise DiskFull("/r/data/clips/k")

    started = time.monotonic()
    with pytest.raises(DiskFull):
        extract._run_ffmpeg([sys.executable, "-c", "import time; time.sleep(30)"], full)
    assert time.monotonic() - started < 10


def test_keep_reads_sealed_frames_and_segments(sealed_night):
    from stages import keep

    frame = next(p for p in _files(sealed_night.paths.root) if p.suffix == ".jpg")
    segment = next(p for p in _files(sealed_night.paths.root) if p.suffix == ".wav")
    assert keep.keyframe_jpeg(frame, 64, 80)[:3] == b"\xff\xd8\xff"
    wave, rate = sf.read(io.BytesIO(keep.snippet_bytes(segment, "flac")))
    assert rate == 16000 and len(wave) == 3 * 16000
    result = keep.run(sealed_night)
    assert result["skipped"] == [] and result["keyframes"] == 3 and result["snippets"] == 5


def test_frames_and_sounds_load_from_a_sealed_memory(sealed_night, days):
    from models.audio.features import read_wav
    from models.vision.frames import decode_frames
    from stages.audio import decode_audio
    from stages.episodes import _loudness

    plain = days[0]
    root = sealed_night.paths.root
    frames = [p for p in _files(root) if p.suffix == ".jpg"]
    sealed_cache = decode_frames(frames, 32, progress=False)
    plain_cache = decode_frames([plain / p.relative_to(root) for p in frames], 32, progress=False)
    assert sealed_cache.failed == [] and len(sealed_cache.index) == len(frames)
    assert bool((sealed_cache.images == plain_cache.images).all())

    segment = next(p for p in _files(root) if p.suffix == ".wav")
    twin = plain / segment.relative_to(root)
    np.testing.assert_array_equal(read_wav(segment, 16000), read_wav(twin, 16000))
    np.testing.assert_array_equal(decode_audio(segment, 16000), decode_audio(twin, 16000))
    rel = segment.relative_to(root).as_posix()
    assert _loudness(sealed_night, SimpleNamespace(audio_path=rel, snippet_path=None)) is not None


def test_probe_set_is_sealed_and_reads_back(sealed_night):
    from memory.forget import probes_folder
    from stages.audio import decode_audio
    from stages.probes import MANIFEST, cut_probe_set, run

    before = _scratch_leftovers()
    probes = cut_probe_set(sealed_night)
    assert probes and all(p["photo"] for p in probes)
    folder = probes_folder(sealed_night.paths)
    files = sorted(folder.iterdir())
    assert files and all(is_sealed(p) for p in files)
    keyring = sealed_night.paths.vault
    manifest = json.loads(keyring.read_text(folder / MANIFEST))
    assert [p["clip_id"] for p in manifest["probes"]] == [p["clip_id"] for p in probes]
    with keyring.open(folder / probes[0]["photo"]) as fh, Image.open(fh) as image:
        assert image.format == "JPEG"
    sound = next(p["sound"] for p in probes if p["sound"])
    assert abs(len(decode_audio(folder / sound, 16000)) - 3 * 16000) < 100  # resampled from 44.1 kHz
    assert _scratch_leftovers() - before == set()
    measured = run(sealed_night)  # the set is found, not cut again; nothing is embedded yet
    assert measured["date"] == DAY.isoformat() and not measured["cut_tonight"]
    assert measured["probes"] == len(probes) and "nothing stored" in measured["spaces"]["vision"]["note"]


def test_journal_add_seals_the_journal_and_a_plain_one_still_reads(sealed_night, monkeypatch):
    from core.errors import ConfigError
    from stages import journal

    def no_model(device):
        raise ConfigError("no text model in this test")

    monkeypatch.setattr(journal, "load_encoder", no_model)
    raw = sealed_night.paths.raw(DAY)
    (raw / "journal.txt").write_text("08:00 porridge by the window\n")  # the person's own, plain
    cfg = sealed_night.cfg.journal
    added = journal.add_entry(sealed_night.paths, cfg, "tea with Ana", dt.time(9, 30), DAY, "cpu")
    journal.add_entry(sealed_night.paths, cfg, "walked home", None, DAY, "cpu")
    assert added["line"] == 1 and "not searchable" in added["note"]
    written = raw / journal.JOURNAL_FILE
    assert is_sealed(written) and b"tea with Ana" not in written.read_bytes()
    files, entries, notes = journal.read_journal(raw, cfg)
    assert [p.name for p in files] == ["journal.md", "journal.txt"] and notes == []
    assert [(e.at, e.text, e.origin) for e in entries] == [
        ("09:30", "tea with Ana", "file"), (None, "walked home", "file"), ("08:00", "porridge by the window", "file")]
