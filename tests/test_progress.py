"""Progress bars show on a terminal only: a night under cron or systemd writes its stderr to
mail or the journal, and a training bar's carriage-return updates would bury the log there
(the GPU night's captured stderr held 60 lines of bars for 2,000 JEPA steps)."""
from __future__ import annotations

import io

import numpy as np

from core.config import ReconstructConfig
from core.progress import bar_off
from models.reconstruct.train import train_reconstructors


def test_bar_off_leaves_the_terminal_check_to_tqdm():
    assert bar_off(True) is None  # tqdm: a bar when stderr is a terminal
    assert bar_off(False) is True
    assert bar_off(True, False, True) is True
    assert bar_off(True, False) is None


def test_a_training_bar_stays_out_of_a_stderr_that_is_no_terminal(monkeypatch):
    stream = io.StringIO()  # as under cron: not a terminal
    monkeypatch.setattr("sys.stderr", stream)
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((6, 16)).astype(np.float32)
    targets = rng.integers(0, 6, 40)
    fragments = bank[targets] + 0.3 * rng.standard_normal((40, 16)).astype(np.float32)
    cfg = ReconstructConfig(hidden=16, assoc_dim=8, patterns=8, batch_size=8, min_steps=5, max_steps=5,
                            warmup_steps=1)
    train_reconstructors(bank, fragments, targets, cfg, "cpu", seed=0, progress=True)
    assert "step/s" not in stream.getvalue() and "reconstruct:" not in stream.getvalue()
