"""The layers stay true: every import of ours runs downward (see ARCHITECTURE.md).

core -> ingest, models, memory -> dream -> stages -> api -> report -> web -> pipeline -> cli.
A module may import its own package and any package of a lower layer, never one of its
own layer or above. The walk reads every import statement, including those inside
functions (the lazy ones that keep ``sleep.py status`` from importing torch).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("core",), ("ingest", "models", "memory"), ("dream",), ("stages",), ("api",), ("report",),
          ("web",), ("pipeline",), ("cli",)]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _modules() -> list[Path]:
    return sorted(p for package in RANK for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every import of ours in ``path``."""
    package = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            target = package if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
    return [(line, target) for line, target in found if target in RANK]


def test_every_package_is_placed_in_a_layer():
    ours = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert ours <= set(RANK), f"packages missing from LAYERS: {sorted(ours - set(RANK))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_only_downward(path: Path):
    package = path.relative_to(ROOT).parts[0]
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target} ({'same layer' if RANK[target] == RANK[package] else 'a higher layer'})"
              for line, target in _imports(path)
              if target != package and RANK[target] >= RANK[package]]
    assert not upward, "\n".join(upward)


def test_only_stages_join_models_and_memory():
    """The glue between the networks and the store lives in one package."""
    joined = []
    for package in RANK:
        if package == "stages":
            continue
        targets = {t for p in (ROOT / package).rglob("*.py") for _, t in _imports(p)}
        if {"models", "memory"} <= targets | {package}:
            joined.append(package)
    assert not joined, f"{joined} import both models and memory; that glue belongs in stages/"


def test_models_raise_no_cli_errors():
    """Models raise ValueError or CheckpointError; turning those into exit codes is the CLI's job."""
    offenders = [f"{p.relative_to(ROOT)}" for p in (ROOT / "models").rglob("*.py")
                 if any(name in p.read_text() for name in ("UsageError", "ConfigError", "LockHeld"))]
    assert not offenders, offenders
