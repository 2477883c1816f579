"""Workflow-level checks: lint is clean and every shipped configuration plans (dry run).

The dry runs happen in a copy of the workflow (tests/workflow_helpers.make_workdir), so
results of the README's main command in the checkout never change what they see.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO, tool
from workflow_helpers import FAMILIES, make_workdir

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


def _dry_run(workdir, *args: str) -> str:
    """Output of ``snakemake -n <args>`` in ``workdir``; fails the test when planning fails."""
    res = subprocess.run(
        [tool("snakemake"), *args, "-n"], cwd=workdir, capture_output=True, text=True, timeout=180
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return out


def readme_job_counts() -> dict[str, int]:
    """The "jobs" column of README.md's table of configs: config file name -> jobs."""
    counts, header = {}, None
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = cells
        elif "jobs" in header and cells[0].split()[:1] and cells[0].split()[0].endswith(".yaml`"):
            counts[cells[0].split()[0].strip("`")] = int(cells[header.index("jobs")])
    return counts


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.stem)
def test_dry_run_every_shipped_config(cfg, clean_copy):
    out = _dry_run(clean_copy, "--configfile", str(cfg.relative_to(REPO)))
    assert "extract_features" in out and "evaluate" in out, out
    # README's table of configs states the jobs of a fresh checkout: one number, checked here
    readme = readme_job_counts()
    assert cfg.name in readme, f"README.md's table of configs has no row for {cfg.name}"
    total = _job_counts(out)["total"]
    assert readme[cfg.name] == total, (
        f"README.md says {cfg.name} plans {readme[cfg.name]} jobs; snakemake -n plans {total}: "
        "update the jobs column"
    )


def _job_counts(out: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: rule -> number of jobs."""
    counts, table = {}, False
    for line in out.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
        elif table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
        elif table and counts and not parts:
            break
    return counts


def test_default_runs_refineclip_phase1_once_per_distinct_shots(clean_copy):
    """refineclip, refineclip_adapt and refineclip_std_ft share their phase-1 parameters in
    the default config, so phase 1 runs for them once (plus once each for Ours* and Ours*
    with t on validation, which select on validation); the adapters still run per id."""
    out = _dry_run(clean_copy)
    counts = _job_counts(out)
    assert counts.get("locate_refineclip") == 3, counts
    assert counts.get("adapt_refineclip") == 2, counts
    assert "refineclip/refineclip_adapt.json" not in out and "refineclip/refineclip.json" in out


def test_family_stages_run_only_on_datasets_that_run_the_family(clean_copy):
    """datasets[].methods filters every stage: in the grid config the second dataset runs
    zero-shot, LTC and its random control only, so no TextSpan, audit, RefineCLIP phase 1
    or α/β study is planned for it (they used to be, and phase 1 then asked for a split that
    features.splits: auto rightly did not extract)."""
    out = _dry_run(clean_copy, "tables", "--configfile", "tests/config/grid.yaml", FAMILIES)
    outputs = [line for line in out.splitlines() if line.strip().startswith("output:")]
    assert any("/planted_c80/" in line for line in outputs), out  # LTC runs
    for family in ("/refineclip", "/audit", "refineclip_sensitivity", "textspan.csv"):
        assert not [x for x in outputs if "/planted_c80/" in x and family in x], family
    counts = _job_counts(out)
    # 2 models x 2 seeds of the first dataset only
    assert counts["audit"] == counts["refineclip_sensitivity"] == counts["textspan"] == 4, counts
    assert counts["locate_refineclip"] == 4, counts  # phase 1 once per cell


def test_two_class_methods_refuse_the_multiclass_benchmark_before_any_job(clean_copy, tmp_path):
    """FairerCLIP (two classes only) added to the six-class planted benchmark stops the
    workflow at config time with a message that names the method, its limit and the dataset
    (METHODS §10.3); the shipped config leaves it out."""
    import yaml

    cfg = yaml.safe_load((REPO / "config/experiments/planted_multiclass.yaml").read_text())
    extra = tmp_path / "with_fairerclip.yaml"
    extra.write_text(yaml.safe_dump({"methods": [*cfg["methods"], "fairerclip"]}))
    res = subprocess.run(
        [tool("snakemake"), "-n", "--configfile", "config/experiments/planted_multiclass.yaml",
         str(extra)],
        cwd=clean_copy, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "'fairerclip' supports at most 2 classes" in out and "'planted_multiclass' has 6" in out
    assert "Job stats" not in out


def test_snakefmt_clean():
    res = subprocess.run(
        [tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
