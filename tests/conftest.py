"""Shared test fixtures and paths.

Session-wide fixtures of the workflow tests live here so that a local run of the tiny
configuration and the SLURM cluster are set up once per test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished local run of tests/config/tiny.yaml (every stage), in its own copy."""
    from workflow_helpers import make_workdir, run

    work = make_workdir(tmp_path_factory.mktemp("tiny") / "wf")
    rc, out = run(work)
    assert rc == 0, out[-5000:]
    return work


@pytest.fixture(scope="session")
def slurm_cluster():
    """A usable SLURM cluster; started here (and stopped afterwards) only if needed.

    Uses a running cluster if `sinfo` shows a usable node; otherwise, with CLIPBIAS_SLURM=1
    (set by .ci/run), starts the single-node cluster of cluster/slurm-up.sh and stops it at
    the end of the session. Without either the tests are skipped, with the reason.
    """
    from workflow_helpers import DOWN, UP, cluster_up, run_bounded, tail

    if cluster_up():
        yield
        return
    if os.environ.get("CLIPBIAS_SLURM") != "1":
        pytest.skip(
            "no usable SLURM node (sinfo); set CLIPBIAS_SLURM=1 to start the local "
            "cluster with cluster/slurm-up.sh, or start it yourself"
        )
    if os.geteuid() != 0:
        pytest.skip("CLIPBIAS_SLURM=1 but not root: cluster/slurm-up.sh needs root")
    try:
        res = run_bounded(["bash", str(UP)], timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("cluster/slurm-up.sh did not finish within 900 s")
    if res.returncode != 0 or not cluster_up():
        # A failing slurm-up.sh stops the daemons it started itself; daemons that were
        # already running are not ours to stop. Only a "successful" start that left no
        # usable node is undone here.
        if res.returncode == 0:
            run_bounded(["bash", str(DOWN)], timeout=120)
        out = res.stderr + res.stdout
        errors = [line for line in out.splitlines() if "ERROR" in line] or ["(no ERROR line)"]
        print(f"cluster/slurm-up.sh output:\n{out}", file=sys.stderr)
        pytest.skip(
            f"cluster/slurm-up.sh failed (rc={res.returncode}): {' | '.join(errors)}\n"
            f"--- last lines of its output ---\n{tail(out)}"
        )
    print(res.stdout, file=sys.stderr)
    try:
        yield
    finally:
        down = run_bounded(["bash", str(DOWN)], timeout=120)
        print(down.stderr, file=sys.stderr)
