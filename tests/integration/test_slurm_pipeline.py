"""The reduced embedded default through profiles/slurm on a real SLURM cluster.

tests/config/tiny.yaml with the overlay tests/config/tiny_families.yaml (one method of
every family) passes through every stage and rule (generation, training, extraction in 2
shards, TextSpan, locating, correcting, RefineCLIP phase 2 and model export, evaluation,
report notebooks). Here every one of its jobs is submitted by the official executor plugin
with `--profile profiles/slurm`, and the result tables must equal those of the local run
of tiny.yaml with every method (``tiny_run``): byte-identical files, the same rows of the
per-method tables.

The cluster comes from the session fixture ``slurm_cluster`` (tests/conftest.py): a running
cluster, or the local one of cluster/slurm-up.sh with CLIPBIAS_SLURM=1 (.ci/run sets it);
otherwise the test is skipped with the reason. Every snakemake call runs under
`timeout -s KILL`, so a hung status check cannot hang CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_helpers import (
    CONFIG,
    EXP,
    FAMILIES,
    REPORT,
    assert_same_cell_tables,
    gpu_rules,
    make_workdir,
    run_through_slurm,
    tail,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMEOUT = 1500  # seconds, hard limit (SIGKILL) for the whole pipeline through SLURM
GPU_RULES = gpu_rules()  # the test cluster has no GPU partition


def slurm_snakemake(workdir: Path, *extra: str):
    """The tiny config through profiles/slurm on the local test cluster."""
    return run_through_slurm(
        workdir,
        "--configfile", CONFIG, FAMILIES,
        # Same threads per job as the local run (determinism of the trained model). Up to 6
        # jobs in SLURM at once on the 2-CPU node: the ones that do not fit wait in the
        # queue, and SLURM starts one as soon as a CPU frees, instead of when the plugin's
        # next status check (2 s, growing by 10 s while nothing finishes) notices.
        "--cores", "2", "--jobs", "6",
        *extra,
        profile=workdir / "profiles" / "slurm",
        timeout=TIMEOUT,
        gpu_rules=GPU_RULES,
        runtime=20,
        mem_mb=1500,
        latency_wait=10,
    )  # fmt: skip


def test_tiny_pipeline_through_slurm_matches_local_run(slurm_cluster, tiny_run, tmp_path):
    work = make_workdir(tmp_path / "wf")
    res = slurm_snakemake(work)
    assert res.returncode == 0, tail(res.stderr, 120)

    # Every job was a SLURM job: the plugin kept one log per job, named by its SLURM id.
    logs = work / ".snakemake" / "slurm_logs"
    by_rule = {d.name.removeprefix("rule_"): list(d.rglob("*.log")) for d in logs.iterdir()}
    expected = {
        "make_planted_dataset": 1,
        "train_small_clip": 1,
        "encode_classes": 1,
        "encode_method_texts": 1,
        "encode_audit_texts": 1,
        "extract_features": 2,
        "feature_manifest": 1,
        "textspan": 1,
        "locate_ltc": 1,
        "predict": 6,
        "predict_torch": 2,
        "locate_refineclip": 1,
        "adapt_refineclip": 1,
        "export_refineclip_model": 1,
        "audit": 1,
        "refineclip_sensitivity": 1,
        "planted_ground_truth": 1,
        "score_locators": 1,
        "evaluate": 1,
        "summarize_seeds": 1,
        "grid_table": 1,
        "table_completeness": 1,
        "report_planted": 1,
        "report_audit": 1,
        "report_refineclip": 1,
    }
    assert set(by_rule) == set(expected), set(by_rule) ^ set(expected)
    for rule, n in expected.items():
        assert len(by_rule[rule]) == n, (rule, by_rule[rule])
    assert all(p.stem.isdigit() for files in by_rule.values() for p in files)

    # Same science as the local run: the same result tables.
    assert_same_cell_tables(work / EXP, tiny_run / EXP)
    report = work / REPORT / "report_planted.html"
    assert report.stat().st_size > 10_000
