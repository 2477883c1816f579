"""Smoke test of profiles/slurm against a real SLURM cluster (the executor plugin end to end).

Runs tests/integration/slurm_smoke/Snakefile through `snakemake --executor slurm` and checks
that every job ran as a SLURM job. Uses a running cluster if `sinfo` shows an idle node;
otherwise, with CLIPBIAS_SLURM=1, starts the single-node cluster of cluster/slurm-up.sh for
the session and stops it afterwards. Without either, the tests are skipped with the reason.

    CLIPBIAS_SLURM=1 .venv/bin/pytest -m slurm tests/integration/test_slurm_smoke.py

The local cluster has no accounting database, hence `--slurm-status-command squeue`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from workflow_helpers import run_through_slurm, tail

pytestmark = pytest.mark.slurm

SMOKE = Path(__file__).resolve().parent / "slurm_smoke"
SNAKEMAKE_TIMEOUT = 300  # seconds, hard limit (SIGKILL) for one snakemake run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A private copy of the tiny workflow (snakemake writes .snakemake/ next to it)."""
    dst = tmp_path / "wf"
    shutil.copytree(SMOKE, dst)
    return dst


def _snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the tiny workflow with profiles/slurm on the local test cluster."""
    return run_through_slurm(
        workdir,
        "--snakefile", str(workdir / "Snakefile"),
        "--directory", str(workdir),
        "--executor", "slurm",
        "--jobs", "2",
        *extra,
        profile=REPO / "profiles" / "slurm",
        timeout=SNAKEMAKE_TIMEOUT,
    )  # fmt: skip


def _job_id(text: str, key: str = "job") -> str:
    for field in text.split():
        if field.startswith(f"{key}="):
            return field.split("=", 1)[1]
    raise AssertionError(f"no {key}= in {text!r}")


def test_workflow_runs_through_slurm(slurm_cluster, workdir: Path):
    res = _snakemake(workdir, "--retries", "0")
    assert res.returncode == 0, tail(res.stderr, 80)

    shards = [(workdir / "out" / f"shard-{i}.txt").read_text() for i in (0, 1)]
    combined = (workdir / "out" / "combined.txt").read_text()
    ids = [_job_id(s) for s in shards] + [_job_id(combined.splitlines()[-1])]
    # Every job ran inside a SLURM allocation, each its own job, in partition debug.
    assert all(i.isdigit() for i in ids), ids
    assert len(set(ids)) == 3, ids
    assert all(_job_id(s, "partition") == "debug" for s in shards), shards
    assert combined.splitlines()[:2] == [s.strip() for s in shards]
    # The plugin submitted them: its per-job SLURM logs exist.
    assert list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))


def test_failed_job_is_retried_through_slurm(slurm_cluster, workdir: Path):
    res = _snakemake(workdir, "--retries", "1", "out/flaky.txt")
    assert res.returncode == 0, tail(res.stderr, 80)
    # The first attempt ran as a SLURM job and failed, snakemake resubmitted it, and the
    # second attempt (another SLURM job) produced the output.
    assert (workdir / "flaky.failed-once").exists()
    assert "SLURM status is: 'FAILED'" in res.stderr, tail(res.stderr, 80)
    assert "Trying to restart job" in res.stderr, tail(res.stderr, 80)
    assert _job_id((workdir / "out" / "flaky.txt").read_text()).isdigit()
