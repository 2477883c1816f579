"""The report stage of a finished tiny run: the `report` target, the Snakemake report, and
the HTML report rendered by headless Chromium (Debian's chromium package)."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workflow_helpers import FIGURES as ALL_FIGURES
from workflow_helpers import REPORT, copy_run, run
from workflow_helpers import TABLES as ALL_TABLES

pytestmark = pytest.mark.slow

FIGURES = ALL_FIGURES["report_planted"]
TABLES = ALL_TABLES["report_planted"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def jobs_run(output: str) -> set[str]:
    """Rules Snakemake started, from its 'rule <name>:' / 'localrule <name>:' lines."""
    return set(re.findall(r"^(?:local)?rule (\w+):$", output, flags=re.MULTILINE))


def test_pipeline_wrote_every_figure_and_table(tiny_run):
    root = tiny_run / REPORT
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            assert (root / "figures" / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    for stem in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (root / "tables" / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    html = (root / "report_planted.html").read_text()
    assert html.count("data:image/png;base64") >= len(FIGURES)


def test_report_target_rebuilds_only_the_report(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "wf")
    shutil.rmtree(work / REPORT)
    rc, out = run(work, "report")
    assert rc == 0, out[-5000:]
    # the cell's three notebooks (tiny.yaml runs the audit and RefineCLIP too), nothing upstream
    notebooks = {"report_planted", "report_audit", "report_refineclip"}
    assert jobs_run(out) == notebooks | {"report"}, jobs_run(out)
    for stem in FIGURES:
        assert (work / REPORT / "figures" / f"{stem}.png").is_file()
    # forcing the notebook again touches nothing upstream either
    rc, out = run(work, "report", "--forcerun", "report_planted")
    assert rc == 0, out[-5000:]
    assert jobs_run(out) == {"report_planted", "report"}, jobs_run(out)


@pytest.fixture(scope="module")
def snakemake_report(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    rc, text = run(tiny_run, "--report", str(out))
    assert rc == 0, text[-5000:]
    return out


def test_snakemake_report_holds_every_figure_and_table(snakemake_report, tiny_run, tmp_path):
    html = snakemake_report.read_text()
    for stem in FIGURES:
        assert f"{stem}.png" in html, stem
    for stem in TABLES:
        assert f"{stem}.csv" in html, stem
    assert "report_planted.html" in html
    zipped = tmp_path / "report.zip"
    rc, text = run(tiny_run, "--report", str(zipped))
    assert rc == 0, text[-5000:]
    names = zipfile.ZipFile(zipped).namelist()
    assert any(n.endswith("/group_accuracy.png") for n in names), names[:20]
    assert any(n.endswith("report.html") for n in names)


def test_report_renders_in_headless_chromium(snakemake_report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/install.sh installs it as root)")
    base = [chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=15000"]
    shot = tmp_path / "report.png"
    res = subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile1'}",
            "--window-size=1400,1800",
            f"--screenshot={shot}",
            snakemake_report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (1800, 1400)
    assert img.std() > 10, "the screenshot is blank"

    # The page's JavaScript ran without errors and built the report's navigation.
    res = subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            snakemake_report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if re.search(r"Uncaught|TypeError|ReferenceError", line)]
    assert not errors, errors
    assert "Results" in res.stdout and "Workflow" in res.stdout
