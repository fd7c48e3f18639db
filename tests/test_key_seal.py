"""``sleep.py key seal``: an existing, unencrypted memory encrypted in place (issue #18).

A plain tiny night, then ``key seal`` (the passphrase from a file, as a script would give
it): every file sleep wrote is sealed and the database is SQLCipher; queries, doctor and the
next night work with ``memory.encryption: on``; the same answers as before. Stopped midway
(a file that fails to seal, a database export that fails), the memory still reads and a
rerun finishes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_media, run_cli

from core import vault
from core.keys import ScryptCost, unlock
from core.paths import Paths
from core.sealed import MAGIC
from memory import sealing

DATE, NEXT = "2026-01-15", "2026-01-16"
PASSPHRASE = "seal it now"
FAST = ["models.reconstruct.min_steps=40", "models.reconstruct.max_steps=40", "models.inpaint.steps=20",
        "dream.steps=10", "models.jepa.steps=20", "models.align.min_steps=40", "models.align.max_steps=40"]


def _options(root: Path, sealed: bool) -> list[str]:
    args = ["--root", str(root), "--config", str(REPO / "configs/tiny.yaml")]
    for override in FAST + (["memory.encryption=true"] if sealed else []):
        args += ["--set", override]
    return args


@pytest.fixture(scope="module")
def plain_night(tmp_path_factory):
    base = tmp_path_factory.mktemp("seal")
    root = base / "root"
    make_media(root / "data" / "raw" / DATE / "walk.mp4", seconds=9.0)
    make_media(root / "data" / "raw" / NEXT / "park.mp4", seconds=6.0, video="smptebars=size=160x120:rate=10")
    done = run_cli("run", "--date", DATE, *_options(root, sealed=False), env={"TQDM_DISABLE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    secret = base / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    return base, root, secret


def _copy(plain_night, tmp_path) -> Path:
    _, root, _ = plain_night
    copy = tmp_path / "root"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def _unsealed(root: Path) -> list[str]:
    left = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith("data/raw/") or rel == "memory/key.json" or path.name.startswith("."):
            continue
        if rel.startswith("checkpoints/") and path.name == "latest" or rel.startswith("memory/episodic.sqlite"):
            continue  # a date; the database (SQLCipher's pages, checked apart)
        if path.stat().st_size and path.read_bytes()[:len(MAGIC)] != MAGIC:
            left.append(rel)
    return left


@pytest.fixture(autouse=True)
def _no_key_left():
    yield
    vault.forget_all()


def test_key_seal_encrypts_an_existing_memory_in_place(plain_night, tmp_path):
    _, _, secret = plain_night
    root = _copy(plain_night, tmp_path)
    plain_env = {"TQDM_DISABLE": "1"}
    before = run_cli("query", "--clip", "1", "--json", *_options(root, sealed=False), env=plain_env)
    assert before.returncode == 0, before.stderr

    # A bare key for this memory is refused, naming `key seal`.
    bare = run_cli("key", "init", "--root", str(root), "--new-passphrase-file", str(secret), env=plain_env)
    assert bare.returncode == 2 and "key seal" in bare.stderr, bare.stderr

    sealed = run_cli("key", "seal", "--new-passphrase-file", str(secret), *_options(root, sealed=False),
                     env=plain_env, timeout=300)
    assert sealed.returncode == 0, sealed.stderr
    assert "database: sealed now" in sealed.stdout
    assert (root / "memory" / "key.json").exists()
    assert _unsealed(root) == []
    assert (root / "memory" / "episodic.sqlite").read_bytes()[:16] != b"SQLite format 3\x00"

    env = {"TQDM_DISABLE": "1", "SLEEP_PASSPHRASE_FILE": str(secret)}
    after = run_cli("query", "--clip", "1", "--json", *_options(root, sealed=True), env=env)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    checked = run_cli("doctor", "--read-data", "--root", str(root), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = run_cli("key", "seal", *_options(root, sealed=True), env=env)
    assert again.returncode == 0 and "sealed 0 files" in again.stdout and "already sealed" in again.stdout, \
        again.stdout + again.stderr
    # The next night runs sealed, and writes nothing in the clear.
    night = run_cli("run", "--date", NEXT, *_options(root, sealed=True), env=env, timeout=900)
    assert night.returncode == 0, night.stderr[-3000:]
    assert _unsealed(root) == []


def test_a_stopped_sealing_still_reads_and_a_rerun_finishes(plain_night, tmp_path, monkeypatch):
    _, _, secret = plain_night
    root = _copy(plain_night, tmp_path)
    paths = Paths.at(root)
    from core.keys import init_key

    master_key = init_key(paths.memory / "key.json", PASSPHRASE, cost=ScryptCost(n=2**12))
    keyring = vault.register(root, master_key)
    files = list(sealing._plain_files(paths))
    assert len(files) > 20

    # Stopped after a third of the files: the rest and the database are still plaintext.
    real_writer = type(keyring).writer
    written = []

    def stop_after_a_third(self, final, *args, **kwargs):
        if len(written) == len(files) // 3:
            raise KeyboardInterrupt
        written.append(final)
        return real_writer(self, final, *args, **kwargs)

    monkeypatch.setattr(type(keyring), "writer", stop_after_a_third)
    with pytest.raises(KeyboardInterrupt):
        sealing.seal_memory(paths, keyring)
    monkeypatch.undo()
    assert 0 < len(files) - len(_unsealed(root)) < len(files)
    assert not list(root.rglob(".*.tmp-*"))
    # With the key, the half-sealed files read; the database says what to do.
    vault.forget_all()
    env = {"TQDM_DISABLE": "1", "SLEEP_PASSPHRASE_FILE": str(secret)}
    half = run_cli("query", "--clip", "1", *_options(root, sealed=True), env=env)
    assert half.returncode == 2 and "key seal" in half.stderr, half.stderr

    # The export fails (a full disk): the plaintext database is left whole.
    keyring = vault.register(root, unlock(paths.memory / "key.json", PASSPHRASE))
    monkeypatch.setattr(sealing, "_plain_files", lambda paths: iter(()))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import sqlcipher3

    real_connect = sqlcipher3.connect
    monkeypatch.setattr(sqlcipher3, "connect", lambda *a, **k: _FailingExport(real_connect(*a, **k), full))
    with pytest.raises(OSError):
        sealing.seal_memory(paths, keyring)
    monkeypatch.undo()
    assert sealing.database_is_plain(paths) and not list(paths.memory.glob(".episodic.sqlite.tmp-*"))

    # Another process has the database open (a query, `sleep.py serve`): refused, left whole.
    # (Another process: this one's own connections share its POSIX locks, and SQLite cannot
    # see them from a second copy of its library.)
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(paths.database)!r})\n"
        "c.execute('SELECT count(*) FROM clips').fetchone()\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(sealing.SealingError, match="open in another process"):
            sealing.seal_memory(paths, keyring)
    finally:
        reader.communicate("", timeout=30)
    assert sealing.database_is_plain(paths) and not list(paths.memory.glob(".episodic.sqlite.tmp-*"))

    done = sealing.seal_memory(paths, keyring)
    assert done.database == "sealed now" and done.already > 0
    assert _unsealed(root) == []
    vault.forget_all()
    found = run_cli("query", "--clip", "1", "--json", *_options(root, sealed=True), env=env)
    assert found.returncode == 0, found.stderr


class _FailingExport:
    """A connection whose ``sqlcipher_export`` fails (the rest passes through)."""

    def __init__(self, connection, fail):
        self._connection, self._fail = connection, fail

    def execute(self, sql, *args):
        if "sqlcipher_export" in sql:
            self._fail()
        return self._connection.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._connection, name)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.4])
def test_key_seal_killed_midway_is_finished_by_a_rerun(plain_night, tmp_path, share):
    # kill -9 (the whole process group) during `key seal`, as the fault matrix kills nights:
    # whatever was done, the memory opens with the key or as it was, and a rerun finishes
    # with the same answers as before. The moments are shares of an uninterrupted sealing
    # (from its key's appearance to the process's end), which on this tiny memory is about
    # half the files, then the database export, then the process ending (measured on the
    # dev box: 19 files left plain at 0.1; the database still plain at 0.25 and 0.4).
    import signal
    import time

    _, _, secret = plain_night
    root = _copy(plain_night, tmp_path)
    plain_env = {"TQDM_DISABLE": "1"}
    before = run_cli("query", "--clip", "1", "--json", *_options(root, sealed=False), env=plain_env)
    assert before.returncode == 0, before.stderr
    env = {**os.environ, "TQDM_DISABLE": "1", "SLEEP_PASSPHRASE_FILE": str(secret)}
    command = [sys.executable, str(REPO / "sleep.py"), "key", "seal", "--new-passphrase-file", str(secret),
               *_options(root, sealed=False)]

    def start() -> tuple[subprocess.Popen, float]:
        """Start `key seal`; return it and the moment its key appeared (sealing starts next)."""
        run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        while not (root / "memory" / "key.json").exists() and run.poll() is None:
            time.sleep(0.005)
        return run, time.monotonic()

    first, keyed = start()
    assert first.wait(timeout=300) == 0
    sealing_seconds = time.monotonic() - keyed
    # Again from the plain memory, killed this time.
    shutil.rmtree(root)
    root = _copy(plain_night, tmp_path)
    killed, keyed = start()
    time.sleep(share * sealing_seconds)
    if killed.poll() is None:
        os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    print(f"killed after {time.monotonic() - keyed:.2f} of {sealing_seconds:.2f} s: database plain "
          f"{sealing.database_is_plain(Paths.at(root))}, {len(_unsealed(root))} files unsealed")
    assert (root / "memory" / "key.json").exists()

    # The same command again (with a key made, it asks for the current passphrase instead).
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _unsealed(root) == [] and not sealing.database_is_plain(Paths.at(root))
    assert not [p for p in root.rglob("*.tmp-*") if "/raw/" not in str(p)]  # the killed run's are swept
    after = run_cli("query", "--clip", "1", "--json", *_options(root, sealed=True), env=env)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    checked = run_cli("doctor", "--read-data", "--root", str(root), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
