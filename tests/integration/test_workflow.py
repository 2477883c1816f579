"""Workflow-level checks: lint is clean and every shipped configuration plans (dry run).

The dry runs happen in a copy of the workflow (tests/workflow_helpers.make_workdir), so
results of the README's main command in the checkout never change what they see.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO, tool
from workflow_helpers import make_workdir

CONFIGS = [REPO / "config/config.yaml", *sorted((REPO / "config/experiments").glob("*.yaml"))]


def _snakemake(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("snakemake"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_lint_is_clean():
    res = _snakemake("--lint")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Lints for" not in out, out


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("dry") / "wf")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_every_shipped_config(cfg, clean_copy):
    res = subprocess.run(
        [tool("snakemake"), "-n", "--configfile", str(cfg.relative_to(REPO))],
        cwd=clean_copy,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "extract_features" in out and "evaluate" in out, out


def test_snakefmt_clean():
    res = subprocess.run(
        [tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
