"""Your own images end to end (docs/OWN_DATA.md): the example folder (PNG files + index.csv,
clipbias.data.example_folder) as a ``kind: folder`` dataset, every method of the default
configuration, the small CLIP architecture with a local checkpoint (trained here on the
planted benchmark for two epochs, as tests/config/tiny.yaml trains it), through rule
prepare_folder_dataset to the result tables (``snakemake tables``) and the report of the
cell."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from workflow_helpers import make_workdir, run

from clipbias.data.example_folder import CLASSES, example_config, write_example_folder

pytestmark = pytest.mark.slow

CELL = "shapes/planted-vit-tiny/seed-42"
REPORT = f"results/own/report/{CELL}/report_method.html"


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    from clipbias.synth import generate
    from clipbias.train import train_clip

    work = make_workdir(tmp_path_factory.mktemp("own") / "wf")
    write_example_folder(work / "my_images", n_train=40, n_val=400, n_test=80, seed=0)
    planted = generate(work / "planted", seed=7, n_train=800, n_val=8, n_test=8, twin_splits=[])
    train_clip(planted, work / "tiny.safetensors", work / "tiny.json", epochs=2, batch_size=128,
               seed=7, num_threads=2)  # fmt: skip
    cfg = example_config("my_images", "tiny.safetensors", experiment="own")
    cfg["datasets"][0]["n_shards"] = 1
    # methods: not set, so the default list of config/config.yaml runs; the tiny run's
    # smaller resampling counts
    cfg.update(
        seeds=[42],
        features={"n_shards": 1, "batch_size": 128},
        locate={"textspan": {"m": 5}},
        evaluate={"n_boot": 200},
        audit={"n_boot": 100, "n_draws": 100},
        analysis={"sensitivity": {"values": [1000]}},
    )
    (work / "own.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, out = run(work, "tables", REPORT, config="own.yaml", timeout=1800)
    assert rc == 0, out[-5000:]
    return work


def test_the_folder_becomes_a_dataset_folder(own_run):
    meta = json.loads((own_run / "results/own/data/shapes/dataset.json").read_text())
    assert meta["classes"] == CLASSES and meta["splits"] == {"train": 40, "val": 400, "test": 80}
    assert meta["group_names"][1] == "circle / water" and meta["minority_groups"] == [1, 2]
    # only the splits the stages read are extracted (features.splits: auto)
    manifest = json.loads(
        (
            own_run / "results/own/features/shapes/planted-vit-tiny/any-seed/manifest.json"
        ).read_text()
    )
    assert manifest["rows"] == 400 + 80


def test_every_default_method_reaches_the_tables(own_run):
    default = yaml.safe_load((own_run / "config/config.yaml").read_text())["methods"]
    ids = [m if isinstance(m, str) else m.get("id") or m["name"] for m in default]
    metrics = pd.read_csv(own_run / f"results/own/metrics/{CELL}/metrics.csv", comment="#")
    assert set(ids) <= set(metrics["method"])
    wg = metrics[(metrics["metric"] == "worst_group_acc") & (metrics["split"] == "test")]
    assert set(ids) <= set(wg["method"])
    completeness = pd.read_csv(own_run / "results/own/tables/completeness.csv", comment="#")
    assert set(completeness["status"]) <= {"ok", "not computable", "not applicable"}
    grid = pd.read_csv(own_run / "results/own/tables/grid_main.csv", comment="#")
    assert len(grid) == len(ids) and "shapes / planted-vit-tiny: Worst-group" in grid.columns
    # the audit of the protected attribute (colour) ran on the folder's attribute column
    assert (own_run / f"results/own/audit/{CELL}").is_dir()


def test_the_report_of_the_cell(own_run):
    report = own_run / REPORT
    assert report.is_file() and report.stat().st_size > 10_000
    figures = own_run / f"results/own/report/{CELL}/figures"
    assert (figures / "group_accuracy.png").is_file()
