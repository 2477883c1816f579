"""RefineCLIP's edit-locality tasks end to end (METHODS §5.8): the derived registry datasets
waterbirds_imagenet_r and imagenet_a_top10, built by rule derive_dataset from prepared
Waterbirds / ImageNet-R / ImageNet-A folders (the rehearsal's fixture datasets,
clipbias.data.fixtures, indexed by the real adapters; the registry's derive entries as
shipped), with a
local open_clip checkpoint (random weights of the micro test model), through phase 1 with
shots from the edit targets only, phase 2 and STD-FT, to metrics with edit success and
locality rows. Result tables only (`snakemake tables`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from workflow_helpers import make_workdir, run

from clipbias.data.adapters import build_index
from clipbias.data.download import check_layout
from clipbias.data.fixtures import write_extracted
from clipbias.data.registry import load_registry

pytestmark = pytest.mark.slow


def _prepare(work, seed=0):
    """resources/datasets/{waterbirds,imagenet_r,imagenet_a}: the fixture's extracted files at
    the micro model's input size + the index their adapters write (what rules
    download_dataset and prepare_dataset leave behind)."""
    registry = load_registry(work / "config" / "datasets.yaml")
    for name in ("waterbirds", "imagenet_r", "imagenet_a"):
        root = work / "resources" / "datasets" / name
        extracted = write_extracted(name, root / "extracted", image_size=32, seed=seed)
        build_index(registry[name], check_layout(registry[name], extracted), root)


@pytest.fixture(scope="module")
def derived_run(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    from clipbias.models import register_model_configs

    work = make_workdir(tmp_path_factory.mktemp("derived") / "wf")
    _prepare(work)
    register_model_configs()
    model = open_clip.create_model("planted-vit-micro")
    ckpt = work / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    shots = {"shot_classes": "edit_targets", "n_per_class": 2, "shots_split": "train"}
    config = {
        "experiment": "derived",
        "seeds": [3],
        "models": [{"name": "planted-vit-micro", "pretrained": str(ckpt)}],
        "datasets": [
            {
                "name": "waterbirds_imagenet_r",
                "kind": "registry",
                "locate_split": "train",
                "test_split": "test",
                "texts": "config/texts/waterbirds.yaml",
                "n_shards": 1,
                "edit_targets": ["landbird", "waterbird"],
            },
            {
                "name": "imagenet_a_top10",
                "kind": "registry",
                "locate_split": "train",
                "test_split": "test",
                "texts": "config/texts/waterbirds.yaml",
                "n_shards": 1,
                "edit_targets": "worst:2",
            },
        ],
        "methods": [
            "zero_shot",
            {"name": "refineclip", **shots, "T": 3},
            {"name": "refineclip_adapt", **shots, "T": 3, "steps": 20},
            {"name": "refineclip_std_ft", **shots, "T": 3, "steps": 20},
        ],
        "features": {"batch_size": 64, "dtype": "float32", "layers": "all"},
        "locate": {"textspan": {"m": 3}},
        "evaluate": {"n_boot": 100},
        "analysis": {"sensitivity": {"values": [1000], "steps": 5}},
    }
    (work / "derived.yaml").write_text(yaml.safe_dump(config))
    rc, out = run(work, "tables", config="derived.yaml", timeout=1200)
    assert rc == 0, out[-5000:]
    return work


def test_derived_tasks_run_to_edit_metrics(derived_run):
    res = derived_run / "resources" / "datasets"
    meta = json.loads((res / "waterbirds_imagenet_r" / "dataset.json").read_text())
    # the 18 ImageNet-R classes with the most cartoon_* files follow the 2 bird classes
    assert meta["classes"][:2] == ["landbird", "waterbird"] and len(meta["classes"]) == 20
    assert meta["class_prompt_names"][2] != meta["classes"][2]  # a class name, not a wnid
    top = json.loads((res / "imagenet_a_top10" / "dataset.json").read_text())
    assert len(top["classes"]) == 10 and top["splits"]["train"] == 10 * 10  # the registry's holdout
    for d, targets in (("waterbirds_imagenet_r", {0, 1}), ("imagenet_a_top10", None)):
        cell = f"{d}/planted-vit-micro/seed-3"
        p1 = json.loads(
            (derived_run / f"results/derived/heads/{cell}/refineclip/refineclip.json").read_text()
        )
        labels = set(p1["shots"]["labels"])
        assert len(labels) == 2 and p1["shots"]["shot_classes"] == "edit_targets"
        if targets:
            assert labels == targets
        metrics = pd.read_csv(derived_run / f"results/derived/metrics/{cell}/metrics.csv")
        for m in ("zero_shot", "refineclip", "refineclip_adapt", "refineclip_std_ft"):
            got = set(metrics.loc[metrics["method"] == m, "metric"])
            assert {"edit_success", "locality"} <= got, (d, m, got)
