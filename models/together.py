"""One night on several processes under ``torchrun``: rank 0 runs the night, the others train
with it.

``sleep.py --date D --gpus N`` starts itself again under ``torchrun --nproc-per-node N``
(:func:`torchrun_command`). Every process joins the process group (:func:`join`: NCCL on
CUDA, one GPU per process; gloo on the CPU, which is how the tests run it). Rank 0 runs
the night exactly as a single process would: ingest, the memory, checkpoints, the report.
The other ranks wait in :func:`follow`. When rank 0 reaches a trainer, the stage calls it
through :func:`together`, which hands every rank the trainer's name and its inputs
(written once to a file under the memory's root and memory-mapped by the others, so a
day of frames is not pickled through the process group; sealed when the memory is, and then
read through the vault instead of mapped), and every rank calls it. Inside,
the trainer splits each batch over the ranks (:mod:`models.distributed`). When the night
ends, rank 0 tells the others (:func:`release`) and every process exits.

A trainer that fails on its inputs fails the same way on every rank (same inputs, same
code), so rank 0 records the stage as failed and the followers wait for the next call.
"""
from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from core.lock import pid_alive
from core.sealed import is_sealed
from core.vault import vault_of
from models.distributed import group_ranks, training_together

log = logging.getLogger(__name__)

# Set in the environment of the processes torchrun starts for a night (and only there).
LAUNCHED = "SLEEP_RANKS_NIGHT"
# A follower waits this long for rank 0's next call: a long training stage on rank 0 alone
# (ingest, embedding a day) must not time the group out.
WAIT = dt.timedelta(hours=12)


@dataclass
class _Spill:
    folder: Path | None = None


_spill = _Spill()  # where rank 0 writes the inputs of the next call (one night per process)


def launched() -> bool:
    """Is this process one of a night's torchrun ranks?"""
    return os.environ.get(LAUNCHED) == "1" and "WORLD_SIZE" in os.environ


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """The command that runs ``sleep.py argv`` on ``processes`` ranks (one machine)."""
    script = str(Path(__file__).resolve().parent.parent / "sleep.py")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            script, *argv]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, LAUNCHED: "1"}


def join(device: str, root: Path) -> None:
    """Join the night's process group (from torchrun's environment).

    Args:
        device: ``cuda`` (NCCL, this rank's GPU by ``LOCAL_RANK``) or ``cpu`` (gloo).
        root: the memory's root; rank 0's spill folder goes under it.
    """
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=WAIT)
    if group_ranks().main:
        # Resolved as the CLI's Paths are: the spill's sealed name is relative to the root the
        # vault was unlocked for, and a root reached through a link must not name it twice.
        root = Path(root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        _sweep_spills(root)
        _spill.folder = Path(tempfile.mkdtemp(prefix=f".ranks-{os.getpid()}-", dir=root))
    log.info("rank %d of %d joined (%s)", group_ranks().rank, group_ranks().world, device)


def _sweep_spills(root: Path) -> None:
    """Remove the spill folders of killed nights (their rank 0 no longer runs): they hold a
    copy of a day's frames."""
    for folder in root.glob(".ranks-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s left by a killed night", folder)


def together(function: Callable, *args, **kwargs) -> Any:
    """Call ``function(*args, **kwargs)`` on every rank at once; rank 0's result.

    In a single process it is just the call. ``function`` must be importable by name (a
    module-level function) and its arguments picklable by ``torch.save``.
    """
    ranks = group_ranks()
    if not ranks.distributed:
        return function(*args, **kwargs)
    if not ranks.main:
        raise RuntimeError("together() is called by rank 0; the other ranks follow()")
    name = f"{function.__module__}:{function.__qualname__}"
    fd, spilled = tempfile.mkstemp(suffix=".pt", dir=_spill.folder)
    os.close(fd)
    try:
        _write_spill(Path(spilled), (args, kwargs))
        tdist.broadcast_object_list([(name, spilled)], src=0)
        with training_together(ranks):
            return function(*args, **kwargs)
    finally:
        tdist.barrier()  # every follower has finished reading it
        Path(spilled).unlink(missing_ok=True)


def _write_spill(path: Path, inputs: tuple) -> None:
    """Write a call's inputs for the other ranks; sealed when the memory is (they are a day's
    frames), so nothing of a sealed memory lies in plain under its root, even for a moment."""
    vault = vault_of(path)
    if not vault.sealing:
        torch.save(inputs, path)
        return
    with vault.writer(path) as fh:
        torch.save(inputs, fh)


def _read_spill(path: Path) -> tuple:
    """A call's inputs as rank 0 wrote them, on the CPU (a tensor rank 0 held on its GPU must
    not land on GPU 0 here). A plain spill is memory-mapped; a sealed one cannot be, and is
    read through the vault: this rank unlocks the memory from the passphrase sources of its
    own environment (``sleep.py`` unlocks it on every rank before the night starts)."""
    if not is_sealed(path):
        return torch.load(path, weights_only=False, mmap=True, map_location="cpu")
    with vault_of(path).open(path) as fh:
        return torch.load(fh, weights_only=False, map_location="cpu")


def follow() -> None:
    """Rank > 0: run every call rank 0 hands out, until it says the night is over.

    SIGTERM (``systemctl stop``, the daemon's stop) reaches every rank; rank 0 ends the
    night after the stage in progress and then releases the others, so a follower waits
    for that rather than leave rank 0 in a collective with a dead peer. If rank 0 dies,
    torchrun kills the followers.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        message: list = [None]
        tdist.broadcast_object_list(message, src=0)
        if message[0] is None:
            return
        name, spilled = message[0]
        module, _, qualname = name.partition(":")
        function = importlib.import_module(module)
        for part in qualname.split("."):
            function = getattr(function, part)
        try:
            args, kwargs = _read_spill(Path(spilled))
            with training_together(group_ranks()):
                function(*args, **kwargs)
        except Exception:  # rank 0 met the same failure and records it; wait for the next call
            log.exception("rank %d: %s failed", group_ranks().rank, name)
        finally:
            tdist.barrier()


def release() -> None:
    """Rank 0: the night is over; let the followers return and leave the group."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return
    if group_ranks().main:
        tdist.broadcast_object_list([None], src=0)
        if _spill.folder is not None:
            shutil.rmtree(_spill.folder, ignore_errors=True)
            _spill.folder = None
    tdist.destroy_process_group()
