"""The report notebooks run under papermill on the committed fixture and convert to HTML.

Each report rule's case: ``report_cell`` with every planted input (rule report_planted) and
with the planted inputs set to "" (rule report_method), and ``report_seeds``. The commands
use the papermill CLI with the notebook's own ``python3`` kernel, from the repository root.
"""

from __future__ import annotations

import subprocess

import nbformat
import pytest
from conftest import REPO, tool
from workflow_helpers import FIGURES, NOTEBOOKS, TABLES

from clipbias import report
from clipbias.io import read_csv

FX = "tests/data/report_fixture/"
# parameters of each rule that name input files (their defaults must be in the fixture)
INPUT_PARAMS = {
    "report_cell": [
        "dataset_meta",
        "metrics",
        "paired",
        "methods",
        "random_draws",
        "random_summary",
        "ltc_json",
        "ltc_full_json",
        "textspan",
        "dataset_dir",
        "train_log",
        "ground_truth",
    ],
    "report_seeds": ["summary"],
    "report_audit": ["audit_dir", "audit_heads", "dataset_meta"],
    "report_refineclip": [
        "dataset_meta",
        "metrics",
        "paired",
        "summary",
        "phase1_json",
        "sensitivity",
    ],
}
# extra -p parameters of each rule's case
RULE_PARAMS = {
    "report_planted": [],
    "report_method": ["-p", "dataset_dir", "", "-p", "train_log", "", "-p", "ground_truth", ""],
    "report_seeds": [],
    "report_audit": [],
    "report_refineclip": [],
}


def _is_p_column(col: str) -> bool:
    return col in ("p", "p-value") or col.startswith("p (") or col.endswith(" p")


def assert_self_explaining(stem):
    """A table's caption (the CSV's ``# `` lines, the paragraph above the Markdown table)
    names its split, its units and what its brackets are; no p-value prints as 0."""
    lines = stem.with_suffix(".csv").read_text().splitlines()
    caption = " ".join(line[2:] for line in lines if line.startswith("# "))
    assert "Split: " in caption and "Units: " in caption, (stem.name, caption)
    assert any(kind in caption for kind in report.INTERVALS.values()), (stem.name, caption)
    assert stem.with_suffix(".md").read_text().startswith(caption + "\n\n"), stem.name
    table = read_csv(stem.with_suffix(".csv"), dtype=str)
    for col in filter(_is_p_column, table.columns):
        values = set(table[col].dropna().str.strip())
        assert not values & {"0", "0.0", "0.00", "0.000"}, (stem.name, col, values)


def _parameters(name):
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    ns: dict = {}
    exec(cells[0].source, ns)  # plain literal assignments
    return nb, {k: v for k, v in ns.items() if not k.startswith("__")}


@pytest.mark.parametrize("name", sorted(set(NOTEBOOKS.values())))
def test_notebook_parameters_and_stripped(name):
    nb, params = _parameters(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert params["repo_root"] == "."
    assert {"fig_dir", "table_dir"} <= set(params)
    for key in INPUT_PARAMS[name]:
        assert (REPO / params[key]).exists(), f"default of {key} is not in the fixture"
        assert params[key].startswith(FX)
    for path in [*params.get("seed_metrics", {}).values(), *params.get("curves", [])]:
        assert (REPO / path).exists() and path.startswith(FX)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    rc = subprocess.run(
        [tool("python"), "tools/strip_notebooks.py", "--check", f"notebooks/{name}.ipynb"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_under_papermill(name, tmp_path):
    fig_dir, table_dir = tmp_path / "figures", tmp_path / "tables"
    out_nb = tmp_path / f"{name}.ipynb"
    cmd = [
        tool("papermill"),
        f"notebooks/{NOTEBOOKS[name]}.ipynb",
        str(out_nb),
        "-k",
        "python3",
        "--log-level",
        "WARNING",
        "-p",
        "fig_dir",
        str(fig_dir),
        "-p",
        "table_dir",
        str(table_dir),
        *RULE_PARAMS[name],
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    for stem in FIGURES[name]:
        for ext in ("png", "pdf"):
            assert (fig_dir / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
    for stem in TABLES[name]:
        for ext in ("csv", "md", "tex"):
            assert (table_dir / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    produced = {p.stem for p in fig_dir.iterdir()}
    assert produced == set(FIGURES[name])
    assert {p.stem for p in table_dir.iterdir()} == set(TABLES[name])
    for stem in TABLES[name]:
        assert_self_explaining(table_dir / stem)

    executed = nbformat.read(out_nb, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [
        o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) == len(FIGURES[name])  # each figure shown once inline

    res = subprocess.run(
        [tool("jupyter"), "nbconvert", "--to", "html", "--log-level", "WARN", str(out_nb)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    html = out_nb.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64") >= len(FIGURES[name])
    if name == "report_audit":  # V before/after, the random control, the selected heads
        assert "Cramér" in html and "Random sets beaten" in html and "L3H1" in html
        return
    assert "Worst-group" in html
    if name != "report_seeds":
        assert "McNemar" in html  # the paired comparison with zero-shot


def test_refineclip_notebook_without_phase1_adapter_or_targets(tmp_path):
    """An experiment with Tip-Adapter only or without refineclip_adapt*: the notebook still
    writes every stem (note figures / tables say what is missing)."""
    fig_dir, table_dir = tmp_path / "figures", tmp_path / "tables"
    cmd = [
        tool("papermill"), "notebooks/report_refineclip.ipynb", str(tmp_path / "nb.ipynb"),
        "-k", "python3", "--log-level", "WARNING",
        "-p", "fig_dir", str(fig_dir), "-p", "table_dir", str(table_dir),
        "-p", "phase1_json", "", "-p", "sensitivity", "", "-p", "reference_table", "",
        "-y", "curves: []\nedit_targets: []",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    assert {p.stem for p in fig_dir.iterdir()} == set(FIGURES["report_refineclip"])
    assert {p.stem for p in table_dir.iterdir()} == set(TABLES["report_refineclip"])
    heads = (table_dir / "refineclip_heads.csv").read_text()
    assert "No RefineCLIP phase-1 method configured" in heads
    main = (table_dir / "refineclip_main.csv").read_text()
    assert "Paper" not in main and "RefineCLIP phase 1" in main
