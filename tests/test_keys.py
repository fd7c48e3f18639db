"""The master key (core/keys.py): init, unlock, change, export, the passphrase's sources,
and a `change` killed at each step leaving a passphrase that works."""
from __future__ import annotations

import json
import logging
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.errors import UsageError
from core.keys import (
    MasterKeyError,
    ScryptCost,
    change_passphrase,
    export_key,
    init_key,
    key_file,
    night_passphrase,
    read_export,
    unlock,
    write_export,
)

REPO = Path(__file__).resolve().parents[1]
FAST = ScryptCost(n=2**10)  # tests only; the default stays the production cost
OLD, NEW = "correct horse battery staple", "tr0ub4dor & 3"


@pytest.fixture
def key_path(tmp_path) -> Path:
    return key_file(tmp_path / "root" / "memory")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_default_cost_is_the_production_one():
    cost = ScryptCost()
    assert (cost.n, cost.r, cost.p) == (2**17, 8, 1)


def test_init_then_unlock_gives_the_same_key(key_path):
    master = init_key(key_path, OLD, cost=FAST)
    assert len(master) == 32
    assert unlock(key_path, OLD) == master
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    record = json.loads(key_path.read_text())
    assert record["kdf"]["name"] == "scrypt" and record["kdf"]["n"] == FAST.n
    assert len(bytes.fromhex(record["kdf"]["salt"])) == 16
    text = key_path.read_text()
    assert master.hex() not in text and OLD not in text
    assert _snapshot(key_path.parent).keys() == {"key.json"}  # no staging file left


def test_init_with_the_default_cost_records_it(key_path):
    master = init_key(key_path, OLD)
    assert json.loads(key_path.read_text())["kdf"] | {"salt": None} == {
        "name": "scrypt", "n": 2**17, "r": 8, "p": 1, "salt": None}
    assert unlock(key_path, OLD) == master


def test_init_refuses_when_a_key_exists(key_path):
    init_key(key_path, OLD, cost=FAST)
    before = key_path.read_bytes()
    with pytest.raises(MasterKeyError, match="a key exists already"):
        init_key(key_path, NEW, cost=FAST)
    assert key_path.read_bytes() == before
    assert isinstance(MasterKeyError(""), UsageError)


def test_wrong_passphrase_is_a_clear_error_and_writes_nothing(key_path):
    init_key(key_path, OLD, cost=FAST)
    before = _snapshot(key_path.parent)
    with pytest.raises(MasterKeyError, match="wrong passphrase") as caught:
        unlock(key_path, "not it")
    assert "not it" not in str(caught.value) and OLD not in str(caught.value)
    with pytest.raises(MasterKeyError, match="wrong passphrase"):
        change_passphrase(key_path, "not it", NEW, cost=FAST)
    assert _snapshot(key_path.parent) == before


def test_no_key_file_says_how_to_make_one(key_path):
    with pytest.raises(MasterKeyError, match="sleep.py key init"):
        unlock(key_path, OLD)


def test_empty_passphrase_is_refused(key_path):
    with pytest.raises(MasterKeyError, match="empty"):
        init_key(key_path, "", cost=FAST)
    assert not key_path.exists()


def test_the_same_characters_typed_two_ways_unlock(key_path):
    master = init_key(key_path, "caf\u00e9", cost=FAST)  # é as one code point
    assert unlock(key_path, "cafe\u0301") == master  # e + combining acute


def test_a_key_file_asking_for_a_huge_cost_is_refused(key_path):
    init_key(key_path, OLD, cost=FAST)
    record = json.loads(key_path.read_text())
    record["kdf"]["n"] = 2**30
    key_path.write_text(json.dumps(record))
    with pytest.raises(MasterKeyError, match="not a key file this version reads"):
        unlock(key_path, OLD)


def test_change_rewraps_the_same_key(key_path):
    master = init_key(key_path, OLD, cost=FAST)
    before = json.loads(key_path.read_text())
    change_passphrase(key_path, OLD, NEW, cost=FAST)
    after = json.loads(key_path.read_text())
    assert unlock(key_path, NEW) == master
    with pytest.raises(MasterKeyError, match="wrong passphrase"):
        unlock(key_path, OLD)
    assert after["kdf"]["salt"] != before["kdf"]["salt"] and after["nonce"] != before["nonce"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert _snapshot(key_path.parent).keys() == {"key.json"}


def test_export_and_restore(key_path, tmp_path):
    master = init_key(key_path, OLD, cost=FAST)
    exported = export_key(key_path, OLD)
    assert exported == master.hex() and len(exported) == 64
    backup = write_export(tmp_path / "backup.key", exported)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with pytest.raises(MasterKeyError, match="exists already"):
        write_export(backup, exported)
    # key.json lost: a new one wrapping the backed-up key opens what the old one did.
    key_path.unlink()
    assert init_key(key_path, NEW, cost=FAST, master_key=read_export(backup)) == master
    assert unlock(key_path, NEW) == master


def test_export_with_the_wrong_passphrase_gives_nothing(key_path):
    init_key(key_path, OLD, cost=FAST)
    with pytest.raises(MasterKeyError, match="wrong passphrase"):
        export_key(key_path, NEW)


# -- where the nightly job finds the passphrase -----------------------------------------

def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_systemd_credentials_come_first(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _secret_file(credentials / "sleep-passphrase", OLD + "\n", 0o400)
    other = _secret_file(tmp_path / "pass", NEW)
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "SLEEP_PASSPHRASE_FILE": str(other)}
    found = night_passphrase("false", environ)
    assert found.text == OLD and found.source.startswith("systemd credential")
    assert OLD not in repr(found)


def test_credentials_without_ours_fall_through(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    environ = {"CREDENTIALS_DIRECTORY": str(credentials),
               "SLEEP_PASSPHRASE_FILE": str(_secret_file(tmp_path / "pass", NEW))}
    assert night_passphrase(None, environ).text == NEW


def test_passphrase_file_keeps_spaces_and_drops_one_newline(tmp_path):
    path = _secret_file(tmp_path / "pass", "  two words  \n")
    assert night_passphrase(None, {"SLEEP_PASSPHRASE_FILE": str(path)}).text == "  two words  "


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_passphrase_file_others_can_read_is_refused(tmp_path, mode):
    path = _secret_file(tmp_path / "pass", OLD, mode)
    with pytest.raises(MasterKeyError, match="readable by others") as caught:
        night_passphrase(None, {"SLEEP_PASSPHRASE_FILE": str(path)})
    assert str(path) in str(caught.value) and OLD not in str(caught.value)


def test_a_missing_passphrase_file_is_named(tmp_path):
    with pytest.raises(MasterKeyError, match="no such file"):
        night_passphrase(None, {"SLEEP_PASSPHRASE_FILE": str(tmp_path / "gone")})


def test_a_symlinked_passphrase_file_is_refused(tmp_path):
    target = _secret_file(tmp_path / "pass", OLD)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(MasterKeyError):
        night_passphrase(None, {"SLEEP_PASSPHRASE_FILE": str(tmp_path / "link")})


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "key-helper"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o700)
    return path


def test_key_command_prints_the_passphrase(tmp_path):
    helper = _script(tmp_path, f"printf '%s\\n' '{OLD}'")
    assert night_passphrase(str(helper), {}).text == OLD


def test_key_command_runs_without_a_shell(tmp_path):
    marker = tmp_path / "ran"
    # With a shell, `;` would run touch; without one it is an argument printf prints.
    assert night_passphrase(f"printf %s 'a b;' touch {marker}", {}).text == f"a b;touch{marker}"
    assert not marker.exists()


def test_a_failing_key_command_names_its_status_not_its_output(tmp_path):
    helper = _script(tmp_path, f"echo '{OLD}'; exit 3")
    with pytest.raises(MasterKeyError, match="exited with status 3") as caught:
        night_passphrase(str(helper), {})
    assert OLD not in str(caught.value)
    with pytest.raises(MasterKeyError, match="command not found"):
        night_passphrase(str(tmp_path / "no-such-helper"), {})
    with pytest.raises(MasterKeyError, match="printed no passphrase"):
        night_passphrase(str(_script(tmp_path, "true")), {})


def test_no_source_gives_none():
    assert night_passphrase(None, {}) is None


# -- `key change` killed midway ----------------------------------------------------------

# A child that changes the passphrase and kills itself (SIGKILL: no cleanup runs) at one step.
_CHANGE_AND_DIE = textwrap.dedent("""
    import hashlib, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from core import keys

    point = sys.argv[2]
    real_scrypt, real_fsync, real_replace = hashlib.scrypt, os.fsync, os.replace
    derived = []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def scrypt(*args, **kwargs):
        out = real_scrypt(*args, **kwargs)
        derived.append(out)
        if point == "new wrapping key derived" and len(derived) == 2:
            die()
        return out

    def fsync(fd):
        if point == "new file written, not synced":
            die()
        real_fsync(fd)

    def replace(src, dst):
        if point == "before the rename":
            die()
        real_replace(src, dst)
        if point == "after the rename":
            die()

    hashlib.scrypt, os.fsync, os.replace = scrypt, fsync, replace
    keys.change_passphrase(Path(sys.argv[1]), {old!r}, {new!r}, cost=keys.ScryptCost(n=2**10))
""").format(repo=str(REPO), old=OLD, new=NEW)


@pytest.mark.parametrize(("point", "works"), [
    ("new wrapping key derived", OLD),
    ("new file written, not synced", OLD),
    ("before the rename", OLD),
    ("after the rename", NEW),
    ("never", NEW),
])
def test_a_change_killed_midway_leaves_one_passphrase_working(key_path, point, works):
    master = init_key(key_path, OLD, cost=FAST)
    before = key_path.read_bytes()
    child = subprocess.run([sys.executable, "-c", _CHANGE_AND_DIE, str(key_path), point],
                           check=False, capture_output=True, text=True, timeout=60)
    assert child.returncode == (0 if point == "never" else -signal.SIGKILL), child.stderr
    json.loads(key_path.read_text())  # whole, never torn
    assert (key_path.read_bytes() == before) == (works == OLD)
    staged = [p.name for p in key_path.parent.iterdir() if p.name != "key.json"]
    assert bool(staged) == (point in ("new file written, not synced", "before the rename")), staged
    fails = NEW if works == OLD else OLD
    assert unlock(key_path, works) == master
    with pytest.raises(MasterKeyError, match="wrong passphrase"):
        unlock(key_path, fails)
    # What the killed change left (a temporary file) is no obstacle to the next one.
    change_passphrase(key_path, works, "third", cost=FAST)
    assert unlock(key_path, "third") == master



def test_config_reads_encryption_on_and_a_key_command(tmp_path):
    from core.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("memory:\n  encryption: on\n  key_command: pass show sleep\n")
    memory = load_config(path).memory
    assert memory.encryption is True and memory.key_command == "pass show sleep"
    assert load_config(path, ["memory.encryption=off"]).memory.encryption is False
    assert load_config().memory.encryption is False  # off unless asked for


# -- sleep.py key init | change | export (the production scrypt cost: ~0.7 s a derivation) --

def _cli(*argv: str) -> int:
    """``sleep.py ARGV`` in this process, the logging set-up it makes undone after: its console
    handler writes to this test's captured stderr (closed after it), and its DEBUG root level
    would let later tests' ``caplog`` see records they do not expect."""
    from cli.main import main

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return main(list(argv))
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def cli_root(tmp_path, monkeypatch) -> Path:
    """A root, the environment without passphrase sources, stdin no terminal."""
    for name in ("CREDENTIALS_DIRECTORY", "SLEEP_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("cli.key._on_a_terminal", lambda: False)
    return tmp_path / "root"


def test_cli_init_export_and_change(cli_root, tmp_path, monkeypatch, capsys):
    first = _secret_file(tmp_path / "first", OLD + "\n")
    second = _secret_file(tmp_path / "second", NEW + "\n")
    assert _cli("key", "init", "--root", str(cli_root), "--new-passphrase-file", str(first)) == 0
    path = key_file(cli_root / "memory")
    master = unlock(path, OLD)

    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(first))  # as the night reads it
    capsys.readouterr()
    assert _cli("key", "export", "--root", str(cli_root)) == 0
    out = capsys.readouterr()
    assert out.out.strip() == master.hex() and OLD not in out.out + out.err

    assert _cli("key", "change", "--root", str(cli_root), "--new-passphrase-file", str(second)) == 0
    assert unlock(path, NEW) == master
    out = capsys.readouterr()
    assert OLD not in out.out + out.err and NEW not in out.out + out.err


def test_cli_export_to_a_private_file(cli_root, tmp_path, monkeypatch):
    master = init_key(key_file(cli_root / "memory"), OLD, cost=FAST)
    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(_secret_file(tmp_path / "pass", OLD)))
    backup = tmp_path / "backup.key"
    assert _cli("key", "export", "--root", str(cli_root), "--output", str(backup)) == 0
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert read_export(backup) == master


def test_cli_refuses_init_over_a_key_before_asking(cli_root, capsys):
    init_key(key_file(cli_root / "memory"), OLD, cost=FAST)
    assert _cli("key", "init", "--root", str(cli_root)) == 2
    assert "a key exists already" in capsys.readouterr().err


def test_cli_without_a_passphrase_source_or_terminal_says_where_to_put_one(cli_root, capsys):
    init_key(key_file(cli_root / "memory"), OLD, cost=FAST)
    assert _cli("key", "export", "--root", str(cli_root)) == 2
    err = capsys.readouterr().err
    assert "SLEEP_PASSPHRASE_FILE" in err and "memory.key_command" in err and "terminal" in err
    assert _cli("key", "init", "--root", str(cli_root / "other")) == 2
    assert "--new-passphrase-file" in capsys.readouterr().err


def test_cli_wrong_passphrase_exits_2_without_showing_it(cli_root, tmp_path, monkeypatch, capsys):
    path = key_file(cli_root / "memory")
    init_key(path, OLD, cost=FAST)
    before = path.read_bytes()
    monkeypatch.setenv("SLEEP_PASSPHRASE_FILE", str(_secret_file(tmp_path / "pass", "guess")))
    assert _cli("key", "change", "--root", str(cli_root), "--new-passphrase-file",
                str(_secret_file(tmp_path / "new", NEW))) == 2
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and "guess" not in err and NEW not in err
    assert path.read_bytes() == before


def test_cli_uses_the_key_command_from_the_config(cli_root, tmp_path, capsys):
    master = init_key(key_file(cli_root / "memory"), OLD, cost=FAST)
    helper = _script(tmp_path, f"printf '%s' '{OLD}'")
    assert _cli("key", "export", "--root", str(cli_root), "--set", f"memory.key_command={helper}") == 0
    assert capsys.readouterr().out.strip() == master.hex()


def test_cli_asks_on_a_terminal_twice_for_a_new_passphrase(cli_root, monkeypatch, capsys):
    monkeypatch.setattr("cli.key._on_a_terminal", lambda: True)
    typed = iter([OLD, OLD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(typed))
    assert _cli("key", "init", "--root", str(cli_root)) == 2
    assert "differ" in capsys.readouterr().err
    assert not key_file(cli_root / "memory").exists()


def test_no_key_command_takes_a_passphrase_on_the_command_line():
    from cli.main import build_parser

    key = build_parser()._subparsers._group_actions[0].choices["key"]
    for name, command in key._subparsers._group_actions[0].choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"key {name} {action.option_strings}"
            assert not any(o.startswith("--passphrase") for o in action.option_strings)
            if "passphrase" in action.dest:
                assert action.dest.endswith("_file"), action.dest
