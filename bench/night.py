"""A whole night at scale: a synthetic day of phone recordings, every stage timed, projected to 16 hours.

    python bench/night.py --hours 1                      # CPU, configs/tiny.yaml; 1 hour measured, 16 projected
    python bench/night.py --hours 16 --config configs/default.yaml --device cuda   # on a GPU
    python bench/night.py --hours 0.02 --size 320x180 --baseline-steps 2 --baseline-warmup 1   # smoke run

The day is made once and cached under ``--cache`` by its settings (hours, seed, size, rate,
bitrate, file length), so a second run reuses it: ``--hours`` of footage as a phone leaves
it, ``--file-minutes`` files (5) named ``VID_YYYYMMDD_HHMMSS.mp4`` spread over a 07:00-23:00
day, 1280x720 at 30 fps, H.264 at ``--bitrate`` (4 Mb/s; one keyframe a second) with 48 kHz
stereo AAC. Each file is a run of 15-60 s scenes: an FFmpeg lavfi source with a look (hue,
flip, pan...) and film grain, so that the encoder spends the bitrate a camera would, over a
tone mixed with coloured noise. An hour of it is about 1.9 GB and, on 2 busy cores, takes a
quarter of an hour to make; that time is printed apart and is no part of the night.

The night runs on a fresh root under ``--workdir`` with the files linked into
``data/raw/{date}/``. Printed per stage: state, wall time (the runner's own figure), share
of the night, peak resident memory of this process (``VmHWM``, reset at each stage start)
and of this process with its children (ingest's workers, FFmpeg; sampled), and on CUDA the
peak of ``torch.cuda.max_memory_allocated`` and the mean GPU utilisation (``nvidia-smi``
when present). Setup and the report are the row ``other``, so the rows sum to the night.

Each stage is then projected to ``--project`` hours (16) by a rule printed beside it: a
stage whose cost follows the footage is scaled linearly; a training stage keeps its
training time when its steps are fixed by the config (``models.jepa.steps``,
``dream.steps``) or rescales it by the steps its own rule gives at the projected size
(epochs over the rows, clamped to ``[min_steps, max_steps]``), and scales the rest of its
time (decoding, embedding) linearly, up to the frames the stage caps itself at
(``max_frames``). Per-step cost is taken as measured. A linear rule scales each stage's
start-up cost too, so a short day overstates the projection: measure an hour at least.

Last, each training stage's step rate inside the night (the stage's own figure) against a
stock model of the same size doing forward, backward and an AdamW step on the same batch
shape on the same device, in the same run: timm ``VisionTransformer`` for the JEPA
(``bench/jepa.py``), a plain conv+GRU regressing its next steps for CPC, and diffusers
``UNet2DModel`` (epsilon DDPM loss) for the dream decoder, with the ratio ours / stock.
``--json`` prints all of it as one JSON object at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from core.config import CONFIG_DIR, load_config
from core.device import resolve_device
from core.paths import Paths
from ingest.binaries import ffmpeg_path
from pipeline.runner import run_night
from stages import STAGES, Stage

DAY = dt.date(2026, 3, 16)
DAY_START, DAY_HOURS = dt.time(7), 16  # the waking day the recordings are spread over
GENERATOR_VERSION = 1  # bump when the recipe changes: the cache key holds it
MB = 2**20
# Sources rendered at half size and scaled up (cheap), each with its own seed where it takes one.
SOURCES = ["testsrc2", "smptebars", "cellauto=rule=110:seed={seed}", "life=mold=10:ratio=0.3:seed={seed}",
           "sierpinski=seed={seed}", "mandelbrot", "gradients=seed={seed}", "testsrc", "rgbtestsrc",
           "smptehdbars", "colorspectrum"]
LOOKS = ["null", "negate", "hue=h=120", "vflip,hue=h=240", "hue=s=0,eq=contrast=1.6", "scroll=horizontal=0.002",
         "hflip,hue=h=60", "eq=brightness=-0.15:saturation=1.5"]
NOISES = ["white", "pink", "brown"]


# --- the day --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DaySpec:
    """What the synthetic day looks like; every field is part of its cache key."""

    hours: float = 1.0
    seed: int = 0
    size: str = "1280x720"
    fps: int = 30
    bitrate: str = "4M"
    file_minutes: float = 5.0
    preset: str = "ultrafast"

    @property
    def key(self) -> str:
        return (f"day-{self.hours:g}h-{self.size}-{self.fps}fps-{self.bitrate}-{self.file_minutes:g}min-"
                f"{self.preset}-seed{self.seed}-v{GENERATOR_VERSION}")


@dataclass(frozen=True)
class Scene:
    source: str  # a lavfi video source with its options
    look: str  # a filter chain applied to it
    seconds: float
    tone_hz: int
    noise: str  # anoisesrc colour
    noise_amplitude: float


def plan_day(spec: DaySpec) -> list[tuple[str, float, list[Scene]]]:
    """``[(file name, seconds, scenes)]``: the recordings of the day, seeded by ``spec.seed``."""
    rng = random.Random(spec.seed)
    total = round(spec.hours * 3600)
    length = round(spec.file_minutes * 60)
    count = max(1, -(-total // length))
    gap = max(length, DAY_HOURS * 3600 // count)  # files spread over the waking day
    start = dt.datetime.combine(DAY, DAY_START)
    plan, left = [], total
    for i in range(count):
        seconds = min(length, left)
        left -= seconds
        scenes, rest = [], seconds
        while rest > 0:
            n = min(rest, rng.randint(15, 60))
            k = rng.randrange(10**6)
            scenes.append(Scene(rng.choice(SOURCES).format(seed=k % 1000), rng.choice(LOOKS), n,
                                rng.randint(120, 2000), rng.choice(NOISES), round(rng.uniform(0.02, 0.2), 3)))
            rest -= n
        name = f"VID_{start + dt.timedelta(seconds=i * gap):%Y%m%d_%H%M%S}.mp4"
        plan.append((name, seconds, scenes))
    return plan


def recording_command(path: Path, scenes: list[Scene], spec: DaySpec) -> list[str]:
    """The FFmpeg command that writes one recording of ``scenes`` to ``path``."""
    width, height = (int(v) for v in spec.size.split("x"))
    cmd = [str(ffmpeg_path()), "-v", "error", "-y"]
    parts = []
    for i, s in enumerate(scenes):
        name, _, options = s.source.partition("=")
        video = (f"{name}=size={width // 2}x{height // 2}:rate={spec.fps}" + (f":{options}" if options else "")
                 + f",scale={width}:{height},{s.look},noise=alls=8:allf=t,format=yuv420p")
        audio = (f"sine=frequency={s.tone_hz}:sample_rate=48000,volume=0.3[t];"
                 f"anoisesrc=color={s.noise}:amplitude={s.noise_amplitude}:sample_rate=48000:seed={i}[n];"
                 "[t][n]amix=inputs=2:duration=first,aformat=channel_layouts=stereo[out0]")
        cmd += ["-f", "lavfi", "-t", f"{s.seconds:g}", "-i", video, "-f", "lavfi", "-t", f"{s.seconds:g}", "-i", audio]
        parts.append(f"[{2 * i}:v][{2 * i + 1}:a]")
    rate = spec.bitrate
    cmd += ["-filter_complex", "".join(parts) + f"concat=n={len(scenes)}:v=1:a=1[v][a]", "-map", "[v]", "-map", "[a]",
            "-c:v", "libx264", "-preset", spec.preset, "-b:v", rate, "-maxrate", rate, "-bufsize", rate,
            "-g", str(spec.fps), "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "mp4", str(path)]
    return cmd


def make_day(spec: DaySpec, cache: Path, jobs: int = 1, log=print) -> dict:
    """The day's recordings under ``cache/{spec.key}/``, made unless a finished set is there.

    Returns:
        ``{"folder", "files", "footage_seconds", "bytes", "generated_seconds", "cached"}``;
        ``generated_seconds`` is the time the set took when it was made.
    """
    folder = cache / spec.key
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return {**json.loads(manifest.read_text()), "folder": str(folder), "cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_day(spec)
    started = time.perf_counter()

    def make(item) -> None:
        name, _, scenes = item
        if (folder / name).is_file():  # an interrupted run made it already
            return
        tmp = folder / f".{name}.tmp"
        subprocess.run(recording_command(tmp, scenes, spec), check=True, capture_output=True)
        os.replace(tmp, folder / name)
        log(f"  made {name}")

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(make, plan))
    figures = {"files": [name for name, _, _ in plan], "footage_seconds": sum(s for _, s, _ in plan),
               "bytes": sum((folder / name).stat().st_size for name, _, _ in plan),
               "generated_seconds": round(time.perf_counter() - started, 1), "spec": asdict(spec)}
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures, indent=1))
    os.replace(tmp, manifest)  # last: a manifest means the set is whole
    return {**figures, "folder": str(folder), "cached": False}


# --- measuring the night ----------------------------------------------------------------------

def _status_kb(key: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
    return found


def tree_rss_kb(exclude: set[int] = frozenset()) -> int:
    """Resident memory of this process and every descendant (``/proc``), in kB."""
    total = _status_kb("VmRSS")
    for pid in _descendants(os.getpid()):
        if pid not in exclude:
            with contextlib.suppress(OSError, ValueError):
                total += _status_kb("VmRSS", str(pid))
    return total


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class StagePeaks:
    rss_kb: int = 0  # this process
    tree_kb: int = 0  # with its children, sampled
    cuda_bytes: int = 0
    gpu_util: list[float] = field(default_factory=list)


class Meter:
    """Per-stage peaks: this process's ``VmHWM``, the sampled RSS of its process tree, CUDA memory
    and (with ``nvidia-smi``) GPU utilisation. ``other`` collects what falls between stages."""

    def __init__(self, cuda: bool, interval: float = 0.5):
        self.cuda, self.interval = cuda, interval
        self.peaks: dict[str, StagePeaks] = {"other": StagePeaks()}
        self.results: dict[str, dict] = {}
        self.current = "other"
        self.exact_rss = _reset_peak_rss()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._smi: subprocess.Popen | None = None

    def _sample_once(self, name: str) -> None:
        peaks = self.peaks[name]
        peaks.tree_kb = max(peaks.tree_kb, tree_rss_kb({self._smi.pid} if self._smi else set()))
        if not self.exact_rss:
            peaks.rss_kb = max(peaks.rss_kb, _status_kb("VmRSS"))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_once(self.current)

    def _read_smi(self) -> None:
        for line in self._smi.stdout:
            with contextlib.suppress(ValueError):
                self.peaks[self.current].gpu_util.append(float(line.split(",")[0]))

    def __enter__(self) -> Self:
        smi = shutil.which("nvidia-smi")
        if self.cuda and smi:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            index = visible[torch.cuda.current_device()] if visible[0] else str(torch.cuda.current_device())
            self._smi = subprocess.Popen([smi, "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", str(int(self.interval * 1000))], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            self._threads.append(threading.Thread(target=self._read_smi, daemon=True))
        self._threads.append(threading.Thread(target=self._sample, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._close_peak("other")
        self._stop.set()
        if self._smi:
            self._smi.terminate()
            self._smi.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def _close_peak(self, name: str) -> None:
        self._sample_once(name)  # a stage shorter than the interval gets one sample at least
        peaks = self.peaks[name]
        if self.exact_rss:
            peaks.rss_kb = max(peaks.rss_kb, _status_kb("VmHWM"))
        peaks.tree_kb = max(peaks.tree_kb, peaks.rss_kb)  # the tree holds this process
        if self.cuda:
            peaks.cuda_bytes = max(peaks.cuda_bytes, torch.cuda.max_memory_allocated())

    def _open_peak(self, name: str) -> None:
        self.peaks.setdefault(name, StagePeaks())
        if self.exact_rss:
            _reset_peak_rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.current = name

    @contextlib.contextmanager
    def stage(self, name: str):
        self._close_peak("other")
        self._open_peak(name)
        try:
            yield
        finally:
            self._close_peak(name)
            self._open_peak("other")


@dataclass(frozen=True)
class MeteredStage(Stage):
    """A registered stage whose run is wrapped by the :class:`Meter` (and its result kept)."""

    meter: Meter | None = field(default=None, compare=False, repr=False)

    def function(self):
        run = super().function()

        def metered(night):
            with self.meter.stage(self.name):
                result = run(night)
            self.meter.results[self.name] = result or {}
            return result

        return metered


def run_measured_night(day: dict, cfg, workdir: Path, device: str, interval: float = 0.5) -> dict:
    """One night on a fresh root under ``workdir`` over ``day``'s files (linked, not copied).

    Returns:
        ``{"ok", "errors", "seconds", "stages": [row...], "results", "peak_rss_mb", ...}``
        where the rows (every stage, then ``other``) sum to ``seconds``.
    """
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    paths = Paths.at(root)
    raw = paths.raw(DAY)
    raw.mkdir(parents=True)
    for name in day["files"]:
        os.symlink(Path(day["folder"]).resolve() / name, raw / name)
    cuda = device.startswith("cuda")
    meter = Meter(cuda, interval)
    stages = [MeteredStage(**{f.name: getattr(s, f.name) for f in fields(s)}, meter=meter) for s in STAGES]
    with meter:
        started = time.perf_counter()
        outcome = run_night(DAY, cfg, paths, device=device, stages=stages)
        seconds = time.perf_counter() - started
    rows = []
    for s in STAGES:
        peaks = meter.peaks.get(s.name, StagePeaks())
        rows.append(_row(s.name, outcome.states.get(s.name, "not run"), outcome.seconds.get(s.name, 0.0), peaks,
                         seconds, meter.results.get(s.name, {})))
    rows.append(_row("other", "setup, report", seconds - sum(outcome.seconds.values()), meter.peaks["other"],
                     seconds, {}))
    return {
        "ok": outcome.ok, "errors": outcome.errors, "seconds": round(seconds, 2), "stages": rows,
        "results": meter.results, "root": str(root),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows), 1),
        "peak_tree_rss_mb": round(max(r["peak_tree_rss_mb"] for r in rows), 1),
        "rss_peaks": "exact (VmHWM reset per stage)" if meter.exact_rss else f"sampled every {interval} s",
        "cuda_peak_mb": round(max(r["cuda_peak_mb"] or 0 for r in rows), 1) if cuda else None,
    }


def _row(name: str, state: str, seconds: float, peaks: StagePeaks, night: float, result: dict) -> dict:
    metrics = result.get("metrics") or {}
    steps = result.get("steps", metrics.get("steps"))
    train = metrics.get("train_seconds")
    return {"stage": name, "state": state, "seconds": round(seconds, 2),
            "share": round(seconds / night, 4) if night else 0.0,
            "peak_rss_mb": round(peaks.rss_kb / 1024, 1), "peak_tree_rss_mb": round(peaks.tree_kb / 1024, 1),
            "cuda_peak_mb": round(peaks.cuda_bytes / MB, 1) if peaks.cuda_bytes else None,
            "gpu_util_mean": round(sum(peaks.gpu_util) / len(peaks.gpu_util), 1) if peaks.gpu_util else None,
            "steps": steps, "train_seconds": train,
            "steps_per_second": round(steps / train, 2) if steps and train else None}


# --- projection ------------------------------------------------------------------------------

def _training(row: dict, steps_now: int | None, steps_then: int | None, rest_factor: float,
              rule: str) -> tuple[float, str]:
    """Training time rescaled by steps, the rest of the stage by ``rest_factor``."""
    train = row["train_seconds"] or 0.0
    if not steps_now or steps_then is None:  # it did not train: all of it follows the footage
        return row["seconds"] * rest_factor, f"did not train: x{rest_factor:.4g}"
    rest = max(0.0, row["seconds"] - train)
    return train * steps_then / steps_now + rest * rest_factor, \
        f"{rule}: {steps_now} -> {steps_then} steps; the rest x{rest_factor:.4g}"


def project_stage(row: dict, result: dict, cfg, k: float) -> tuple[float, str]:
    """``(seconds at k times the footage, the rule used)`` for one row of the night."""
    from models.audio.train import night_steps as cpc_steps
    from models.batches import night_steps

    name, m, held = row["stage"], cfg.models, cfg.models.heldout_fraction
    steps = row["steps"]
    if name == "vision":
        return _training(row, steps, steps, k, "models.jepa.steps fixed")
    if name == "audio":
        seconds = (result.get("segments", 0) - result.get("heldout_segments", 0)) * cfg.ingest.clip_seconds
        then = cpc_steps(seconds * k, m.cpc) if seconds else None
        return _training(row, steps, then, k, "epochs over the audio, clamped to [min_steps, max_steps]")
    if name in ("align", "sae"):
        rows = (result.get("pairs", 0) - result.get("heldout_pairs", 0) if name == "align"
                else round(result.get("rows", 0) * (1 - held)))
        then = night_steps(max(1, round(rows * k)), getattr(m, name)) if rows else None
        return _training(row, steps, then, k, "epochs over the rows, clamped to [min_steps, max_steps]")
    if name == "reconstruct":
        frames = result.get("frames") or 0
        cap = min(k, m.reconstruct.max_frames / frames) if frames else k
        rows = result.get("trained_on", 0)
        then = night_steps(max(1, round(rows * cap)), m.reconstruct) if rows else None
        rule = f"epochs over the fragments (frames capped at max_frames), clamped; the Hopfield bank grows x{cap:.4g}"
        return _training(row, steps, then, cap, rule)
    if name == "dream":
        frames = result.get("frames") or 0
        cap = min(k, cfg.dream.max_frames / frames) if frames else k
        return _training(row, steps, steps, cap, "dream.steps fixed (dream.max_minutes caps them)")
    if name in ("reembed", "probes", "retention", "journal", "other"):
        why = {"reembed": "earlier days only, none on a fresh root; capped by memory.reembed.max_minutes",
               "probes": "a fixed probe set", "retention": "nothing old on a fresh root",
               "journal": "no journal in the synthetic day", "other": "setup and the report"}[name]
        return row["seconds"], f"fixed ({why})"
    why = "; the change-point search can grow faster" if name == "episodes" else ""
    return row["seconds"] * k, f"x{k:.4g} (footage{why})"


def project(night: dict, cfg, measured_hours: float, hours: float) -> dict:
    """Every stage of ``night`` projected to ``hours`` of footage; see :func:`project_stage`."""
    k = hours / measured_hours
    stages = []
    for row in night["stages"]:
        seconds, rule = project_stage(row, night["results"].get(row["stage"], {}), cfg, k)
        stages.append({"stage": row["stage"], "measured_seconds": row["seconds"], "seconds": round(seconds, 2),
                       "rule": rule})
    total = sum(s["seconds"] for s in stages)
    for s in stages:
        s["share"] = round(s["seconds"] / total, 4) if total else 0.0
    frames = night["results"].get("vision", {}).get("frames", 0) * k
    jepa = cfg.models.jepa
    return {"hours": hours, "factor": round(k, 4), "seconds": round(total, 1), "stages": stages,
            "vision_frame_cache_gb": round(frames * 3 * jepa.img_size**2 / 2**30, 2)}


# --- stock baselines --------------------------------------------------------------------------

def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _timed_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    from bench.jepa import _timed

    return _timed(step, steps, warmup, device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else contextlib.nullcontext()


def stock_vit(cfg, device: torch.device, steps: int, warmup: int) -> dict:
    """timm ``VisionTransformer`` of the JEPA encoder's size (``bench/jepa.py``)."""
    from bench.jepa import bench_timm
    from models.vision.jepa import build_encoder

    batch = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    from timm.models.vision_transformer import VisionTransformer

    seconds = bench_timm(cfg, batch, steps, warmup, device)
    stock = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.dim, depth=cfg.depth,
                              num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, num_classes=0, class_token=False,
                              global_pool="avg")  # as bench_timm builds it, to count its weights
    return {"stock": "timm VisionTransformer", "stock_per_second": cfg.batch_size * steps / seconds,
            "unit": "images/s", "batch": cfg.batch_size, "stock_params": _params(stock),
            "ours_params": _params(build_encoder(cfg))}


class ConvGru(torch.nn.Module):
    """The stock CPC-sized model: strided conv + convs over log-mels, a GRU, a linear head
    regressing the next ``predict_steps`` encoded steps (MSE): no negatives, no InfoNCE."""

    def __init__(self, cfg):
        super().__init__()
        s, c = cfg.encoder_stride, cfg.encoder_channels
        layers = [torch.nn.Conv1d(cfg.n_mels, c, 2 * s, stride=s, padding=s // 2), torch.nn.ReLU()]
        for _ in range(cfg.encoder_layers - 1):
            layers += [torch.nn.Conv1d(c, c, 3, padding=1), torch.nn.ReLU()]
        self.encoder = torch.nn.Sequential(*layers)
        self.gru = torch.nn.GRU(c, cfg.context_hidden, batch_first=True)
        self.head = torch.nn.Linear(cfg.context_hidden, c * cfg.predict_steps)
        self.k = cfg.predict_steps

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        z = self.encoder(mel).transpose(1, 2)  # (B, T, C)
        c, _ = self.gru(z)
        b, t, d = z.shape
        pred = self.head(c[:, :t - self.k]).view(b, t - self.k, self.k, d)
        target = torch.stack([z[:, i + 1:t - self.k + i + 1] for i in range(self.k)], dim=2)
        return torch.nn.functional.mse_loss(pred.float(), target.detach().float())


def stock_conv_gru(cfg, device: torch.device, steps: int, warmup: int) -> dict:
    from models.audio.cpc import CpcModel
    from models.audio.train import crop_frames

    model = ConvGru(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mel = torch.randn(cfg.batch_size, cfg.n_mels, crop_frames(cfg), generator=torch.Generator().manual_seed(0))
    mel = mel.to(device)

    def step():
        with _autocast(device, cfg.bf16):
            loss = model(mel)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _timed_steps(step, steps, warmup, device)
    return {"stock": "conv+GRU (MSE on next steps)", "stock_per_second": cfg.batch_size * steps / seconds,
            "unit": "crops/s", "batch": cfg.batch_size, "stock_params": _params(model),
            "ours_params": _params(CpcModel(cfg))}


def stock_unet(cfg, cond_dim: int, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    """diffusers ``UNet2DModel`` with the dream decoder's widths, depth and attention, unconditioned."""
    from diffusers import DDPMScheduler, UNet2DModel

    from dream.decoder import DreamDecoder

    levels = len(cfg.channels)
    down, up = ["DownBlock2D"] * levels, ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    model = UNet2DModel(sample_size=cfg.image_size, in_channels=3, out_channels=3,
                        layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.channels),
                        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=8,
                        attention_head_dim=8).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1).to(device)

    def step():
        noise = torch.randn(images.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        with _autocast(device, cfg.bf16):
            pred = model(scheduler.add_noise(images, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _timed_steps(step, steps, warmup, device)
    return {"stock": "diffusers UNet2DModel", "stock_per_second": batch * steps / seconds, "unit": "images/s",
            "batch": batch, "stock_params": _params(model), "ours_params": _params(DreamDecoder(cond_dim, cfg))}


def baselines(cfg, results: dict, device: str, steps: int = 20, warmup: int = 3) -> list[dict]:
    """Per training stage: our step rate inside the night (the stage's own figure) against a
    stock model of the same size on the same batch shape and device, timed here."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vision = (results.get("vision") or {}).get("metrics") or {}
    audio = (results.get("audio") or {}).get("metrics") or {}
    dream = (results.get("dream") or {}).get("metrics") or {}
    dream_frames = (results.get("dream") or {}).get("frames", 0) + (results.get("dream") or {}).get("replay_frames", 0)
    rows = [
        ("vision", "our I-JEPA step", vision.get("images_per_second"),
         lambda: stock_vit(cfg.models.jepa, dev, steps, warmup)),
        ("audio", "our CPC step", (audio["audio_seconds_per_second"] / cfg.models.cpc.window_s)
         if audio.get("audio_seconds_per_second") else None,
         lambda: stock_conv_gru(cfg.models.cpc, dev, steps, warmup)),
        ("dream", "our decoder step (v-pred, conditioned, EMA)", dream.get("images_per_second"),
         lambda: stock_unet(cfg.dream, cfg.models.jepa.dim, min(cfg.dream.batch_size, dream_frames or
                                                                cfg.dream.batch_size), dev, steps, warmup)),
    ]
    out = []
    for stage, ours_name, ours, stock in rows:
        figures = stock()
        figures["stock_per_second"] = round(figures["stock_per_second"], 1)
        out.append({"stage": stage, "ours": ours_name, "ours_per_second": ours, **figures,
                    "ratio": round(ours / figures["stock_per_second"], 3) if ours else None})
    return out


# --- the whole measurement --------------------------------------------------------------------

def measure(spec: DaySpec, config: str, overrides: list[str] | None = None, *, cache: Path, workdir: Path,
            device: str | None = None, project_hours: float = 16.0, with_baselines: bool = True,
            baseline_steps: int = 20, baseline_warmup: int = 3, jobs: int = 1, interval: float = 0.5,
            log=print) -> dict:
    """Make (or reuse) the day, run its night, project it, time the stock baselines."""
    overrides = list(overrides or [])
    cfg = load_config(config, overrides)
    device = resolve_device(device or cfg.runtime.device)
    log(f"day: {spec.key} under {cache}")
    day = make_day(spec, Path(cache), jobs, log=log)
    log(f"night of {DAY} on {device}...")
    night = run_measured_night(day, cfg, Path(workdir), device, interval)
    measured_hours = day["footage_seconds"] / 3600
    figures = {
        "machine": f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, python "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads",
        "config": str(config), "overrides": overrides, "date": str(dt.date.today()), "interval": interval,
        "day": {**{k: v for k, v in day.items() if k != "files"}, "count": len(day["files"]),
                "megabits_per_second": round(day["bytes"] * 8 / day["footage_seconds"] / 1e6, 2)},
        "night": {k: v for k, v in night.items() if k != "results"},
        "projection": project(night, cfg, measured_hours, project_hours),
    }
    if with_baselines:
        log("stock baselines...")
        figures["baselines"] = baselines(cfg, night["results"], device, baseline_steps, baseline_warmup)
    return figures


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def print_figures(figures: dict) -> None:
    day, night, proj = figures["day"], figures["night"], figures["projection"]
    spec = day["spec"]
    print(f"\n{figures['machine']}; {figures['device']}; {figures['config']} {' '.join(figures['overrides'])}")
    print(f"day: {day['footage_seconds'] / 3600:.2f} h in {day['count']} file(s) of up to {spec['file_minutes']:g} min, "
          f"{spec['size']} {spec['fps']} fps H.264 at {spec['bitrate']}b/s ({day['megabits_per_second']} Mb/s "
          f"measured with the sound), {day['bytes'] / 1e9:.2f} GB; made in {day['generated_seconds']:.0f} s"
          f"{' earlier (cached)' if day['cached'] else ''}, not part of the night")
    print(f"night: {night['seconds']:.1f} s, {'ok' if night['ok'] else 'FAILED ' + str(night['errors'])}; "
          f"peak RSS {night['peak_rss_mb']:.0f} MB this process, {night['peak_tree_rss_mb']:.0f} MB with its "
          f"children (sampled every {figures['interval']} s)"
          + (f"; CUDA peak {night['cuda_peak_mb']:.0f} MB" if night["cuda_peak_mb"] is not None else ""))
    cuda = night["cuda_peak_mb"] is not None
    print(f"\n{'stage':12}{'state':>14}{'seconds':>10}{'share':>8}{'RSS MB':>9}{'tree MB':>9}"
          + (f"{'CUDA MB':>9}{'GPU %':>7}" if cuda else "") + f"{'steps':>7}{'step/s':>8}"
          + f"{format(proj['hours'], 'g') + ' h: s':>12}{'share':>8}  rule")
    for row, p in zip(night["stages"], proj["stages"]):
        print(f"{row['stage']:12}{row['state'][:14]:>14}{row['seconds']:10.1f}{row['share']:8.1%}"
              f"{row['peak_rss_mb']:9.0f}{row['peak_tree_rss_mb']:9.0f}"
              + (_fmt(row["cuda_peak_mb"], ".0f", 9) + _fmt(row["gpu_util_mean"], ".0f", 7) if cuda else "")
              + _fmt(row["steps"], "d", 7) + _fmt(row["steps_per_second"], ".1f", 8)
              + f"{p['seconds']:12.1f}{p['share']:8.1%}  {p['rule']}")
    total = sum(r["seconds"] for r in night["stages"])
    print(f"{'total':12}{'':>14}{total:10.1f}{1:8.1%}{'':>18}" + ("" if not cuda else " " * 16) + " " * 15
          + f"{proj['seconds']:12.1f}")
    print(f"\nprojected to {proj['hours']:g} h of footage (x{proj['factor']:g}): {proj['seconds'] / 3600:.2f} h of "
          f"night; the vision stage's frame cache alone: {proj['vision_frame_cache_gb']} GB")
    if figures.get("baselines"):
        print("\ntraining steps, ours inside the night vs a stock model of the same size (same batch and "
              "device, this run):")
        for b in figures["baselines"]:
            ours = f"{b['ours_per_second']:.1f}" if b["ours_per_second"] else "-"
            print(f"  {b['stage']:7}{b['ours']:46}{ours:>9} {b['unit']:9}| {b['stock']:30}"
                  f"{b['stock_per_second']:9.1f} | ours/stock {b['ratio'] if b['ratio'] is not None else '-'}"
                  f"  (batch {b['batch']}, params ours {b['ours_params']:,}, stock {b['stock_params']:,})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="hours of footage in the day (default 1)")
    parser.add_argument("--config", default=str(CONFIG_DIR / "tiny.yaml"), help="the night's config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the config's runtime.device)")
    parser.add_argument("--cache", default=str(REPO / "bench" / "work" / "night-cache"),
                        help="where the synthetic day is kept, by its settings")
    parser.add_argument("--workdir", default=str(REPO / "bench" / "work" / "night"),
                        help="where the night's root is made (replaced)")
    parser.add_argument("--project", type=float, default=16.0, help="hours of footage to project to")
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="time the stock models after the night")
    parser.add_argument("--baseline-steps", type=int, default=20, help="timed steps of each stock model")
    parser.add_argument("--baseline-warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0, help="seeds the day's scenes")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the recordings")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the recordings")
    parser.add_argument("--bitrate", default="4M", help="H.264 bitrate (FFmpeg -b:v)")
    parser.add_argument("--file-minutes", type=float, default=5.0, help="length of each recording")
    parser.add_argument("--preset", default="ultrafast", help="x264 preset for making the day")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 4),
                        help="recordings made at once")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args(argv)
    spec = DaySpec(args.hours, args.seed, args.size, args.fps, args.bitrate, args.file_minutes, args.preset)
    figures = measure(spec, args.config, args.overrides, cache=Path(args.cache), workdir=Path(args.workdir),
                      device=args.device, project_hours=args.project, with_baselines=args.baselines,
                      baseline_steps=args.baseline_steps, baseline_warmup=args.baseline_warmup, jobs=args.jobs,
                      interval=args.sample_every)
    print_figures(figures)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if figures["night"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
