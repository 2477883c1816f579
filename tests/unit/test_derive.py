"""Derived datasets (clipbias.data.derive): the RefineCLIP edit-locality tasks built from the
prepared folders of registry datasets, here from fixture folders (raw layouts from the builders
of clipbias.data.fixtures, indexed by the real adapters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipbias.data import fixtures as fx
from clipbias.data.adapters import build_index
from clipbias.data.derive import (
    DeriveError,
    build_derived,
    derive_index,
    holdout_split,
    top_classes,
)
from clipbias.data.index import read_index, validate_index, write_index
from clipbias.labels import classifier_class_names

# wnid -> (cartoon files, other files); ImageNet-1k names: goldfish, great white shark,
# hammerhead shark, electric ray
IN_R = {"n01443537": (1, 4), "n01484850": (3, 0), "n01494475": (2, 1), "n01496331": (0, 5)}


@pytest.fixture
def resources(tmp_path) -> Path:
    """resources/datasets/{waterbirds,imagenet_r}/ prepared as the workflow leaves them."""
    base = tmp_path / "resources" / "datasets"
    # Waterbirds: metadata.csv -> the real adapter
    rows = [
        (i, f"c{y}/{i}.jpg", y, split, place, f"/{'o/ocean' if place else 'f/forest'}/{i}.jpg")
        for i, (y, split, place) in enumerate(
            [(y, s, p) for y in (0, 1) for s in (0, 1, 2) for p in (0, 1)], start=1
        )
    ]
    extracted = base / "waterbirds" / "extracted"
    fx.write_members(fx.waterbirds_members(image_size=4, rows=rows), extracted)
    build_index("waterbirds", extracted / fx.WATERBIRDS_LAYOUT, base / "waterbirds")
    # ImageNet-R: <wnid>/cartoon_k.jpg and art_k.jpg -> the real adapter
    classes = {
        wnid: [f"cartoon_{k}.jpg" for k in range(n_cartoon)]
        + [f"art_{k}.jpg" for k in range(n_art)]
        for wnid, (n_cartoon, n_art) in IN_R.items()
    }
    extracted = base / "imagenet_r" / "extracted"
    fx.write_members(fx.imagenet_r_members(image_size=4, classes=classes), extracted)
    build_index("imagenet_r", extracted / "imagenet-r", base / "imagenet_r")
    return base


SPEC = {
    "components": [
        {"dataset": "waterbirds"},
        {"dataset": "imagenet_r", "top_classes": 2, "count_files": "cartoon_*"},
    ]
}


def _roots(base: Path) -> dict[str, Path]:
    return {n: base / n for n in ("waterbirds", "imagenet_r")}


def test_top_classes_counts_matching_files_ties_to_lower_label():
    idx = pd.DataFrame(
        {
            "path": ["a/cartoon_1.jpg", "a/art.jpg", "b/cartoon_2.jpg", "c/x.jpg"],
            "label": [0, 0, 1, 2],
        }
    )
    assert top_classes(idx, 2, "cartoon_*") == [0, 1]  # 1 each; class 2 has none
    assert top_classes(idx, 1) == [0]  # 2 files
    with pytest.raises(DeriveError, match="fewer than 3 classes have a matching file"):
        top_classes(idx, 3, "cartoon_*")


def test_waterbirds_plus_imagenet_r(resources):
    out = resources / "waterbirds_imagenet_r"
    build_derived("waterbirds_imagenet_r", SPEC, _roots(resources), out)
    df, meta = read_index(out)
    validate_index(df, meta, out)  # every path resolves from the derived folder
    # the two classes with the most cartoon files (3 and 2), in wnid order, after the birds
    assert meta["classes"] == ["landbird", "waterbird", "n01484850", "n01494475"]
    assert classifier_class_names(meta) == [
        "landbird",
        "waterbird",
        "great white shark",
        "hammerhead shark",
    ]
    inr = df[df["image_id"].str.startswith("imagenet_r/")]
    assert len(inr) == 3 + 2 + 1 and set(inr["label"]) == {2, 3}
    assert (inr["split"] == "test").all() and (inr["group"] == -1).all()
    assert (inr["attr_place"] == -1).all()
    assert inr["path"].str.startswith("../imagenet_r/extracted/imagenet-r/").all()
    # Waterbirds keeps its 4 groups, their ids, names and minority groups
    wb, wb_meta = read_index(resources / "waterbirds")
    birds = df[df["image_id"].str.startswith("waterbirds/")].reset_index(drop=True)
    assert birds["group"].tolist() == wb["group"].tolist()
    assert birds["label"].tolist() == wb["label"].tolist()
    assert meta["group_names"] == [f"waterbirds: {g}" for g in wb_meta["group_names"]]
    assert meta["minority_groups"] == wb_meta["minority_groups"]
    assert meta["spurious_attribute"] == "place" and meta["group_by"] == []
    assert meta["splits"] == {"train": 4, "val": 4, "test": 4 + 6}
    assert [c["dataset"] for c in meta["components"]] == ["waterbirds", "imagenet_r"]
    assert json.loads((out / "dataset.json").read_text())["classes"] == meta["classes"]


def test_class_list_and_split_filter(resources):
    spec = {
        "components": [
            {"dataset": "imagenet_r", "classes": ["n01496331", "n01443537"], "splits": ["test"]},
        ]
    }
    df, meta = derive_index("x", spec, _roots(resources), resources / "x")
    assert meta["classes"] == ["n01443537", "n01496331"]  # dataset order, not list order
    assert np.bincount(df["label"]).tolist() == [5, 5]


def test_holdout_moves_per_class_rows_seeded():
    df = pd.DataFrame({"label": [0] * 5 + [1] * 4, "split": ["test"] * 9})
    a = holdout_split(df, 2, "test", "train", seed=3)
    assert a.groupby("label")["split"].apply(lambda s: int((s == "train").sum())).tolist() == [2, 2]
    assert a["split"].tolist() == holdout_split(df, 2, "test", "train", seed=3)["split"].tolist()
    assert a["split"].tolist() != holdout_split(df, 2, "test", "train", seed=4)["split"].tolist()
    with pytest.raises(DeriveError, match="class 1 has 4 rows in split 'test', 5 needed"):
        holdout_split(df, 5, "test", "train")


def test_derived_with_holdout_validates(resources):
    spec = {
        "components": [{"dataset": "imagenet_r", "top_classes": 3}],
        "holdout": {"per_class": 1, "from_split": "test", "to_split": "train", "seed": 0},
    }
    out = resources / "top3"
    build_derived("top3", spec, _roots(resources), out)
    df, meta = read_index(out)
    # most files: n01443537 (5), n01496331 (5), then a tie at 3 -> the lower label n01484850
    assert meta["classes"] == ["n01443537", "n01484850", "n01496331"]
    assert meta["splits"] == {"test": 10, "train": 3} and meta["holdout"]["per_class"] == 1


def test_duplicate_class_names_are_refused(resources):
    spec = {"components": [{"dataset": "imagenet_r"}, {"dataset": "imagenet_r"}]}
    with pytest.raises(DeriveError, match="class name 'n01443537'.*already a class"):
        derive_index("x", spec, _roots(resources) | {"imagenet_r": resources / "imagenet_r"}, "x")


def test_component_in_another_class_space_is_refused(resources, tmp_path):
    df, meta = read_index(resources / "imagenet_r")
    meta = {**meta, "classifier_classes": "imagenet_1k"}
    write_index(df, meta, tmp_path / "ca", check_files=False)
    spec = {"components": [{"dataset": "ca"}]}
    with pytest.raises(DeriveError, match="classified among imagenet_1k classes"):
        derive_index("x", spec, {"ca": tmp_path / "ca"}, tmp_path / "x")


def test_nothing_is_written_when_the_spec_fails(resources):
    out = resources / "bad"
    spec = {"components": [{"dataset": "imagenet_r", "classes": ["n09999999"]}]}
    with pytest.raises(DeriveError, match="not among its classes"):
        build_derived("bad", spec, _roots(resources), out)
    assert not out.exists()
