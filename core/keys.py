"""The memory's master key: made once, kept in ``memory/key.json`` wrapped by a passphrase.

A random 256-bit master key seals every file and opens the database (through keys derived
from it, :func:`derive_key`). It never changes: a new passphrase re-wraps it
(:func:`change_passphrase`), so nothing sealed has to be rewritten. ``key.json`` holds it
encrypted with AES-256-GCM under a key-encryption key that scrypt derives from the
passphrase and a random salt; the file names the KDF and its parameters, so a later release
may raise the cost without losing older keys.

The nightly job has no terminal: :func:`night_passphrase` takes the passphrase from systemd
credentials, a 0600 file named by ``SLEEP_PASSPHRASE_FILE``, or ``memory.key_command``, in
that order. A passphrase is never taken from argv, written to a log or put in an error.

Why scrypt rather than argon2id: ``hashlib.scrypt`` is in every Python this project runs
on, while ``cryptography``'s Argon2id needs a recent OpenSSL; a ``key.json`` restored from
a backup onto another machine must unlock there.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import stat
import subprocess
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.atomic import atomic_write_bytes, tmp_name
from core.errors import UsageError
from core.paths import make_private_dir

KEY_FILE_NAME = "key.json"  # in the root's memory/ folder
KEY_FORMAT = "sleep master key"
KEY_FORMAT_VERSION = 1
MASTER_KEY_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 12
# Binds a wrapped key to its purpose and this file format: a blob lifted from elsewhere
# (another program's AES-GCM output under the same passphrase) does not unwrap as ours.
WRAP_CONTEXT = f"{KEY_FORMAT}, key.json format {KEY_FORMAT_VERSION}".encode()

CREDENTIAL_NAME = "sleep-passphrase"  # systemd: LoadCredential=sleep-passphrase:/path
PASSPHRASE_FILE_VARIABLE = "SLEEP_PASSPHRASE_FILE"
KEY_COMMAND_TIMEOUT_S = 120  # a command may ask a keyring, or a person, for the passphrase
NO_PASSPHRASE_SOURCE = (f"no passphrase: set systemd's LoadCredential={CREDENTIAL_NAME}:FILE, "
                        f"{PASSPHRASE_FILE_VARIABLE}=FILE (mode 0600) or memory.key_command")

# Largest cost a key.json may ask for: a damaged or hostile file must not make unlocking
# take all the machine's memory (128 * r * n bytes) or hours.
_MAX_LOG2_N, _MAX_R, _MAX_P = 22, 32, 16


class MasterKeyError(UsageError):
    """The master key is not to be had: no key yet, one already, a wrong passphrase, no
    passphrase source, an unsafe passphrase file. Exit 2; never holds the passphrase."""


@dataclass(frozen=True)
class ScryptCost:
    """scrypt's parameters: ``n`` CPU/memory cost (a power of two), ``r`` block size,
    ``p`` parallelism. The default takes 128 MiB and about half a second, as a key that
    guards years of footage should; tests pass a small ``n``."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def check(self) -> None:
        """Raise ``ValueError`` naming the parameter out of range."""
        if self.n < 2 or self.n & (self.n - 1) or self.n > 2**_MAX_LOG2_N:
            raise ValueError(f"scrypt n={self.n}: a power of two from 2 to 2**{_MAX_LOG2_N}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise ValueError(f"scrypt r={self.r}, p={self.p}: r 1..{_MAX_R}, p 1..{_MAX_P}")


@dataclass(frozen=True)
class Passphrase:
    """A passphrase and where it came from; its repr shows the source alone (a log line
    or a traceback that prints one gives nothing away)."""

    text: str = field(repr=False)
    source: str


def key_file(memory_dir: Path) -> Path:
    """``memory/key.json`` of a root whose memory folder is ``memory_dir``."""
    return memory_dir / KEY_FILE_NAME


def derive_key(master_key: bytes, purpose: str, salt: bytes = b"") -> bytes:
    """A 256-bit key for one purpose, derived from the master key with HKDF-SHA256.

    Why: the database and the sealed files use different ciphers; giving each its own key
    keeps one from ever being used under two algorithms.

    Args:
        master_key: the 32 bytes :func:`unlock` returns.
        purpose: names the use, e.g. ``"memory database v1"``; a different purpose gives
            an unrelated key.
        salt: makes one key per object (a sealed file's random id); empty for one key.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None,
                info=b"sleep " + purpose.encode()).derive(master_key)


def _passphrase_bytes(passphrase: str) -> bytes:
    if not passphrase:
        raise MasterKeyError("the passphrase is empty")
    # NFC: the same characters typed on two keyboards (e + combining accent, or é) unlock alike.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _wrapping_key(passphrase: str, salt: bytes, cost: ScryptCost) -> bytes:
    maxmem = 128 * cost.r * (cost.n + cost.p + 2) + (1 << 20)
    return hashlib.scrypt(_passphrase_bytes(passphrase), salt=salt, n=cost.n, r=cost.r, p=cost.p,
                          maxmem=maxmem, dklen=32)


def _wrapped_record(master_key: bytes, passphrase: str, cost: ScryptCost) -> bytes:
    """key.json's text for ``master_key`` under ``passphrase``: fresh salt, fresh nonce."""
    cost.check()
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_wrapping_key(passphrase, salt, cost)).encrypt(nonce, master_key, WRAP_CONTEXT)
    record = {"format": KEY_FORMAT, "version": KEY_FORMAT_VERSION,
              "kdf": {"name": "scrypt", "n": cost.n, "r": cost.r, "p": cost.p, "salt": salt.hex()},
              "cipher": "AES-256-GCM", "nonce": nonce.hex(), "wrapped_key": wrapped.hex()}
    return (json.dumps(record, indent=2) + "\n").encode()


def _read_record(path: Path) -> tuple[ScryptCost, bytes, bytes, bytes]:
    """``(cost, salt, nonce, wrapped key)`` from key.json, checked for shape."""
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise MasterKeyError(f"{path}: no key; make one with `sleep.py key init`") from None
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None
    except ValueError:
        raise MasterKeyError(f"{path}: not a key file (not JSON)") from None
    try:
        if record["format"] != KEY_FORMAT or record["version"] != KEY_FORMAT_VERSION:
            raise ValueError(f"format {record['format']!r} version {record['version']!r}")
        kdf = record["kdf"]
        if kdf["name"] != "scrypt" or record["cipher"] != "AES-256-GCM":
            raise ValueError(f"KDF {kdf['name']!r} with {record['cipher']!r}")
        cost = ScryptCost(n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]))
        cost.check()
        return cost, bytes.fromhex(kdf["salt"]), bytes.fromhex(record["nonce"]), \
            bytes.fromhex(record["wrapped_key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MasterKeyError(f"{path}: not a key file this version reads ({exc})") from None


def init_key(path: Path, passphrase: str, *, cost: ScryptCost = ScryptCost(),
             master_key: bytes | None = None) -> bytes:
    """Make the memory's master key and store it wrapped by ``passphrase`` at ``path``.

    Args:
        path: ``memory/key.json`` (:func:`key_file`); written 0600, its folder 0700.
        passphrase: the new passphrase.
        cost: scrypt's cost; the default is the production one.
        master_key: 32 bytes to wrap instead of a new random key (a key restored from
            :func:`export_key`'s backup).
    Returns:
        the master key.
    Raises:
        MasterKeyError: a key file exists already (it is never replaced: every sealed
            file depends on the key in it), or the passphrase is empty.
    """
    if master_key is None:
        master_key = os.urandom(MASTER_KEY_BYTES)
    if len(master_key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"a master key is {MASTER_KEY_BYTES} bytes, not {len(master_key)}")
    if path.exists():
        raise MasterKeyError(f"{path}: a key exists already; `sleep.py key change` gives it a new passphrase")
    record = _wrapped_record(master_key, passphrase, cost)
    make_private_dir(path.parent)
    staged = tmp_name(path)
    atomic_write_bytes(staged, record)
    try:
        # A link, not a rename: it fails if another `key init` got there first, where a
        # rename would silently replace that key (and lose what was sealed with it).
        os.link(staged, path)
    except FileExistsError:
        raise MasterKeyError(f"{path}: a key exists already; `sleep.py key change` gives it a new "
                             "passphrase") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    _fsync_folder(path.parent)
    return master_key


def _fsync_folder(folder: Path) -> None:
    # The link is a change to the folder: without this a power cut may forget the key file.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlock(path: Path, passphrase: str) -> bytes:
    """The master key in ``path``, unwrapped with ``passphrase``; writes nothing.

    Raises:
        MasterKeyError: no key file, not a key file, or the wrong passphrase.
    """
    cost, salt, nonce, wrapped = _read_record(path)
    try:
        master_key = AESGCM(_wrapping_key(passphrase, salt, cost)).decrypt(nonce, wrapped, WRAP_CONTEXT)
    except InvalidTag:
        raise MasterKeyError(f"{path}: wrong passphrase (or a damaged key file)") from None
    if len(master_key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"{path}: the key in it is {len(master_key)} bytes, not {MASTER_KEY_BYTES}")
    return master_key


def change_passphrase(path: Path, old: str, new: str, *, cost: ScryptCost = ScryptCost()) -> None:
    """Re-wrap the master key in ``path`` under ``new``; the key itself stays.

    One atomic replace of the file: a change killed at any point leaves either the old or
    the new passphrase working, never neither. Anyone holding an old copy of key.json and
    its old passphrase can still unwrap the same master key.

    Raises:
        MasterKeyError: ``old`` does not unlock it (nothing is written), or ``new`` is empty.
    """
    master_key = unlock(path, old)
    atomic_write_bytes(path, _wrapped_record(master_key, new, cost))


def export_key(path: Path, passphrase: str) -> str:
    """The master key as 64 hex digits, for a backup kept apart from the memory.

    With it (and ``key init --restore``) a memory whose key.json or passphrase is lost
    opens again; anyone holding it reads the memory, so keep it as one keeps the passphrase.
    """
    return unlock(path, passphrase).hex()


def write_export(path: Path, master_key_hex: str) -> Path:
    """Write an exported key to a new 0600 file; an existing file is never replaced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MasterKeyError(f"{path}: exists already; give a new file for the exported key") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(master_key_hex + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_export(path: Path) -> bytes:
    """The master key from a file :func:`write_export` wrote (64 hex digits)."""
    text = read_secret_file(path).strip()
    try:
        master_key = bytes.fromhex(text)
    except ValueError:
        master_key = b""
    if len(master_key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"{path}: not an exported key ({2 * MASTER_KEY_BYTES} hex digits)")
    return master_key


def _without_newline(text: str) -> str:
    """Drop the one line end an editor or ``echo`` adds; other whitespace is the passphrase's."""
    return text.removesuffix("\n").removesuffix("\r")


def read_secret_file(path: Path) -> str:
    """A passphrase file's (or an exported key's) text, refusing one that others may read.

    Raises:
        MasterKeyError: missing, not a regular file, or readable by group or others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise MasterKeyError(f"{path}: no such file") from None
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot open ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())  # of the file opened, not of a name swapped meanwhile
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"{path}: not a regular file")
        if info.st_mode & 0o077:
            raise MasterKeyError(f"{path}: readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                                 f"chmod 600 {path}")
        data = fh.read()
    try:
        return _without_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MasterKeyError(f"{path}: not UTF-8 text") from None


def run_key_command(command: str) -> str:
    """The passphrase a command prints on stdout (``pass show sleep``, ``secret-tool lookup ...``).

    Run without a shell, stdin closed, stderr passed through to ours; what it prints on
    stdout is never logged or put in an error.

    Raises:
        MasterKeyError: the command is not found, fails, times out or prints nothing.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise MasterKeyError(f"memory.key_command: cannot split into words ({exc})") from None
    if not argv:
        raise MasterKeyError("memory.key_command is empty")
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              timeout=KEY_COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise MasterKeyError(f"memory.key_command: {argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise MasterKeyError(f"memory.key_command: {argv[0]} gave no passphrase within "
                             f"{KEY_COMMAND_TIMEOUT_S} s") from None
    except OSError as exc:
        raise MasterKeyError(f"memory.key_command: {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise MasterKeyError(f"memory.key_command: {argv[0]} exited with status {done.returncode}")
    try:
        passphrase = _without_newline(done.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise MasterKeyError(f"memory.key_command: {argv[0]} printed no UTF-8 text") from None
    if not passphrase:
        raise MasterKeyError(f"memory.key_command: {argv[0]} printed no passphrase")
    return passphrase


def night_passphrase(key_command: str | None, environ: Mapping[str, str]) -> Passphrase | None:
    """The passphrase from the first source a job without a terminal has, or ``None``.

    In order: systemd credentials (``$CREDENTIALS_DIRECTORY/sleep-passphrase``), the file
    ``$SLEEP_PASSPHRASE_FILE`` names (0600), the command ``key_command``. A source that is
    set up but fails raises; it never falls through to the next, so a broken credential is
    not hidden by a stale file.

    Args:
        key_command: ``memory.key_command`` from the config.
        environ: the process environment (read once, by the caller).
    Raises:
        MasterKeyError: a source is set but unreadable or unsafe.
    """
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).exists():
        # systemd makes the folder and file readable by the service alone; no mode check.
        path = Path(credentials) / CREDENTIAL_NAME
        try:
            text = _without_newline(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise MasterKeyError(f"{path}: cannot read the credential ({exc})") from None
        return Passphrase(text, f"systemd credential {path}")
    named = environ.get(PASSPHRASE_FILE_VARIABLE)
    if named:
        return Passphrase(read_secret_file(Path(named)), f"{PASSPHRASE_FILE_VARIABLE} file {named}")
    if key_command:
        return Passphrase(run_key_command(key_command), "memory.key_command")
    return None
