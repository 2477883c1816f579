"""RefineCLIP's edit-locality tasks end to end (METHODS §5.8): the derived registry datasets
waterbirds_imagenet_r and imagenet_a_top10, built by rule derive_dataset from prepared
Waterbirds / ImageNet-R / ImageNet-A folders (fixtures made by the real adapters), with a
local open_clip checkpoint (random weights of the micro test model), through phase 1 with
shots from the edit targets only, phase 2 and STD-FT, to metrics with edit success and
locality rows. Result tables only (`snakemake tables`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from workflow_helpers import make_workdir, run

from clipbias.data.adapters import build_index, imagenet_wnid_index

pytestmark = pytest.mark.slow

WNIDS = list(imagenet_wnid_index())[1:23:1]  # 22 ImageNet-1k classes


def _img(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def _prepare(resources, rng):
    """resources/datasets/{waterbirds,imagenet_r,imagenet_a}: extracted files + the index
    their adapters write (what rules download_dataset and prepare_dataset leave behind)."""
    src = resources / "waterbirds" / "extracted" / "wb"
    rows = []
    for i in range(48):
        y, split, place = i % 2, (i // 2) % 3, (i // 6) % 2
        rows.append(
            (i, f"c{y}/{i}.png", y, split, place, f"/{'o/ocean' if place else 'f/forest'}/x.jpg")
        )
    cols = ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    src.mkdir(parents=True)
    pd.DataFrame(rows, columns=cols).to_csv(src / "metadata.csv", index=False)
    for r in rows:
        _img(src / r[1], rng)
    build_index("waterbirds", src, resources / "waterbirds")
    for name, n_classes in (("imagenet_r", 20), ("imagenet_a", 12)):
        src = resources / name / "extracted" / name.replace("_", "-")
        for k, wnid in enumerate(WNIDS[:n_classes]):
            for j in range(3 + k % 4):
                _img(src / wnid / f"{'cartoon' if j < 1 + k % 3 else 'art'}_{j}.png", rng)
        build_index(name, src, resources / name)


@pytest.fixture(scope="module")
def derived_run(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    from clipbias.models import register_model_configs

    work = make_workdir(tmp_path_factory.mktemp("derived") / "wf")
    # the fixture has 3-6 images per ImageNet-A class: hold out 2 per class, not 10
    reg = work / "config" / "datasets.yaml"
    reg.write_text(reg.read_text().replace("holdout: {per_class: 10,", "holdout: {per_class: 2,"))
    _prepare(work / "resources" / "datasets", np.random.default_rng(0))
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
    assert len(top["classes"]) == 10 and top["splits"]["train"] == 10 * 2
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
