"""A root's files at rest: the one place that opens and writes them, sealed or not.

With ``memory.encryption: on`` every file ``sleep`` writes under the root is sealed
(:mod:`core.sealed`) with the memory's master key; without it files are written as they
are. Code that stores or reads a file asks the root's :class:`Vault` for it
(``paths.vault.write_bytes(path, data)``, ``with paths.vault.open(path) as fh: ...``) and
never needs to know which: a reader tells a sealed file by its magic, so a memory written
before encryption was turned on still reads.

Why a per-process registry rather than a key passed down: the key is unlocked once per
process (scrypt takes half a second and may run a ``key_command``), and every reader at any
depth (a frame in a data loader, a shard under a search, a checkpoint) needs it. Threading a
secret through every signature would put it in every frame of every traceback. The
registry holds a root's key from the first :func:`unlock` until the process ends; worker
processes are handed it by :func:`register` (never on a command line or in a file).

Where the memory is sealed but no key can be had, :class:`core.keys.MasterKeyError` is
raised before anything is written.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core.atomic import atomic_file
from core.keys import (
    NO_PASSPHRASE_SOURCE,
    MasterKeyError,
    key_file,
    night_passphrase,
    unlock as unwrap_master_key,
)
from core.sealed import MAGIC, SealedReader, SealedWriter, relative_name

log = logging.getLogger(__name__)

# What a RAM-backed scratch folder is looked for in, first found first: FFmpeg's outputs
# are sealed from there, so plaintext of a sealed memory never reaches the root's disk.
SCRATCH_CANDIDATES = ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR") or "")
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Vault:
    """How files under ``root`` are stored: sealed with ``master_key``, or as they are."""

    root: Path
    master_key: bytes | None = field(default=None, repr=False)

    @property
    def sealing(self) -> bool:
        """Whether files written under the root are sealed."""
        return self.master_key is not None

    def name_of(self, path: Path) -> str:
        """``path`` relative to the root: a sealed file's associated data."""
        return relative_name(path, self.root)

    # -- reading ---------------------------------------------------------------------------
    def open(self, path: Path, *, name_as: Path | None = None) -> BinaryIO:
        """Open the file at ``path`` for reading (binary, seekable); close it when done.

        A sealed file is decrypted as it is read; any other is opened as it is.

        Args:
            path: a file under the root.
            name_as: where the file was sealed, when it has been moved since (a shard in
                the quarantine, a folder renamed into place).
        Raises:
            FileNotFoundError: no file at ``path``.
            SealedFileError: sealed, but damaged, moved, or sealed with another key.
            MasterKeyError: sealed, and this process has no key for the root.
        """
        fh = open(path, "rb")  # noqa: SIM115 (returned, or closed below)
        try:
            if fh.read(len(MAGIC)) != MAGIC:
                fh.seek(0)
                return fh
            fh.seek(0)
            if self.master_key is None:
                raise MasterKeyError(f"{path} is sealed and the memory's key is not unlocked: "
                                     "set memory.encryption: on and give the night its passphrase")
            reader = SealedReader(fh, self.master_key, self.name_of(name_as or path),
                                  shown=str(path), owns=True)
            return io.BufferedReader(reader, buffer_size=64 << 10)
        except BaseException:
            fh.close()
            raise

    def read_bytes(self, path: Path) -> bytes:
        with self.open(path) as fh:
            return fh.read()

    def read_text(self, path: Path) -> str:
        return self.read_bytes(path).decode("utf-8")

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, final: Path, mode: int = 0o600, *, name_as: Path | None = None) -> Iterator[BinaryIO]:
        """Yield a binary file to write; on success it becomes ``final`` atomically.

        Sealed when the root is: the associated data names ``name_as`` (default ``final``),
        the place the file will be read from. On an exception nothing is left behind.
        """
        with atomic_file(final, mode) as fh:
            if self.master_key is None:
                yield fh
                return
            sealed = SealedWriter(fh, self.master_key, self.name_of(name_as or final))
            yield sealed  # type: ignore[misc]
            sealed.finish()

    def write_bytes(self, final: Path, data, mode: int = 0o600, *, name_as: Path | None = None) -> Path:
        """Write ``data`` to ``final`` atomically (sealed when the root is); returns ``final``."""
        with self.writer(final, mode, name_as=name_as) as fh:
            fh.write(data)
        return final

    def write_text(self, final: Path, text: str, mode: int = 0o600) -> Path:
        return self.write_bytes(final, text.encode("utf-8"), mode)

    def store_file(self, source: Path, final: Path, *, name_as: Path | None = None) -> Path:
        """Copy the file at ``source`` (outside the root: a scratch folder) to ``final``.

        Sealed when the root is, with ``name_as`` (default ``final``) as its name; the
        source is left for the caller to remove.
        """
        with open(source, "rb") as src, self.writer(final, name_as=name_as) as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
        return final


# -- the registry of unlocked roots -------------------------------------------------------
_vaults: dict[Path, Vault] = {}
_key_commands: dict[Path, str | None] = {}
_lock = threading.Lock()


def _root(root) -> Path:
    return Path(os.path.abspath(Path(root).expanduser()))


def is_encrypted(root) -> bool:
    """Whether the memory at ``root`` has a master key (``memory/key.json``)."""
    return key_file(_root(root) / "memory").exists()


def vault(root) -> Vault:
    """The vault of ``root``: unlocked on first use when its memory has a key.

    The passphrase comes from where the night finds it (systemd credentials,
    ``SLEEP_PASSPHRASE_FILE``, the ``memory.key_command`` given to :func:`unlock`).

    Raises:
        MasterKeyError: the memory has a key and no passphrase opens it.
    """
    root = _root(root)
    found = _vaults.get(root)
    if found is not None:
        return found
    with _lock:
        found = _vaults.get(root)
        if found is not None:
            return found
        path = key_file(root / "memory")
        if not path.exists():
            return Vault(root)  # not registered: a key made later is found by the next call
        passphrase = night_passphrase(_key_commands.get(root), os.environ)
        if passphrase is None:
            raise MasterKeyError(f"{root}: the memory is encrypted and there is no passphrase to "
                                 f"open it: {NO_PASSPHRASE_SOURCE}")
        found = Vault(root, unwrap_master_key(path, passphrase.text))
        log.debug("unlocked the memory at %s (passphrase from %s)", root, passphrase.source)
        _vaults[root] = found
        return found


def unlock(root, memory_cfg) -> Vault:
    """Check the config against the memory at ``root`` and unlock it when it is encrypted.

    Called once by each entry point (a night, the daemon, the CLI, the web server) before
    anything is read or written: a missing or wrong key stops there, with nothing written.

    Args:
        root: the root folder.
        memory_cfg: ``cfg.memory`` (``encryption``, ``key_command``).
    Raises:
        MasterKeyError: encryption is on without a key (``sleep.py key init``), a key exists
            with encryption off, or the passphrase is missing or wrong.
    """
    root = _root(root)
    has_key = is_encrypted(root)
    if memory_cfg.encryption and not has_key:
        raise MasterKeyError(f"memory.encryption is on but {key_file(root / 'memory')} does not exist: "
                             "make the key first with `sleep.py key init`")
    if has_key and not memory_cfg.encryption:
        raise MasterKeyError(f"the memory at {root} is encrypted ({key_file(root / 'memory')}): "
                             "set memory.encryption: on")
    _key_commands[root] = memory_cfg.key_command
    return vault(root)


def register(root, master_key: bytes | None) -> Vault:
    """Make ``master_key`` the key of ``root`` in this process (a worker handed it by its
    parent, a test); ``None`` forgets it. Returns the vault."""
    root = _root(root)
    with _lock:
        if master_key is None:
            _vaults.pop(root, None)
            return Vault(root)
        _vaults[root] = Vault(root, master_key)
        return _vaults[root]


def forget_all() -> None:
    """Drop every unlocked key of this process (tests; a long-lived process going idle)."""
    with _lock:
        _vaults.clear()
        _key_commands.clear()


def root_of(path) -> Path | None:
    """The root that holds ``path``: an unlocked one, else the nearest folder above ``path``
    with a ``memory/key.json``; ``None`` when no folder above has one (a plain memory)."""
    path = _root(path)
    for root in _vaults:
        if path.is_relative_to(root):
            return root
    for folder in path.parents:
        if key_file(folder / "memory").exists():
            return folder
    return None


def vault_of(path) -> Vault:
    """The vault of the root that holds ``path`` (:func:`root_of`); for code that has a file
    and not the root (a checkpoint, a frame handed to a data loader). A path in a plain
    memory gets a vault that writes as it is (rooted at the file's folder: it never seals)."""
    root = root_of(path)
    return vault(root) if root is not None else Vault(_root(path).parent)


def open_file(path, *, name_as=None) -> BinaryIO:
    """:meth:`Vault.open` on the vault of the root that holds ``path``."""
    return vault_of(path).open(Path(path), name_as=name_as)


def read_file(path) -> bytes:
    """The whole plaintext of the file at ``path`` (sealed or not)."""
    return vault_of(path).read_bytes(Path(path))


def write_file(final, data, mode: int = 0o600) -> Path:
    """Write ``data`` to ``final`` atomically, sealed when its root is sealed."""
    return vault_of(final).write_bytes(Path(final), data, mode)


def scratch_dir() -> Path:
    """A folder for plaintext that is about to be sealed: RAM-backed where the machine has
    one (``/dev/shm``, ``$XDG_RUNTIME_DIR``), else the system's temporary folder."""
    for candidate in SCRATCH_CANDIDATES:
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def scratch_folder(prefix: str = "sleep-") -> Iterator[Path]:
    """A private (0700) temporary folder in :func:`scratch_dir`, removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_dir()))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
