"""Shared test fixtures and paths."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """Path of a console script installed next to the running Python (the venv's)."""
    p = BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH")
    return found


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Keep torch from oversubscribing the 2 CI cores when tests run model code.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
