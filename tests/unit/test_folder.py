"""Your own images (``kind: folder``, clipbias.data.folder): the example folder, every check of
the folder and its index table, and the dataset folder it becomes."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from clipbias.data.example_folder import ATTRIBUTES, CLASSES, example_config, write_example_folder
from clipbias.data.folder import (
    FolderDatasetError,
    build_folder_dataset,
    image_kind,
    read_table,
    scan_folder,
)
from clipbias.data.index import read_index, validate_index


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own") / "my_images"
    write_example_folder(out, n_train=16, n_val=40, n_test=16, seed=1)
    return out


def _folder(root: Path, **over) -> dict:
    return {**example_config(str(root), "x.safetensors")["datasets"][0]["folder"], **over}


@pytest.fixture
def copy(example, tmp_path) -> Path:
    dest = tmp_path / "my_images"
    shutil.copytree(example, dest)
    return dest


def _rewrite(root: Path, edit) -> None:
    """Rewrite index.csv with ``edit(rows) -> (columns, rows)``."""
    columns, rows = read_table(root / "index.csv")
    columns, rows = edit(columns, rows)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_example_folder_has_the_planted_layout(example):
    """Val follows the benchmark's 95 % class-background agreement (2 of 40 images per class
    conflict), test is balanced, train's plain drawings have no background (empty cell)."""
    df = pd.read_csv(example / "index.csv", keep_default_na=False)
    assert list(df.columns) == ["image", "split", "label", "background", "colour"]
    assert df["split"].value_counts().to_dict() == {"train": 16, "val": 40, "test": 16}
    val = df[df["split"] == "val"]
    counts = val.groupby(["label", "background"]).size().to_dict()
    assert counts == {
        ("circle", "land"): 19,
        ("circle", "water"): 1,
        ("triangle", "land"): 1,
        ("triangle", "water"): 19,
    }
    assert (df.loc[df["split"] == "train", "background"] == "").any()
    assert all(image_kind(example / p) == "PNG" for p in df["image"])


def test_scan_resolves_classes_attributes_groups(example):
    scan = scan_folder("shapes", _folder(example), splits=["val", "test"], locate_split="val")
    assert scan.classes == CLASSES and scan.attributes == ATTRIBUTES
    # groups = label x background (spurious attribute), mixed radix as dataset.json group_by
    assert scan.group_by == ["label", "background"]
    assert scan.group_names == [
        "circle / land",
        "circle / water",
        "triangle / land",
        "triangle / water",
    ]
    df = pd.read_csv(example / "index.csv", keep_default_na=False)
    for i in range(len(df)):
        bg = df.loc[i, "background"]
        want = -1 if not bg else 2 * CLASSES.index(df.loc[i, "label"]) + ["land", "water"].index(bg)
        assert scan.groups[i] == want
    # minority: groups below half the mean size of the locate split (1 and 19 of mean 10)
    assert scan.minority_groups == [1, 2]


def test_build_writes_the_standard_dataset_folder(example, tmp_path):
    root = tmp_path / "results/exp/data/shapes"
    build_folder_dataset(
        "shapes", _folder(example), root, splits=["val", "test"], locate_split="val"
    )
    df, meta = read_index(root)
    validate_index(df, meta, root)  # every path leads from the dataset folder to an image
    assert meta["classes"] == CLASSES and meta["attributes"] == ATTRIBUTES
    assert meta["spurious_attribute"] == "background" and meta["protected_attribute"] == "colour"
    assert meta["splits"] == {"train": 16, "val": 40, "test": 16}
    assert "class_prompt_names" not in meta  # the class names are the prompts
    assert not any(p.startswith("/") for p in df["path"])
    src = pd.read_csv(example / "index.csv", keep_default_na=False)
    assert list(df["image_id"]) == list(src["image"])
    assert (root / df["path"].iloc[0]).resolve() == (example / src["image"].iloc[0]).resolve()
    assert list(df["label"]) == [CLASSES.index(c) for c in src["label"]]
    assert json.loads((root / "dataset.json").read_text())["minority_groups"] == [1, 2]


def test_integer_labels_prompt_names_and_a_group_column(copy, tmp_path):
    def edit(columns, rows):
        for r in rows:
            r["label"] = str(CLASSES.index(r["label"]))
            r["group"] = r["colour"] if r["split"] != "train" else ""
        return [*columns, "group"], rows

    _rewrite(copy, edit)
    folder = _folder(copy, prompt_names=["round shape", "pointed shape"], spurious_attribute="")
    root = tmp_path / "ds"
    build_folder_dataset("shapes", folder, root, splits=["val"])
    df, meta = read_index(root)
    assert meta["class_prompt_names"] == ["round shape", "pointed shape"]
    assert meta["group_names"] == ["red", "yellow"] and meta["group_by"] == []
    assert set(df.loc[df["split"] == "train", "group"]) == {-1}


def _error(folder: dict, **kw) -> str:
    with pytest.raises(FolderDatasetError) as err:
        scan_folder("shapes", folder, splits=kw.pop("splits", ["val", "test"]), **kw)
    msg = str(err.value)
    assert len(msg.splitlines()) <= 3, msg
    return msg


def test_missing_folder_and_index(copy):
    msg = _error(_folder(copy, path=str(copy / "nope")))
    assert "folder" in msg and "nope" in msg and "not found" in msg
    msg = _error(_folder(copy, index=str(copy / "labels.csv")))
    assert "labels.csv not found" in msg and "image, split, label" in msg
    msg = _error(_folder(copy, path=""))
    assert "folder.path is empty" in msg


def test_unknown_and_missing_columns(copy):
    _rewrite(copy, lambda c, r: ([x if x != "colour" else "color" for x in c],
                                 [{("color" if k == "colour" else k): v for k, v in x.items()}
                                  for x in r]))  # fmt: skip
    msg = _error(_folder(copy))
    assert "index.csv" in msg and "unknown column 'color'" in msg and "'colour'" in msg
    _rewrite(copy, lambda c, r: ([x for x in c if x != "label"], r))
    msg = _error(_folder(copy))
    assert "missing column(s) ['label']" in msg


def test_a_split_without_images(copy):
    msg = _error(_folder(copy), splits=["validation", "test"])
    assert "split 'validation' has no images" in msg and "val (40)" in msg
    assert "index.csv" in msg


def test_a_label_without_a_class_name(copy):
    msg = _error(_folder(copy, classes=["circle"]))
    assert "label 'triangle'" in msg and "folder.classes" in msg
    assert re.search(r"\(lines \d+, \d+, \d+ and \d+ more\)", msg)

    def typo(columns, rows):
        rows[3]["label"] = "circel"
        return columns, rows

    _rewrite(copy, typo)
    msg = _error(_folder(copy))
    assert "label 'circel' (line 5)" in msg and "did you mean 'circle'" in msg
    _rewrite(copy, lambda c, r: (c, [{**x, "label": "2" if i == 0 else "0"} for i, x in
                                     enumerate(r)]))  # fmt: skip
    msg = _error(_folder(copy))
    assert "label 2 (line 2) has no class name" in msg


def test_an_attribute_value_not_in_the_config(copy):
    msg = _error(_folder(copy, attributes=[{"name": "background", "values": ["land"]},
                                           {"name": "colour", "values": ["red", "yellow"]}]))  # fmt: skip
    assert "background value 'water'" in msg and "add it there or fix the rows" in msg


def test_missing_and_unreadable_images(copy):
    first = read_table(copy / "index.csv")[1][0]["image"]
    (copy / first).unlink()
    msg = _error(_folder(copy))
    assert "1 image(s) not found" in msg and first in msg and "line 2" in msg
    (copy / first).write_text("not an image\n")
    msg = _error(_folder(copy))
    assert "is not an image file" in msg and first in msg and "line 2" in msg
    # the file checks can be left out (a cluster job parsing the workflow again)
    scan_folder("shapes", _folder(copy), splits=["val"], check_files=False)


def test_a_truncated_image_stops_the_dataset_rule(copy, tmp_path):
    """A PNG cut in half starts like a PNG (the start-up check passes) but cannot be
    decoded: rule prepare_folder_dataset names it."""
    first = read_table(copy / "index.csv")[1][0]["image"]
    data = (copy / first).read_bytes()
    (copy / first).write_bytes(data[: len(data) // 2])
    scan_folder("shapes", _folder(copy), splits=["val"])
    with pytest.raises(FolderDatasetError, match=rf"{re.escape(first)} \(line 2\) cannot be read"):
        build_folder_dataset("shapes", _folder(copy), tmp_path / "ds", splits=["val"])
    assert not (tmp_path / "ds" / "index.parquet").exists()


def test_parquet_index(copy, tmp_path):
    df = pd.read_csv(copy / "index.csv", keep_default_na=False)
    df.to_parquet(copy / "index.parquet")
    scan = scan_folder("shapes", _folder(copy, index=str(copy / "index.parquet")), splits=["val"])
    assert scan.split_counts() == {"train": 16, "val": 40, "test": 16}
    msg = _error(_folder(copy, index=str(copy / "index.parquet"), classes=["circle", "square"]))
    assert re.search(r"\(rows \d+, \d+, \d+ and \d+ more\)", msg)


def test_example_config_is_the_one_in_the_docs():
    """docs/OWN_DATA.md shows the experiment file that its command
    ``python -m clipbias.data.example_folder my_images`` writes (the block sits in a list
    item: indented)."""
    import textwrap

    from clipbias.data.example_folder import TRAINED

    text = (REPO / "docs/OWN_DATA.md").read_text()
    assert "example_folder my_images\n" in text and f"snakemake -c2 {TRAINED}\n" in text
    block = re.search(r"```yaml\n( *experiment: my_images\n.*?) *```", text, re.S).group(1)
    shown = yaml.safe_load(textwrap.dedent(block))
    assert shown == example_config("my_images", TRAINED)
