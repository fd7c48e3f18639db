"""Renamed config keys are refused with their new name, all at once (never silently dropped)."""
from __future__ import annotations

import pytest

from core.config import RENAMED_KEYS, load_config
from core.errors import ConfigError


def test_every_renamed_key_names_its_replacement(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("models:\n  clip:\n    weights: null\n  jepa:\n    heldout_share: 0.2\n  cpc:\n    amp: false\n")
    with pytest.raises(ConfigError) as caught:
        load_config(old)
    message = str(caught.value)
    assert "3 problem(s)" in message
    for key in ("models.clip", "models.jepa.heldout_share", "models.cpc.amp"):
        assert f"{key}: renamed; use {RENAMED_KEYS[key]}" in message


def test_renamed_key_in_an_override_names_its_replacement():
    with pytest.raises(ConfigError, match=r"models.cpc.amp: renamed; use models.cpc.bf16"):
        load_config(None, ["models.cpc.amp=false"])


def test_new_names_load():
    cfg = load_config(None, ["models.openclip.batch_size=8", "models.heldout_fraction=0.2", "models.cpc.bf16=false"])
    assert (cfg.models.openclip.batch_size, cfg.models.heldout_fraction, cfg.models.cpc.bf16) == (8, 0.2, False)
