"""An experiment grid end to end: 2 small models x 2 planted datasets (spurious correlation
0.95 and 0.8) x 2 seeds (tests/config/grid.yaml), LTC with its zero-shot reference and
random-heads control on the first dataset and LTC with zero-shot on the second (a dataset's
methods filter), result tables only (`snakemake tables`). Every expected table exists, and the cell the tiny run
computes alone with every registered method (tests/config/tiny.yaml) has the same tables
inside the grid: byte-identical files, and the same rows for the grid's methods where a
table holds one row set per method or locator. So a cell's results depend neither on the
other cells nor on which other methods run."""

from __future__ import annotations

import itertools
import json

import pytest
import yaml
from conftest import REPO
from workflow_helpers import EXP, assert_same_cell_tables, make_workdir, run

from clipbias.io import read_csv
from clipbias.methods import registry

pytestmark = pytest.mark.slow

GRID = "tests/config/grid.yaml"
GRID_METHODS = [
    m if isinstance(m, str) else m["name"]
    for m in yaml.safe_load((REPO / GRID).read_text())["methods"]
]
DATASETS, MODELS, SEEDS = (
    ["planted", "planted_c80"],
    ["planted-vit-tiny", "planted-vit-micro"],
    [7, 8],
)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    work = make_workdir(tmp_path_factory.mktemp("grid") / "wf")
    rc, out = run(work, "tables", config=GRID, timeout=1800)
    assert rc == 0, out[-5000:]
    return work


def test_every_table_of_the_grid_exists(grid_run):
    root = grid_run / "results/grid"
    methods = {"planted": set(GRID_METHODS), "planted_c80": {"zero_shot", "ltc"}}
    for d, m, s in itertools.product(DATASETS, MODELS, SEEDS):
        cell = root / "metrics" / d / m / f"seed-{s}"
        metrics = read_csv(cell / "metrics.csv")
        assert set(metrics["method"]) == methods[d], (d, m, s)
        paired = read_csv(cell / "paired.csv")
        paired = paired[paired["baseline"] == "zero_shot"]
        assert set(paired["method"]) == methods[d] - {"zero_shot", "ltc_random"}
        assert len(read_csv(cell / "random_draws.csv")) == (20 if d == "planted" else 0)
        truth = root / "ground_truth" / d / m / f"seed-{s}"
        assert (truth / "heads.csv").is_file() and (truth / "locator_scores.csv").is_file()
        heads = root / "heads" / d / m / f"seed-{s}"
        assert (heads / registry.LOCATORS["ltc"].file).is_file()
    for d, m in itertools.product(DATASETS, MODELS):
        summary = read_csv(root / "metrics" / d / m / "summary_over_seeds.csv")
        assert set(summary["n_seeds"]) == {2}
        assert set(summary["method"]) == methods[d]
    grid = read_csv(root / "tables/grid_main.csv")
    # worst group, average, gap: the metrics of a table without a dataset protocol
    assert len(grid.columns) == 1 + 3 * len(DATASETS) * len(MODELS)
    assert len(grid) == len(GRID_METHODS)
    # the two planted datasets differ in their generator's spurious correlation
    for d, corr in (("planted", 0.95), ("planted_c80", 0.8)):
        meta = json.loads((root / "data" / d / "seed-7" / "dataset.json").read_text())
        assert meta["generator"]["spurious_correlation"] == corr


def test_a_cell_in_the_grid_equals_the_cell_run_alone(grid_run, tiny_run):
    assert_same_cell_tables(grid_run / "results/grid", tiny_run / EXP)
