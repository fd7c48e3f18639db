"""What ``sleep`` writes besides the memory itself, with ``memory.encryption: on`` (issue #18):
checkpoints, the ranks' spill, dreams, the report, the night's log, and the web page's
media, all sealed on disk and read back as plaintext by whoever holds the key.

A plain memory keeps writing plain files (each test checks its plain twin where the code
takes another way for it).
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from PIL import Image

from core import vault as vaults
from core.config import CONFIG_DIR, load_config
from core.keys import MasterKeyError, ScryptCost, init_key, unlock
from core.paths import Paths
from core.sealed import CHUNK_SIZE, is_sealed

DATE = dt.date(2026, 1, 15)
PASSPHRASE = "correct horse battery staple"
MARK = "zanzibar-holiday"  # a word that must never be found in plain under a sealed root
TOKEN = "test-token-" + "y" * 21


def _seal(root: Path) -> Paths:
    init_key(root / "memory" / "key.json", PASSPHRASE, cost=ScryptCost(n=2**10))
    paths = Paths.at(root)
    vaults.register(paths.root, unlock(root / "memory" / "key.json", PASSPHRASE))
    return paths


@pytest.fixture
def sealed(tmp_path, monkeypatch) -> Paths:
    """A sealed root whose key this process holds (and no passphrase source in the environment)."""
    for name in ("SLEEP_PASSPHRASE_FILE", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    vaults.forget_all()
    yield _seal(tmp_path / "root")
    vaults.forget_all()


@pytest.fixture
def plain(tmp_path) -> Paths:
    return Paths.at(tmp_path / "plain")


def _passphrase_file(folder: Path) -> Path:
    path = folder / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    os.chmod(path, 0o600)
    return path


def _cfg(*overrides: str):
    return load_config(CONFIG_DIR / "tiny.yaml", ["memory.encryption=true", *overrides])


def _no_plain_mark(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert MARK.encode() not in path.read_bytes(), f"plaintext in {path.relative_to(root)}"


def _png(colour=(200, 30, 40), size=(24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


# -- checkpoints ------------------------------------------------------------------------
def test_a_checkpoint_is_sealed_and_loads_equal(sealed, plain):
    from models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    state = {"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 7, "config": {"name": MARK}}
    for paths, want_sealed in ((sealed, True), (plain, False)):
        path = save_checkpoint(paths.checkpoints / "vision", DATE, state)
        assert is_sealed(path) is want_sealed
        assert (paths.checkpoints / "vision" / "latest").read_text().strip() == DATE.isoformat()  # a date: plain
        assert latest_checkpoint(paths.checkpoints / "vision") == path
        loaded = load_checkpoint(path, ("model", "step"))
        assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["config"]["name"] == MARK
    _no_plain_mark(sealed.root)


def test_a_sealed_checkpoint_without_the_key_or_damaged_is_a_clear_error(sealed):
    from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = save_checkpoint(sealed.checkpoints / "sae", DATE, {"model": {"w": torch.ones(3)}})
    vaults.forget_all()
    with pytest.raises(MasterKeyError):
        load_checkpoint(path)
    vaults.register(sealed.root, unlock(sealed.memory / "key.json", PASSPHRASE))
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


# -- the ranks' spill ---------------------------------------------------------------------
def test_the_rank_spill_is_sealed_and_another_process_reads_it_from_its_passphrase(sealed, tmp_path):
    """What a follower rank does: it has the passphrase source in its environment, not the key."""
    from models.together import _read_spill, _write_spill

    folder = sealed.root / ".ranks-1-test"
    folder.mkdir()
    spill = folder / "call.pt"
    frames = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4)
    _write_spill(spill, ((frames, MARK), {"steps": 3}))
    assert is_sealed(spill)
    (args, kwargs) = _read_spill(spill)
    assert torch.equal(args[0], frames) and args[1] == MARK and kwargs == {"steps": 3}
    _no_plain_mark(sealed.root)

    passphrase = _passphrase_file(tmp_path)
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from models.together import _read_spill; (a, k) = _read_spill(Path(sys.argv[2])); "
            "print(int(a[0].sum()), a[1], k['steps'])")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), str(spill)], capture_output=True, text=True,
                          env={**os.environ, "SLEEP_PASSPHRASE_FILE": str(passphrase)}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(int(frames.sum())), MARK, "3"]

    plain_spill = tmp_path / "plain" / "call.pt"
    plain_spill.parent.mkdir()
    _write_spill(plain_spill, ((frames,), {}))
    assert not is_sealed(plain_spill) and torch.equal(_read_spill(plain_spill)[0][0], frames)


# -- dreams -----------------------------------------------------------------------------
def test_a_dream_folder_is_sealed_under_its_final_names(sealed, plain):
    from stages.dream import write_dream_folder

    for paths, want_sealed in ((sealed, True), (plain, False)):
        final = paths.root / "reports" / "dreams" / "one"
        pictures = {"dream-01.png": Image.new("RGB", (8, 8), (1, 2, 3)),
                    "source-a.jpg": Image.new("RGB", (8, 8), (200, 200, 200))}
        write_dream_folder(paths, final, pictures, {"dream.json": json.dumps({"caption": MARK})})
        assert sorted(p.name for p in final.iterdir()) == ["dream-01.png", "dream.json", "source-a.jpg"]
        assert all(is_sealed(p) is want_sealed for p in final.iterdir())
        with paths.vault.open(final / "dream-01.png") as fh, Image.open(fh) as image:
            assert image.format == "PNG" and image.getpixel((0, 0)) == (1, 2, 3)
        with paths.vault.open(final / "source-a.jpg") as fh, Image.open(fh) as image:
            assert image.format == "JPEG"
        assert json.loads(paths.vault.read_text(final / "dream.json")) == {"caption": MARK}
    _no_plain_mark(sealed.root)


def test_dream_copies_out_are_plain_and_refused_under_a_sealed_root(sealed, tmp_path):
    import argparse

    from cli.dream import _copy_out, _output_folder
    from core.errors import UsageError
    from stages.dream import write_dream_folder

    final = sealed.root / "reports" / "dreams" / "20260115T090000-blend-1-2"
    write_dream_folder(sealed, final, {"blend-01.png": Image.new("RGB", (8, 8), (9, 9, 9)),
                                       "source-a.png": Image.new("RGB", (8, 8), (5, 5, 5))})
    result = {"folder": str(final.relative_to(sealed.root)),
              "dreams": [{"file": str((final / "blend-01.png").relative_to(sealed.root)), "mix": 0.5}],
              "sources": [{"clip_id": 1, "picture": str((final / "source-a.png").relative_to(sealed.root))},
                          {"clip_id": 2, "picture": None}]}
    with pytest.raises(UsageError, match="outside"):
        _output_folder(argparse.Namespace(output=str(sealed.root / "plain"), root=str(sealed.root)))
    out = _output_folder(argparse.Namespace(output=str(tmp_path / "out"), root=str(sealed.root)))
    copies = [Path(c) for c in _copy_out(sealed.root, result, out)]
    assert [c.name for c in copies] == [f"{final.name}-blend-01.png", f"{final.name}-source-a.png"]
    for copy in copies:
        with Image.open(copy) as image:
            assert not is_sealed(copy) and image.format == "PNG"


# -- the report -------------------------------------------------------------------------
def _night_in_the_ledger(paths: Paths, result: dict) -> None:
    from memory import ledger
    from memory.db import make_sessionmaker, open_database

    engine = open_database(paths.database)
    try:
        with make_sessionmaker(engine)() as session:
            ledger.mark_started(session, DATE.isoformat(), "dream", "hash")
            ledger.mark_finished(session, DATE.isoformat(), "dream", seconds=1.5, result=result)
    finally:
        engine.dispose()


def _cli(*argv: str) -> int:
    from cli.main import build_parser

    args = build_parser().parse_args(list(argv))
    return args.func(args)


def test_the_report_is_sealed_and_the_cli_prints_it_decrypted(sealed, tmp_path, capsys):
    picture = _png()
    sealed.vault.write_bytes(sealed.report(DATE) / "dreams" / "memory-01.png", picture)
    _night_in_the_ledger(sealed, {"backend": "unclip", "note": "drawn for the test",
                                  "dreams": [{"kind": "memory", "file": "dreams/memory-01.png", "sources": [],
                                              "caption": f"a dream of {MARK}"}]})
    common = ["--date", DATE.isoformat(), "--root", str(sealed.root), "--config", str(CONFIG_DIR / "tiny.yaml"),
              "--set", "memory.encryption=true"]

    # As a person runs it: sleep.py unlocks the memory from the passphrase file, rebuilds, prints.
    printed = run_cli("report", *common, "--print", env={"SLEEP_PASSPHRASE_FILE": str(_passphrase_file(tmp_path)),
                                                         "TQDM_DISABLE": "1"})
    assert printed.returncode == 0, printed.stderr
    page = printed.stdout
    folder = sealed.report(DATE)
    assert is_sealed(folder / "index.html") and is_sealed(folder / "summary.json")
    assert "<html" in page.lower() and MARK in page
    assert base64.b64encode(picture).decode() in page  # the sealed picture, inlined as its plaintext
    assert json.loads(sealed.vault.read_text(folder / "summary.json"))["dream"]["dreams"][0]["caption"].endswith(MARK)
    _no_plain_mark(sealed.root)

    copy = tmp_path / "copy" / "report.html"
    assert _cli("report", *common, "--no-rebuild", "--output", str(copy)) == 0
    assert copy.read_text() == page == sealed.vault.read_text(folder / "index.html")
    assert not is_sealed(copy) and (copy.stat().st_mode & 0o077) == 0
    assert f"plain copy: {copy}" in capsys.readouterr().out

    from core.errors import UsageError

    with pytest.raises(UsageError, match="outside"):
        _cli("report", *common, "--output", str(sealed.root / "reports" / "plain.html"))
    with pytest.raises(UsageError, match="--output FILE"):
        _cli("report", *common, "--no-rebuild", "--open")
    with pytest.raises(UsageError, match="no report of 2026-01-16"):
        _cli("report", *[c if c != DATE.isoformat() else "2026-01-16" for c in common], "--no-rebuild", "--print")


def test_earlier_sealed_summaries_are_read_for_the_history(sealed):
    from report.history import earlier_summaries

    sealed.vault.write_text(sealed.report(DATE) / "summary.json", json.dumps({"date": DATE.isoformat(), "m": 1}))
    damaged = sealed.report(DATE - dt.timedelta(days=1)) / "summary.json"
    sealed.vault.write_text(damaged, "{}")
    damaged.write_bytes(damaged.read_bytes()[:-3])
    assert earlier_summaries(sealed, DATE + dt.timedelta(days=1)) == [(DATE.isoformat(), {"date": DATE.isoformat(),
                                                                                          "m": 1})]


# -- the web page -----------------------------------------------------------------------
def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_the_web_page_serves_sealed_media_and_the_report_decrypted(sealed):
    from web import make_app
    from web.server import running

    frame = sealed.root / "data" / "frames" / DATE.isoformat() / "clip-1" / "frame-000.jpg"
    plaintext = os.urandom(CHUNK_SIZE + CHUNK_SIZE // 2)  # two chunks: a range may straddle them
    sealed.vault.write_bytes(frame, plaintext)
    recording = sealed.raw(DATE) / "VID_20260115_090000.mp4"  # the user's own input: plain
    recording.parent.mkdir(parents=True)
    recording.write_bytes(b"plain recording bytes")
    sealed.vault.write_text(sealed.report(DATE) / "index.html", f"<html><body>{MARK}</body></html>")
    damaged = frame.with_name("frame-001.jpg")
    sealed.vault.write_bytes(damaged, b"a frame")
    damaged.write_bytes(damaged.read_bytes() + b"x")
    assert is_sealed(frame)

    with running(make_app(sealed.root, _cfg(), token=TOKEN)) as url:
        media = f"{url}/media/{frame.relative_to(sealed.root).as_posix()}"
        status, headers, body = _get(media)
        assert status == 200 and body == plaintext and headers["content-type"] == "image/jpeg"
        assert headers["accept-ranges"] == "bytes" and int(headers["content-length"]) == len(plaintext)

        start, end = CHUNK_SIZE - 100, CHUNK_SIZE + 99
        status, headers, body = _get(media, {"Range": f"bytes={start}-{end}"})
        assert status == 206 and body == plaintext[start:end + 1]
        assert headers["content-range"] == f"bytes {start}-{end}/{len(plaintext)}"
        status, _, body = _get(media, {"Range": "bytes=-10"})
        assert status == 206 and body == plaintext[-10:]
        status, _, body = _get(media, {"Range": f"bytes={len(plaintext) - 5}-"})
        assert status == 206 and body == plaintext[-5:]
        status, headers, _ = _get(media, {"Range": f"bytes={len(plaintext)}-"})
        assert status == 416 and headers["content-range"] == f"bytes */{len(plaintext)}"
        status, headers, body = _get(media, method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) == len(plaintext)
        status, _, body = _get(media, {"Range": "bytes=0-3", "If-Range": '"another version"'})
        assert status == 200 and body == plaintext

        status, _, body = _get(f"{url}/media/{damaged.relative_to(sealed.root).as_posix()}")
        assert status == 500 and b"damaged" in body

        status, _, body = _get(f"{url}/media/{recording.relative_to(sealed.root).as_posix()}",
                               {"Range": "bytes=0-4"})
        assert status == 206 and body == b"plain"

        status, headers, body = _get(f"{url}/report/{DATE.isoformat()}")
        assert status == 200 and MARK.encode() in body and headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert _get(f"{url}/report/{DATE.isoformat()}", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(f"{url}/report/2026-01-16")[0] == 404
        assert _get(f"{url}/report/..%2F..%2Fetc")[0] in (400, 404)
        status, _, body = _get(f"{url}/api/timeline")
        assert status == 200


def test_the_web_page_refuses_to_start_on_a_sealed_memory_it_cannot_open(sealed):
    from web import make_app

    vaults.forget_all()
    with pytest.raises(MasterKeyError):
        make_app(sealed.root, _cfg(), token=TOKEN)
    with pytest.raises(MasterKeyError, match="encryption"):
        make_app(sealed.root, load_config(CONFIG_DIR / "tiny.yaml"), token=TOKEN)


def test_a_range_header_is_read_as_starlette_reads_one():
    from web.decrypted import UNSATISFIABLE, wanted_range

    tags = ('"e"', "Mon")
    assert wanted_range(None, None, 100, tags) is None
    assert wanted_range("bytes=0-9", None, 100, tags) == (0, 10)
    assert wanted_range("bytes=90-200", None, 100, tags) == (90, 100)
    assert wanted_range("bytes=-30", None, 100, tags) == (70, 100)
    assert wanted_range("bytes=-300", None, 100, tags) == (0, 100)
    assert wanted_range("bytes=100-", None, 100, tags) == UNSATISFIABLE
    assert wanted_range("bytes=-0", None, 100, tags) == UNSATISFIABLE
    assert wanted_range("bytes=0-1,5-6", None, 100, tags) is None  # several: the whole file
    assert wanted_range("items=0-1", None, 100, tags) is None
    assert wanted_range("bytes=9-2", None, 100, tags) is None
    assert wanted_range("bytes=a-b", None, 100, tags) is None
    assert wanted_range("bytes=0-9", '"e"', 100, tags) == (0, 10)
    assert wanted_range("bytes=0-9", '"old"', 100, tags) is None


# -- the night's log --------------------------------------------------------------------
def test_the_night_log_of_a_sealed_root_is_sealed_and_appended_to(sealed, caplog, monkeypatch):
    from core import logs

    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("sleep.test")
    path = sealed.report(DATE) / "sleep.log"
    path.parent.mkdir(parents=True)
    path.write_text("a line from before encryption was turned on\n")  # plain: read, then sealed with the rest
    with logs.night_log(path):
        log.info("ingest: read %s.mp4", MARK)
    assert is_sealed(path)
    with pytest.raises(RuntimeError), logs.night_log(path):
        log.warning("second run of the night")
        raise RuntimeError("a stage broke")
    monkeypatch.setattr(logs, "SEALED_LOG_EVERY_S", 0.0)
    with logs.night_log(path):
        log.info("third run")
        assert "third run" in sealed.vault.read_text(path)  # written while the night still runs
    text = sealed.vault.read_text(path)
    lines = text.splitlines()
    assert lines[0] == "a line from before encryption was turned on"
    assert f"ingest: read {MARK}.mp4" in lines[1] and "sleep.test" in lines[1]
    assert "second run of the night" in lines[2] and "third run" in lines[3] and len(lines) == 4
    _no_plain_mark(sealed.root)
    assert not [h for h in logging.getLogger().handlers if isinstance(h, logs._SealedLogHandler)]


def test_a_damaged_sealed_log_is_set_aside_not_written_over(sealed, caplog):
    from core import logs

    caplog.set_level(logging.DEBUG)
    path = sealed.report(DATE) / "sleep.log"
    sealed.vault.write_text(path, "the first night\n")
    path.write_bytes(path.read_bytes()[:-1])
    with logs.night_log(path):
        logging.getLogger("sleep.test").info("the second night")
    (aside,) = path.parent.glob("sleep.log.unreadable-*")
    assert "did not open" in sealed.vault.read_text(path) and "the second night" in sealed.vault.read_text(path)
    assert is_sealed(aside)


def test_the_night_log_of_a_plain_root_is_a_plain_file_handler(plain, caplog):
    from core import logs

    caplog.set_level(logging.DEBUG)
    path = plain.report(DATE) / "sleep.log"
    with logs.night_log(path):
        assert any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
                   for h in logging.getLogger().handlers)
        logging.getLogger("sleep.test").info("plain line")
    assert not is_sealed(path) and "plain line" in path.read_text()
