"""The linters run as tests (STYLE.md rule 9): ruff on every Python package, mypy on the typed
service packages (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff() -> None:
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                        "collector", "enrich", "decoders", "benchmarks", "tests", "deploy"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy() -> None:
    p = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
