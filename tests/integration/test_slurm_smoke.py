"""Smoke test of profiles/slurm against a real SLURM cluster (the executor plugin end to end).

Runs tests/integration/slurm_smoke/Snakefile through `snakemake --executor slurm` and checks
that every job ran as a SLURM job. Uses a running cluster if `sinfo` shows an idle node;
otherwise, with CLIPBIAS_SLURM=1, starts the single-node cluster of cluster/slurm-up.sh for
the session and stops it afterwards. Without either, the tests are skipped with the reason.

    CLIPBIAS_SLURM=1 .venv/bin/pytest -m slurm tests/integration/test_slurm_smoke.py

The local cluster has no accounting database, hence `--slurm-status-command squeue`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).resolve().parent / "slurm_smoke"
UP = REPO / "cluster" / "slurm-up.sh"
DOWN = REPO / "cluster" / "slurm-down.sh"
SNAKEMAKE_TIMEOUT = 300  # seconds, hard limit (SIGKILL) for one snakemake run


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    """Run under `timeout -s KILL` (plus a Python-side timeout as a second guard)."""
    return subprocess.run(
        ["timeout", "-s", "KILL", str(timeout), *cmd],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        **kwargs,
    )


def _local_cluster_down() -> bool:
    """True if slurm.conf is the one of cluster/slurm-up.sh and its slurmctld is not running.

    Saves the ~10 s that sinfo spends retrying a controller that is not there.
    """
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    state = Path(os.environ.get("CLIPBIAS_SLURM_STATE", "/run/clipbias-slurm"))
    try:
        if "written by clipbias cluster/slurm-up.sh" not in conf.read_text():
            return False
        pid = (state / "slurm" / "slurmctld.pid").read_text().strip()
        return Path(f"/proc/{pid}/comm").read_text().strip() != "slurmctld"
    except OSError:
        return conf.exists()


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or _local_cluster_down():
        return False
    try:
        res = _run(["sinfo", "-h", "-o", "%T"], timeout=15)
    except subprocess.TimeoutExpired:
        return False
    # idle, or partly/fully busy with someone else's jobs: usable either way.
    usable = {"idle", "mixed", "allocated", "completing"}
    return res.returncode == 0 and bool(usable & set(res.stdout.split()))


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="session")
def slurm_cluster():
    """A usable SLURM cluster; started here (and stopped afterwards) only if needed."""
    if _cluster_up():
        yield
        return
    if os.environ.get("CLIPBIAS_SLURM") != "1":
        pytest.skip(
            "no usable SLURM node (sinfo); set CLIPBIAS_SLURM=1 to start the local "
            "cluster with cluster/slurm-up.sh, or start it yourself"
        )
    if os.geteuid() != 0:
        pytest.skip("CLIPBIAS_SLURM=1 but not root: cluster/slurm-up.sh needs root")
    res = _run(["bash", str(UP)], timeout=900)
    if res.returncode != 0 or not _cluster_up():
        # A failing slurm-up.sh stops the daemons it started itself; daemons that were
        # already running are not ours to stop. Only a "successful" start that left no
        # usable node is undone here.
        if res.returncode == 0:
            _run(["bash", str(DOWN)], timeout=120)
        out = res.stderr + res.stdout
        errors = [line for line in out.splitlines() if "ERROR" in line] or ["(no ERROR line)"]
        print(f"cluster/slurm-up.sh output:\n{out}", file=sys.stderr)
        pytest.skip(
            f"cluster/slurm-up.sh failed (rc={res.returncode}): {' | '.join(errors)}\n"
            f"--- last lines of its output ---\n{_tail(out)}"
        )
    print(res.stdout, file=sys.stderr)
    try:
        yield
    finally:
        down = _run(["bash", str(DOWN)], timeout=120)
        print(down.stderr, file=sys.stderr)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A private copy of the tiny workflow (snakemake writes .snakemake/ next to it)."""
    dst = tmp_path / "wf"
    shutil.copytree(SMOKE, dst)
    return dst


def _snakemake(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the tiny workflow with profiles/slurm, overridden for the local test cluster."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(workdir / "Snakefile"),
        "--directory", str(workdir),
        # The profile under test; `none` keeps any profiles/default out of the run.
        "--profile", str(REPO / "profiles" / "slurm"),
        "--workflow-profile", "none",
        "--executor", "slurm",
        "--jobs", "2",
        # Local cluster: partition debug, small jobs, no accounting DB (squeue status).
        "--default-resources", "slurm_partition=debug", "runtime=5", "mem_mb=200",
        # The profile sends the GPU rules to partition gpu with gpu=1; no GPU here.
        "--set-resources", "extract_features:gpu=0", "extract_features:slurm_partition=debug",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        "--latency-wait", "5",
        *extra,
    ]  # fmt: skip
    env = dict(os.environ)
    # Jobs inherit PATH (sbatch --export=ALL): the job's snakemake must be this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        res = _run(cmd, timeout=SNAKEMAKE_TIMEOUT, env=env, cwd=workdir)
    finally:
        _cancel_leftover_jobs(workdir)
    if res.returncode == -9 or res.returncode == 137:
        pytest.fail(f"snakemake killed after {SNAKEMAKE_TIMEOUT} s:\n{_tail(res.stderr, 60)}")
    return res


def _cancel_leftover_jobs(workdir: Path) -> None:
    """scancel jobs of this run still queued (a failed or killed run), by working directory."""
    res = _run(["squeue", "-h", "-o", "%i %Z"], timeout=15)
    ids = [
        line.split()[0]
        for line in res.stdout.splitlines()
        if len(line.split()) == 2 and Path(line.split()[1]) == workdir
    ]
    if ids:
        _run(["scancel", *ids], timeout=15)


def _job_id(text: str, key: str = "job") -> str:
    for field in text.split():
        if field.startswith(f"{key}="):
            return field.split("=", 1)[1]
    raise AssertionError(f"no {key}= in {text!r}")


def test_workflow_runs_through_slurm(slurm_cluster, workdir: Path):
    res = _snakemake(workdir, "--retries", "0")
    assert res.returncode == 0, _tail(res.stderr, 80)

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
    assert res.returncode == 0, _tail(res.stderr, 80)
    # The first attempt ran as a SLURM job and failed, snakemake resubmitted it, and the
    # second attempt (another SLURM job) produced the output.
    assert (workdir / "flaky.failed-once").exists()
    assert "SLURM status is: 'FAILED'" in res.stderr, _tail(res.stderr, 80)
    assert "Trying to restart job" in res.stderr, _tail(res.stderr, 80)
    assert _job_id((workdir / "out" / "flaky.txt").read_text()).isdigit()
