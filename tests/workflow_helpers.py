"""Helpers shared by the workflow-level tests (local runs and runs through SLURM).

A test never runs the workflow in the repository itself: :func:`make_workdir` copies what a
fresh clone needs to run (the tracked workflow files) into a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tool

CONFIG = "tests/config/tiny.yaml"
# overlay on CONFIG: one method of every family (tests/config/tiny_families.yaml)
FAMILIES = "tests/config/tiny_families.yaml"
EXP = "results/tiny"
CELL = "planted/planted-vit-tiny/seed-7"  # the tiny config's only grid cell
FEAT = f"{EXP}/features/{CELL}"
MANIFEST = f"{FEAT}/manifest.json"  # target of the feature stage alone
METRICS = f"{EXP}/metrics/{CELL}"
HEADS = f"{EXP}/heads/{CELL}"
REPORT = f"{EXP}/report/{CELL}"
COPY = [
    "Snakefile",
    "workflow",
    "config",
    "envs",
    "profiles",
    "src",
    "notebooks",
    "tests/config",
]
MODEL_CFG = json.loads((REPO / "src/clipbias/model_configs/planted-vit-tiny.json").read_text())
N_LAYERS = MODEL_CFG["vision_cfg"]["layers"]
N_HEADS = MODEL_CFG["vision_cfg"]["width"] // MODEL_CFG["vision_cfg"]["head_width"]


def make_workdir(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for item in COPY:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(
                src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / item)
    return dest


# Figure and table stems each report rule writes (workflow/rules/common.smk lists them as
# the rules' outputs), and the notebook each rule runs.
NOTEBOOKS = {
    "report_planted": "report_cell",
    "report_method": "report_cell",
    "report_seeds": "report_seeds",
    "report_audit": "report_audit",
    "report_refineclip": "report_refineclip",
}
FIGURES = {
    "report_planted": [
        "sample_grid",
        "training_curve",
        "zero_shot_groups",
        "head_heatmap_ltc",
        "head_heatmap_ltc_full",
        "textspan_heads",
        "located_vs_ground_truth",
        "group_accuracy",
        "random_distribution",
        "method_plane",
    ],
    "report_method": [
        "zero_shot_groups",
        "head_heatmap_ltc",
        "head_heatmap_ltc_full",
        "textspan_heads",
        "group_accuracy",
        "random_distribution",
        "method_plane",
    ],
    "report_seeds": ["seeds_scatter"],
    "report_audit": ["audit_random_control", "audit_cav_heatmap", "audit_transitions"],
    "report_refineclip": ["utility_vs_t", "edit_success_vs_locality", "alpha_beta_sensitivity"],
}
TABLES = {
    "report_planted": [
        "zero_shot_groups",
        "heads_table",
        "located_precision",
        "textspan_completeness",
        "group_accuracy",
        "main_table",
        "paired_table",
        "random_summary",
        "protocol_table",
    ],
    "report_method": [
        "heads_table",
        "group_accuracy",
        "main_table",
        "paired_table",
        "random_summary",
        "reference_heads",
        "protocol_table",
    ],
    "report_seeds": ["seeds_table"],
    "report_audit": ["audit_outcome", "audit_heads", "audit_random_control", "audit_transitions"],
    "report_refineclip": [
        "refineclip_heads",
        "refineclip_main",
        "refineclip_stability",
        "refineclip_edit",
    ],
}


def copy_run(src: Path, dest: Path) -> Path:
    """Copy a finished run; copy2 keeps mtimes, so nothing looks stale to Snakemake."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def snakemake_cmd(*extra: str, cores: int = 2, config: str | tuple[str, ...] = CONFIG) -> list[str]:
    """``config``: one config file, or a tuple of files layered in order."""
    files = (config,) if isinstance(config, str) else config
    return [tool("snakemake"), "--configfile", *files, "--cores", str(cores), *extra]


def run(
    workdir: Path,
    *extra: str,
    env: dict | None = None,
    timeout: int = 600,
    config: str | tuple[str, ...] = CONFIG,
):
    res = subprocess.run(
        snakemake_cmd(*extra, config=config),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return res.returncode, res.stdout + res.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Tables with one row set per method (or per locator variant): a run with fewer methods is
# compared on its own rows; every other table of a cell must be byte-identical.
PER_METHOD = {
    "metrics.csv": ["method"],
    "paired.csv": ["method"],
    "methods.csv": ["method"],  # the configured methods' protocol rows (label use, block)
    "locator_scores.csv": ["locator", "variant"],
}


def assert_same_cell_tables(subset: Path, full: Path, cell: str = CELL) -> None:
    """The result tables (CSV/JSON under metrics/, heads/, ground_truth/) of ``cell`` in the
    results folder ``subset`` equal those of ``full``, a run of the same cell with the same
    or more methods: each of ``subset``'s files exists in ``full`` and is byte-identical,
    except the per-method tables, whose rows must equal ``full``'s rows of the same methods
    (exact floats). So the cell's results depend neither on where it ran (other cells, a
    cluster) nor on which other methods ran."""
    import pandas as pd

    def tables(root: Path) -> dict[str, Path]:
        return {
            str(p.relative_to(root)): p
            for sub in ("metrics", "heads", "ground_truth")
            for p in sorted((root / sub / cell).rglob("*"))
            if p.suffix in (".csv", ".json")
        }

    small, large = tables(subset), tables(full)
    assert len(small) >= 10, sorted(small)
    assert set(small) <= set(large), set(small) - set(large)
    compared = 0
    for rel, path in small.items():
        key = PER_METHOD.get(path.name)
        if key is None:
            assert digest(path) == digest(large[rel]), rel
            continue
        # as text: the same rows byte for byte (and a column empty in the smaller run, e.g.
        # methods.csv's steps without a composition, is not a dtype difference)
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        ref = pd.read_csv(large[rel], dtype=str, keep_default_na=False)
        wanted = set(rows[key].itertuples(index=False))
        ref = ref[[k in wanted for k in ref[key].itertuples(index=False)]].reset_index(drop=True)
        assert len(rows), rel
        pd.testing.assert_frame_equal(rows, ref, check_exact=True, obj=rel)
        compared += 1
    assert compared == len(PER_METHOD)


# ----------------------------------------------------------------------------- SLURM

UP = REPO / "cluster" / "slurm-up.sh"
DOWN = REPO / "cluster" / "slurm-down.sh"


def run_bounded(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    """Run under `timeout -s KILL` (plus a Python-side timeout as a second guard)."""
    return subprocess.run(
        ["timeout", "-s", "KILL", str(timeout), *cmd],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        **kwargs,
    )


def local_cluster_down() -> bool:
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


def cluster_up() -> bool:
    """A SLURM controller answers and its node is usable."""
    if shutil.which("sinfo") is None or local_cluster_down():
        return False
    try:
        res = run_bounded(["sinfo", "-h", "-o", "%T"], timeout=15)
    except subprocess.TimeoutExpired:
        return False
    # idle, or partly/fully busy with someone else's jobs: usable either way.
    usable = {"idle", "mixed", "allocated", "completing"}
    return res.returncode == 0 and bool(usable & set(res.stdout.split()))


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def cancel_leftover_jobs(workdir: Path) -> None:
    """scancel jobs of this run still queued (a failed or killed run), by working directory."""
    res = run_bounded(["squeue", "-h", "-o", "%i %Z"], timeout=15)
    ids = [
        line.split()[0]
        for line in res.stdout.splitlines()
        if len(line.split()) == 2 and Path(line.split()[1]) == workdir
    ]
    if ids:
        run_bounded(["scancel", *ids], timeout=15)


def run_through_slurm(
    workdir: Path,
    *args: str,
    profile: Path,
    timeout: int,
    gpu_rules: tuple[str, ...] = ("extract_features",),
    runtime: int = 5,
    mem_mb: int = 200,
    latency_wait: int = 5,
) -> subprocess.CompletedProcess:
    """snakemake with ``profile`` (profiles/slurm) on the local test cluster, overridden only
    where that cluster differs from a real one: partition `debug` for everything (there is
    no `gpu` partition), no GPU request, no accounting database (squeue for status).

    Runs under `timeout -s KILL`; jobs of the run left in the queue are cancelled; a killed
    run fails the calling test.
    """
    import pytest

    cmd = [
        sys.executable, "-m", "snakemake", *args,
        "--profile", str(profile),
        # profiles/default (cores: all, local options) must not be layered on top.
        "--workflow-profile", "none",
        "--default-resources", "slurm_partition=debug", f"runtime={runtime}", f"mem_mb={mem_mb}",
        "--set-resources",
        *(f"{rule}:{key}" for rule in gpu_rules for key in ("gpu=0", "slurm_partition=debug")),
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        "--latency-wait", str(latency_wait),
    ]  # fmt: skip
    env = dict(os.environ)
    # Jobs inherit PATH (sbatch --export=ALL): their snakemake must be this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        res = run_bounded(cmd, timeout=timeout, env=env, cwd=workdir)
    finally:
        cancel_leftover_jobs(workdir)
    if res.returncode in (-9, 137):
        pytest.fail(f"snakemake killed after {timeout} s:\n{tail(res.stderr, 80)}")
    return res


def gpu_rules() -> tuple[str, ...]:
    """Rules of the workflow that declare ``gpu=1`` (they go to the GPU partition)."""
    import re

    rules = []
    for f in sorted((REPO / "workflow/rules").glob("*.smk")):
        for name, body in re.findall(
            r"^rule (\w+):\n(.*?)(?=^rule |\Z)", f.read_text(), re.M | re.S
        ):
            if re.search(r"^\s+gpu=1,", body, re.M):
                rules.append(name)
    return tuple(rules)
