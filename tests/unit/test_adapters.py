"""Adapters (raw layout -> dataset index) and index validation, on tiny layouts made by the
fixture builders of ``clipbias.data.fixtures`` (the rehearsal's datasets) from hand-made rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbias.data import fixtures as fx
from clipbias.data.adapters import (
    AdapterError,
    build_index,
    celeba,
    get_adapter,
    imagenet_a,
    imagenet_r,
    place_category,
    waterbirds,
)
from clipbias.data.index import IndexValidationError, read_index, validate_index, write_index
from clipbias.data.registry import load_registry
from clipbias.labels import classifier_class_names

REPO = Path(__file__).resolve().parents[2]


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value % 256, 0, 0)).save(path)


# --------------------------------------------------------------------------- waterbirds

WB_ROWS = [
    # img_id, img_filename, y, split, place, place_filename
    (1, "001.Black_footed_Albatross/a1.jpg", 1, 0, 1, "/o/ocean/00000001.jpg"),
    (2, "001.Black_footed_Albatross/a2.jpg", 1, 0, 0, "/b/bamboo_forest/00000002.jpg"),
    (3, "002.Laysan_Albatross/b1.jpg", 1, 1, 1, "/l/lake/natural/00000003.jpg"),
    (4, "010.Red_winged_Blackbird/c1.jpg", 0, 0, 0, "/f/forest/broadleaf/00000004.jpg"),
    (5, "010.Red_winged_Blackbird/c2.jpg", 0, 0, 1, "/o/ocean/00000005.jpg"),
    (6, "010.Red_winged_Blackbird/c3.jpg", 0, 1, 0, "/b/bamboo_forest/00000006.jpg"),
    (7, "011.Rusty_Blackbird/d1.jpg", 0, 2, 1, "/l/lake/natural/00000007.jpg"),
    (8, "011.Rusty_Blackbird/d2.jpg", 1, 2, 0, "/f/forest/broadleaf/00000008.jpg"),
]


@pytest.fixture
def wb_source(tmp_path) -> Path:
    fx.write_members(fx.waterbirds_members(image_size=4, rows=WB_ROWS), tmp_path / "extracted")
    return tmp_path / "extracted" / "waterbird_complete95_forest2water2"


def test_place_category():
    assert place_category("/b/bamboo_forest/00000002.jpg") == "bamboo_forest"
    assert place_category("/f/forest/broadleaf/00000004.jpg") == "forest"
    assert place_category("/l/lake/natural/x.jpg") == "lake"
    assert place_category("/o/ocean/x.jpg") == "ocean"
    assert place_category("x.jpg") == ""


def test_waterbirds_index(wb_source):
    df, meta = waterbirds(wb_source, wb_source)
    validate_index(df, meta, wb_source)
    assert df["image_id"].tolist() == [str(r[0]) for r in WB_ROWS]
    assert df["path"].tolist() == [r[1] for r in WB_ROWS]
    assert df["split"].tolist() == [
        "train",
        "train",
        "val",
        "train",
        "train",
        "val",
        "test",
        "test",
    ]
    y = np.array([r[2] for r in WB_ROWS])
    place = np.array([r[4] for r in WB_ROWS])
    np.testing.assert_array_equal(df["label"], y)
    np.testing.assert_array_equal(df["attr_place"], place)
    np.testing.assert_array_equal(df["group"], 2 * y + place)
    cats = meta["attributes"]["place_category"]
    assert cats == ["bamboo_forest", "forest", "lake", "ocean"]
    assert [cats[i] for i in df["attr_place_category"]] == [
        "ocean",
        "bamboo_forest",
        "lake",
        "forest",
        "ocean",
        "bamboo_forest",
        "lake",
        "forest",
    ]
    assert meta["classes"] == ["landbird", "waterbird"]
    assert meta["attributes"]["place"] == ["land", "water"]
    assert meta["minority_groups"] == [1, 2]
    assert meta["group_by"] == ["label", "place"]
    assert meta["splits"] == {"train": 4, "val": 2, "test": 2}


def test_build_index_from_registry_entry_with_paths_into_extraction(wb_source, tmp_path):
    entry = load_registry(REPO / "config" / "datasets.yaml")["waterbirds"]
    dataset_root = tmp_path  # resources/datasets/waterbirds/ in the pipeline
    out = build_index(entry, wb_source, dataset_root)

    assert out == dataset_root / "index.parquet"
    schema = pq.read_schema(out)
    assert schema.field("image_id").type == pa.string()
    assert schema.field("path").type == pa.string()
    assert schema.field("label").type == pa.int64()
    assert schema.field("group").type == pa.int64()
    assert schema.field("attr_place").type == pa.int64()
    assert schema.field("attr_place_category").type == pa.int64()
    df, meta = read_index(dataset_root)
    assert df["path"].iloc[0] == "extracted/waterbird_complete95_forest2water2/" + WB_ROWS[0][1]
    assert all((dataset_root / p).is_file() for p in df["path"])
    assert meta["name"] == "waterbirds"
    validate_index(df, meta, dataset_root)


def test_waterbirds_bad_metadata(wb_source):
    df = pd.read_csv(wb_source / "metadata.csv")
    df.loc[0, "split"] = 7
    df.to_csv(wb_source / "metadata.csv", index=False)
    with pytest.raises(AdapterError, match="column 'split' must be 0/1/2"):
        waterbirds(wb_source, wb_source)
    (wb_source / "metadata.csv").unlink()
    with pytest.raises(AdapterError, match="metadata.csv not found"):
        waterbirds(wb_source, wb_source)


# --------------------------------------------------------------------------- celeba

CELEBA_ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]
CELEBA_ROWS = [
    # file, shadow, blond, male, young, partition
    ("000001.jpg", -1, -1, -1, 1, 0),  # not blond female   -> group 0
    ("000002.jpg", 1, -1, 1, 1, 0),  # not blond male       -> group 1
    ("000003.jpg", -1, 1, -1, -1, 0),  # blond female       -> group 2
    ("000004.jpg", -1, -1, -1, 1, 0),  # group 0
    ("000005.jpg", -1, -1, 1, 1, 0),  # group 1
    ("000006.jpg", -1, 1, -1, 1, 0),  # group 2
    ("000007.jpg", -1, 1, 1, 1, 0),  # blond male (rare)    -> group 3
    ("000008.jpg", -1, 1, 1, -1, 1),  # val, group 3
    ("000009.jpg", -1, -1, -1, -1, 2),  # test, group 0
    ("000010.jpg", -1, -1, -1, 1, 0),  # group 0
    ("000011.jpg", -1, -1, 1, 1, 0),  # group 1
    ("000012.jpg", -1, -1, -1, 1, 0),  # group 0
    ("000013.jpg", -1, -1, 1, 1, 0),  # group 1
]


@pytest.fixture
def celeba_source(tmp_path) -> Path:
    src = tmp_path / "extracted"
    fx.write_members(
        fx.celeba_members(image_size=4, rows=CELEBA_ROWS, attributes=CELEBA_ATTRS), src
    )
    return src


def test_celeba_default_blond_male(celeba_source):
    df, meta = celeba(celeba_source, celeba_source)
    validate_index(df, meta, celeba_source)
    assert df["path"].iloc[0] == "img_align_celeba/000001.jpg"
    assert df["split"].tolist() == ["train"] * 7 + ["val", "test"] + ["train"] * 4
    assert df["label"].tolist() == [0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert df["attr_male"].tolist() == [0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1]
    assert df["group"].tolist() == [0, 1, 2, 0, 1, 2, 3, 3, 0, 0, 1, 0, 1]
    assert meta["attributes"] == {"male": ["female", "male"]}
    assert meta["group_names"][3] == "blond_hair male"
    assert meta["minority_groups"] == [3]  # train counts [4, 4, 2, 1]
    assert meta["splits"] == {"train": 11, "val": 1, "test": 1}


def test_celeba_configurable_target(celeba_source):
    df, meta = celeba(
        celeba_source, celeba_source.parent, target="Young", extra_attributes=["Blond_Hair"]
    )
    validate_index(df, meta, celeba_source.parent)
    assert df["label"].tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert df["path"].iloc[0] == "extracted/img_align_celeba/000001.jpg"
    assert meta["classes"] == ["not_young", "young"]
    assert set(meta["attributes"]) == {"male", "blond_hair"}
    assert df["attr_blond_hair"].tolist() == [0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    with pytest.raises(AdapterError, match="attribute 'Smiling' not in list_attr_celeba.txt"):
        celeba(celeba_source, celeba_source, target="Smiling")


# --------------------------------------------------------------------------- ImageNet-R / -A


@pytest.fixture
def folder_source(tmp_path) -> Path:
    classes = {
        w: [f"{w}_{j}.jpg" for j in range(2)] for w in ["n01443537", "n01484850", "n01494475"]
    }
    fx.write_members(fx.imagenet_r_members(image_size=4, classes=classes), tmp_path)
    src = tmp_path / "imagenet-r"
    (src / "README.txt").write_text("not a class")
    (src / "n01443537" / "notes.txt").write_text("not an image")
    return src


@pytest.mark.parametrize("adapter", [imagenet_r, imagenet_a])
def test_image_folder_adapters(folder_source, adapter):
    df, meta = adapter(folder_source, folder_source)
    validate_index(df, meta, folder_source)
    assert meta["classes"] == ["n01443537", "n01484850", "n01494475"]
    assert df["label"].tolist() == [0, 0, 1, 1, 2, 2]
    assert df["path"].iloc[0] == "n01443537/n01443537_0.jpg"
    assert (df["split"] == "test").all() and (df["group"] == -1).all()
    assert meta["attributes"] == {} and meta["splits"] == {"test": 6}
    # wnids -> ImageNet-1k indices and readable prompt names (not "a photo of a n01443537")
    assert meta["imagenet_1k_indices"] == [1, 2, 4]
    assert meta["class_prompt_names"] == ["goldfish", "great white shark", "hammerhead shark"]
    assert classifier_class_names(meta) == meta["class_prompt_names"]


def test_image_folder_keeps_folder_names_when_they_are_not_wnids(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        _png(tmp_path / "src" / name / "a.jpg", k)
    _, meta = imagenet_r(tmp_path / "src", tmp_path / "src")
    assert "class_prompt_names" not in meta and "imagenet_1k_indices" not in meta
    assert classifier_class_names(meta) == ["cat", "dog"]


def test_image_folder_refuses_a_full_class_set_that_is_not_the_published_one(tmp_path):
    from clipbias.data.adapters import image_folder

    for k, wnid in enumerate(["n01443537", "n01484850"]):
        _png(tmp_path / "src" / wnid / "a.jpg", k)
    with pytest.raises(AdapterError, match="not the dataset's published class list"):
        image_folder(tmp_path / "src", tmp_path / "src", name="x", imagenet_1k_indices=[1, 3])


def test_imagenet_resources_agree():
    from clipbias.data.adapters import IMAGENET_R_1K_INDICES, imagenet_wnid_index
    from clipbias.labels import imagenet_class_names

    wnids = imagenet_wnid_index()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert len(imagenet_class_names()) == 1000
    assert wnids["n01443537"] == IMAGENET_R_1K_INDICES[0] == 1


def test_registry_adapters_resolve():
    assert get_adapter("imagenet_r") is imagenet_r
    with pytest.raises(AdapterError, match="no adapter named 'imagenet_x'"):
        get_adapter("imagenet_x")


# --------------------------------------------------------------------------- validation


@pytest.fixture
def good(wb_source):
    df, meta = waterbirds(wb_source, wb_source)
    return df, meta, wb_source


def _expect_error(df, meta, root, column):
    with pytest.raises(IndexValidationError) as exc:
        validate_index(df, meta, root)
    assert column in str(exc.value)
    return str(exc.value)


def test_validate_missing_column(good):
    df, meta, root = good
    _expect_error(df.drop(columns=["split"]), meta, root, "'split'")


def test_validate_duplicate_image_id(good):
    df, meta, root = good
    df.loc[1, "image_id"] = df.loc[0, "image_id"]
    msg = _expect_error(df, meta, root, "'image_id'")
    assert "unique" in msg


def test_validate_label_range(good):
    df, meta, root = good
    df.loc[0, "label"] = 2
    _expect_error(df, meta, root, "'label'")


def test_validate_label_dtype(good):
    df, meta, root = good
    df["label"] = df["label"].astype(float)
    msg = _expect_error(df, meta, root, "'label'")
    assert "integer" in msg


def test_validate_group_consistency(good):
    df, meta, root = good
    df.loc[0, "group"] = (df.loc[0, "group"] + 1) % 4
    msg = _expect_error(df, meta, root, "'group'")
    assert "group_by" in msg


def test_validate_attr_columns_match_meta(good):
    df, meta, root = good
    _expect_error(df.assign(attr_colour=0), meta, root, "'attr_colour'")
    _expect_error(df.drop(columns=["attr_place_category"]), meta, root, "'attr_place_category'")
    bad = df.copy()
    bad.loc[0, "attr_place_category"] = 4
    _expect_error(bad, meta, root, "'attr_place_category'")


def test_validate_files_exist_and_paths_relative(good):
    df, meta, root = good
    (root / df["path"].iloc[0]).unlink()
    msg = _expect_error(df, meta, root, "'path'")
    assert "not found" in msg
    validate_index(df, meta, root, check_files=False)
    df.loc[0, "path"] = "/abs/x.jpg"
    _expect_error(df, meta, None, "'path'")


def test_validate_split_counts_and_meta(good):
    df, meta, root = good
    _expect_error(df, {**meta, "splits": {"train": 1}}, root, "'split'")
    with pytest.raises(IndexValidationError, match="'spurious_attribute'"):
        validate_index(df, {**meta, "spurious_attribute": "colour"}, root)


def test_write_index_refuses_invalid_and_writes_nothing(good, tmp_path):
    df, meta, root = good
    df.loc[0, "label"] = 9
    out = tmp_path / "ds"
    with pytest.raises(IndexValidationError):
        write_index(df, meta, out)
    assert not (out / "index.parquet").exists()
