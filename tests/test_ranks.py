"""Every trainer under torchrun: two gloo processes on the CPU take the steps one process takes.

Each process keeps its slice of every batch (crops, masks, negatives and noise are drawn for
the whole batch) and DDP averages the gradients, so the two runs differ only in the order
of floating-point sums. The tolerance stated here, 1e-4 on every logged loss, is about 400
times the largest difference measured (2.4e-7, CPC and the alignment).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_media, run_cli

from core.keys import ScryptCost, init_key, unlock
from memory.cipher_db import cipher_connect
from models.checkpoint import load_checkpoint
from models.distributed import Ranks
from models.together import LAUNCHED, torchrun_command

TRAINERS = "jepa,cpc,align,sae,reconstruct,dream"
TOLERANCE = 1e-4
DATE = "2026-01-15"
PASSPHRASE = "two ranks passphrase"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def _trained(folder: Path, processes: int) -> dict:
    folder.mkdir(parents=True)
    out = folder / "out.json"
    worker = [str(REPO / "tests" / "rank_workers.py"), TRAINERS, str(out)]
    if processes == 1:
        command, env = [sys.executable, *worker], _env()
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", *worker]
        env = {**_env(), LAUNCHED: "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    return root, _trained(root / "one", 1), _trained(root / "two", 2)


@pytest.mark.parametrize("trainer", TRAINERS.split(","))
def test_two_processes_follow_one_process_loss_curve(runs, trainer):
    _, one, two = runs
    assert (one["world"], two["world"]) == (1, 2)
    a, b = one["losses"][trainer], two["losses"][trainer]
    assert len(a) == len(b) >= 3
    assert max(abs(x - y) for x, y in zip(a, b)) <= TOLERANCE, (a, b)
    assert a[0] != a[-1]  # it trained: the curve moved


def test_two_processes_write_one_checkpoint_with_one_process_weights(runs):
    root, _, _ = runs
    one = load_checkpoint(root / "one" / "jepa" / f"{DATE}.pt", ("model", "ema"))
    two_files = sorted(p.name for p in (root / "two" / "jepa").glob("*.pt"))
    assert two_files == [f"{DATE}.pt"]  # rank 0 alone wrote it, once
    two = load_checkpoint(root / "two" / "jepa" / f"{DATE}.pt", ("model", "ema"))
    for name, weight in one["model"]["encoder"].items():
        assert torch.allclose(weight, two["model"]["encoder"][name], atol=1e-5), name
    assert not list((root / "two").glob(".ranks-*"))  # the spilled inputs are gone


def test_a_batch_splits_into_slices_whose_weights_make_the_whole_mean():
    batch = torch.arange(15.0)
    slices = [Ranks(r, 4).split(batch) for r in range(4)]
    assert torch.equal(torch.cat(slices), batch)
    assert [len(s) for s in slices] == Ranks(0, 4).sizes(15) == [4, 4, 4, 3]
    # The mean of each slice's scaled mean (what DDP's averaging yields) is the whole mean.
    scaled = [s.mean() * Ranks(r, 4).scale(15) for r, s in enumerate(slices)]
    assert float(sum(scaled) / 4) == pytest.approx(float(batch.mean()))
    assert [Ranks(r, 4).offset(15) for r in range(4)] == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="cannot be shared"):
        Ranks(0, 4).split(torch.arange(3))


def test_one_process_helpers_return_their_input():
    one = Ranks()
    x = torch.randn(5, 3)
    assert one.split(x) is x and one.gather(x, 5) is x and one.mean(x) is x and one.scale(5) == 1.0


def test_torchrun_command_runs_this_sleep_py_without_gpus():
    from cli.main import _without_gpus

    argv = _without_gpus(["run", "--date", DATE, "--gpus", "2", "--root", "r", "--gpus=3"])
    assert argv == ["run", "--date", DATE, "--root", "r"]
    command = torchrun_command(2, argv)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc-per-node=2" in command
    assert command[command.index("--nproc-per-node=2") + 1] == str(REPO / "sleep.py")


def test_gpus_below_one_is_a_usage_error(tmp_path):
    (tmp_path / "data" / "raw" / DATE).mkdir(parents=True)
    done = run_cli("--date", DATE, "--root", str(tmp_path), "--gpus", "0", "--device", "cpu")
    assert done.returncode == 2 and "--gpus 0" in done.stderr


def _stage_results(root: Path, master_key: bytes | None) -> dict:
    db = root / "memory" / "episodic.sqlite"
    with contextlib.closing(cipher_connect(db, master_key) if master_key else sqlite3.connect(db)) as con:
        return {stage: json.loads(result or "{}")
                for stage, result in con.execute("select stage, result from stage_runs")}


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_a_night_on_two_gloo_processes_trains_as_one_process_does(tmp_path, sealed):
    """``sleep.py --date D --gpus 2 --device cpu``: every training stage of the night under
    torchrun; each stage's figures equal a one-process night's on the same ingested day.
    Sealed (``memory.encryption: on``): every rank unlocks the memory from the passphrase
    file, and rank 0's spill of each call's inputs is sealed."""
    stages = "vision,audio,align,sae"
    options = ["--config", str(REPO / "configs" / "tiny.yaml")]
    first = tmp_path / "root1"
    raw = first / "data" / "raw" / DATE
    make_media(raw / "a.mp4", seconds=9)
    make_media(raw / "b.mp4", seconds=9, video="smptebars=size=160x120:rate=10",
               audio="sine=frequency=880:sample_rate=44100")
    env, master_key = _env(), None
    if sealed:
        init_key(first / "memory" / "key.json", PASSPHRASE, cost=ScryptCost(n=2**12))
        secret = tmp_path / "passphrase"
        secret.write_text(PASSPHRASE + "\n")
        secret.chmod(0o600)
        env["SLEEP_PASSPHRASE_FILE"] = str(secret)
        options += ["--set", "memory.encryption=true"]
        master_key = unlock(first / "memory" / "key.json", PASSPHRASE)
    # Ingest once and copy the root: ingest's workers number the clips in the order they
    # finish, and a training batch follows that order.
    done = run_cli("--date", DATE, "--root", str(first), *options, "--only", "ingest", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    roots = {1: first, 2: tmp_path / "root2"}
    shutil.copytree(first, roots[2], symlinks=True)
    for processes, root in roots.items():
        done = run_cli("--date", DATE, "--root", str(root), *options, "--only", stages,
                       "--device", "cpu", "--gpus", str(processes), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = _stage_results(roots[1], master_key), _stage_results(roots[2], master_key)
    for stage in stages.split(","):
        a, b = one[stage].get("metrics", one[stage]), two[stage].get("metrics", two[stage])
        for key, value in a.items():
            if isinstance(value, float) and "second" not in key:
                assert b[key] == pytest.approx(value, abs=1e-3, rel=1e-3), (stage, key)
    assert [p.name for p in (roots[2] / "checkpoints" / "jepa").glob("*.pt")] == [f"{DATE}.pt"]
    assert not list(roots[2].glob(".ranks-*"))


@pytest.mark.slow
def test_the_daemon_runs_a_night_on_two_processes_and_a_stop_ends_it_after_a_stage(tmp_path, tiny_cfg):
    """``runtime.gpus: 2``: the daemon's night is a torchrun child; SIGTERM from a stop ends it
    after the stage in progress (the followers wait for rank 0), and the rerun completes it."""
    import datetime as dt

    from core.paths import Paths
    from pipeline.launch import run_night_on_processes

    raw = tmp_path / "data" / "raw" / DATE
    make_media(raw / "a.mp4", seconds=9)
    cfg = tiny_cfg.model_copy(update={"runtime": tiny_cfg.runtime.model_copy(update={"gpus": 2})})
    paths, date = Paths.at(tmp_path), dt.date.fromisoformat(DATE)

    def stop_once_ingested() -> bool:
        if not paths.database.exists():
            return False
        with sqlite3.connect(paths.database) as db:
            return bool(db.execute("select 1 from stage_runs where stage = 'ingest' and status = 'done'").fetchone())

    stopped = run_night_on_processes(date, cfg, paths, processes=2, device="cpu", should_stop=stop_once_ingested)
    assert stopped.stopped_early and stopped.states["ingest"] == "done"
    assert stopped.states.get("retention") is None  # it ended before the last stage
    assert not list(tmp_path.glob(".night-config-*"))
    finished = run_night_on_processes(date, cfg, paths, processes=2, device="cpu")
    assert not list(tmp_path.glob(".ranks-*"))
    assert finished.ok and finished.states.get("vision") == "done", finished.errors
    assert finished.report_path and Path(finished.report_path).is_file()
