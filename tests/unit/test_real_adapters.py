"""CounterAnimal, GenderBias-VL, FairFace and FACET adapters on tiny archives in the real layout.

Each test builds the dataset's files with the fixture builders of ``clipbias.data.fixtures``
(the code that makes the rehearsal's datasets) from a hand-made layout, packs them into the
registry entry's raw files (``raw_files``: real file names and annotation columns), serves
them over loopback HTTP (FACET: placed by hand, as the gated dataset requires), fetches them
with checksum verification through ``fetch_dataset`` using the registry entry's filenames,
layout and adapter options, indexes them and validates the index contract.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from loopback_http import serve, sha256_bytes
from PIL import Image

from clipbias.data import fixtures as fx
from clipbias.data.adapters import (
    GENDERBIAS_LOCATE_OCCUPATIONS,
    AdapterError,
    build_index,
    celeba_protocol_view,
    facet_presentation,
    get_adapter,
    load_facet_professions,
    occupation_counterparts,
    stratified_split,
)
from clipbias.data.crops import CropError, apply_crop, crop_boxes, enlarge_box, row_box
from clipbias.data.download import GatedDatasetError, fetch_dataset, read_lock
from clipbias.data.index import IndexValidationError, read_index, validate_index
from clipbias.data.registry import DatasetEntry, load_registry

REPO = Path(__file__).resolve().parents[2]
FAST = {"retries": 0, "backoff": 0.0, "timeout": 5, "progress": False}


@pytest.fixture(scope="module")
def registry() -> dict[str, DatasetEntry]:
    return load_registry(REPO / "config" / "datasets.yaml")


@pytest.fixture
def server():
    with serve() as state:
        yield state


def _image(size=(4, 4), value: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value % 256, 10, 20)).save(buf, format=fmt)
    return buf.getvalue()


def _served(entry: DatasetEntry, server, files: dict[str, bytes]) -> DatasetEntry:
    """The registry entry with every file served from the loopback server, sha256 pinned."""
    specs = []
    for f in entry.files:
        data = files[f.filename]
        server.files["/" + f.filename] = data
        specs.append(
            dataclasses.replace(
                f,
                url=f"{server.base}/{f.filename}",
                size=len(data),
                sha256=sha256_bytes(data),
                sha256_source="test fixture",
                md5=None,
            )
        )
    return dataclasses.replace(entry, files=tuple(specs), manual_steps=None, gated=False)


def _fetch_and_index(entry: DatasetEntry, tmp_path: Path, **options):
    base = tmp_path / "resources" / "datasets" / entry.name
    lock = tmp_path / "config" / "datasets.lock.json"
    root = fetch_dataset(entry, base / "raw", base / "extracted", lock, **FAST)
    out = build_index(entry, root, base, **options)
    df, meta = read_index(base)
    validate_index(df, meta, base)
    assert out == base / "index.parquet"
    return df, meta, base


def test_get_adapter_knows_all_eight_datasets(registry):
    for name, entry in registry.items():
        if not entry.derived:  # built by clipbias.data.derive, no adapter
            assert callable(get_adapter(entry.adapter)), name
    with pytest.raises(AdapterError, match="no adapter named 'nope'; known: celeba"):
        get_adapter("nope")


# --------------------------------------------------------------------------- CounterAnimal


CA_CLASSES = [
    fx.CounterAnimalClass(100, "black swan", "water", "grass", 2, 1),
    fx.CounterAnimalClass(10, "brambling", "tree", "sky", 1, 2),
    fx.CounterAnimalClass(2, "great white shark", "water", "sand", 1, 1),
]


def test_counteranimal_fixture(registry, server, tmp_path):
    files = fx.counteranimal_members(
        image_size=4, classes=CA_CLASSES, names={2: "great white shark", 10: "brambling"}
    )
    entry = _served(
        registry["counteranimal"], server, fx.raw_files(registry["counteranimal"], files)
    )
    df, meta, base = _fetch_and_index(entry, tmp_path)

    # classes ordered by ImageNet index (2 < 10 < 100), label = position among them
    assert meta["classes"] == ["great white shark", "brambling", "black swan"]
    assert meta["imagenet_1k_indices"] == [2, 10, 100]
    assert meta["classifier_classes"] == "imagenet_1k"
    assert meta["attributes"]["background"] == ["common", "counter"]
    assert meta["attributes"]["background_name"] == ["grass", "sand", "sky", "tree", "water"]
    assert meta["splits"] == {"common": 4, "counter": 4}
    assert df["path"].iloc[0] == "extracted/LAION-final/2 great white shark/common-water/000.jpg"
    swan = df[df["label"] == 2]
    assert swan["split"].tolist() == ["common", "common", "counter"]
    assert swan["attr_background"].tolist() == [0, 0, 1]
    names = meta["attributes"]["background_name"]
    assert [names[i] for i in swan["attr_background_name"]] == ["water", "water", "grass"]
    assert (df["group"] == 2 * df["label"] + df["attr_background"]).all()
    assert meta["minority_groups"] == [1, 3, 5]
    assert read_lock(tmp_path / "config" / "datasets.lock.json") == {}  # pinned, not recorded


def test_counteranimal_needs_common_and_counter(tmp_path):
    src = tmp_path / "LAION-final"
    (src / "5 x" / "common-grass").mkdir(parents=True)
    (src / "5 x" / "common-grass" / "a.jpg").write_bytes(_image())
    with pytest.raises(AdapterError, match="exactly one subfolder whose name contains 'counter'"):
        get_adapter("counteranimal")(src, src)
    (src / "notaclass").mkdir()
    with pytest.raises(AdapterError, match="'<ImageNet index> <class name>'"):
        get_adapter("counteranimal")(src, src)


# --------------------------------------------------------------------------- GenderBias-VL

_pairs_csv = fx.genderbias_pairs_csv


def test_counterpart_rule_by_hand():
    # female share of the male-listed job / of the female-listed job, per row
    pairs = pd.read_csv(
        io.BytesIO(
            _pairs_csv(
                [
                    ("Lawyer", "Paralegal", 40.0, 85.0),
                    ("Lawyer", "Legal secretary", 40.0, 95.0),  # Lawyer -> highest: 95
                    ("Accountant", "Paralegal", 60.0, 85.0),
                    ("Accountant", "Legal secretary", 60.0, 85.0),  # tie 85/85 -> first row
                    ("Chief executive", "Paralegal", 30.0, 85.0),  # Paralegal -> lowest: 30
                ]
            )
        )
    )
    assert occupation_counterparts(pairs) == {
        "Lawyer": "Legal secretary",
        "Accountant": "Paralegal",
        "Chief executive": "Paralegal",
        "Paralegal": "Chief executive",
        "Legal secretary": "Lawyer",
    }
    with pytest.raises(AdapterError, match="missing column"):
        occupation_counterparts(pairs.drop(columns=["job_female_ratio"]))


GB_LAYOUT = {
    "Lawyer": {"female": 2, "male": 1},
    "Paralegal": {"female": 1, "male": 1},  # a locate occupation (Appendix C)
    "Accountant": {"female": 1, "male": 2},  # a locate occupation
    "Legal_secretary": {"female": 2},  # one gender only: dropped
    "Astronomer": {"female": 1, "male": 1},  # not in the pairing table: dropped
}


def test_genderbias_vl_fixture(registry, server, tmp_path):
    pairs = [
        ("Lawyer", "Paralegal", 40.0, 85.0),
        ("Lawyer", "Legal secretary", 40.0, 95.0),
        ("Accountant", "Paralegal", 60.0, 85.0),
    ]
    files = fx.genderbias_members(image_size=4, layout=GB_LAYOUT, pairs=pairs)
    entry = _served(
        registry["genderbias_vl"], server, fx.raw_files(registry["genderbias_vl"], files)
    )
    df, meta, base = _fetch_and_index(entry, tmp_path)

    classes = meta["classes"]
    assert classes == ["Accountant", "Lawyer", "Legal secretary", "Paralegal"]
    assert meta["attributes"]["gender"] == ["female", "male"]
    assert meta["attributes"]["counterpart"] == classes
    assert meta["candidate_columns"] == ["label", "attr_counterpart"]
    assert meta["counterparts"] == {
        "Accountant": "Paralegal",
        "Lawyer": "Legal secretary",
        "Paralegal": "Lawyer",
    }
    occ = [classes[i] for i in df["label"]]
    assert sorted(set(occ)) == ["Accountant", "Lawyer", "Paralegal"]
    assert "Paralegal" in GENDERBIAS_LOCATE_OCCUPATIONS
    assert "Accountant" in GENDERBIAS_LOCATE_OCCUPATIONS
    assert meta["splits"] == {"locate": 5, "test": 3}
    assert meta["locate_occupations"] == ["Accountant", "Paralegal"]
    lawyer = df[df["label"] == classes.index("Lawyer")]
    assert lawyer["split"].eq("test").all()
    assert sorted(lawyer["attr_gender"]) == [0, 0, 1]
    assert lawyer["attr_counterpart"].eq(classes.index("Legal secretary")).all()
    assert (df["group"] == 2 * df["label"] + df["attr_gender"]).all()
    row = df[df["image_id"] == "Lawyer/female/female_Lawyer_0.png"].iloc[0]
    assert row["path"] == "extracted/xl_generate_base/Lawyer/female/female_Lawyer_0.png"
    # the two-way classifier of every image: its occupation and the counterpart
    cand = df[meta["candidate_columns"]].to_numpy()
    assert cand.shape == (8, 2) and (cand[:, 0] != cand[:, 1]).all()


# --------------------------------------------------------------------------- FairFace

FAIRFACE_VAL = [
    ("val/1.jpg", "50-59", "Male", "East Asian", "True"),
    ("val/2.jpg", "more than 70", "Female", "Latino_Hispanic", "False"),
    ("val/3.jpg", "0-2", "Female", "Middle Eastern", "True"),
]


def _fairface_files(entry) -> dict[str, bytes]:
    rows = {"train": [("train/1.jpg", "20-29", "Male", "White", "False")], "val": FAIRFACE_VAL}
    return fx.raw_files(entry, fx.fairface_members(image_size=4, rows=rows))


def test_fairface_fixture(registry, server, tmp_path):
    entry = _served(registry["fairface"], server, _fairface_files(registry["fairface"]))
    df, meta, base = _fetch_and_index(entry, tmp_path)

    assert meta["splits"] == {"val": 3}  # validation CSV only (LTC protocol)
    assert df["path"].tolist() == [
        "extracted/val/1.jpg",
        "extracted/val/2.jpg",
        "extracted/val/3.jpg",
    ]
    attrs = meta["attributes"]
    assert len(attrs["age"]) == 9 and len(attrs["race"]) == 7
    assert [attrs["age"][i] for i in df["attr_age"]] == ["50-59", "more than 70", "0-2"]
    assert [attrs["gender"][i] for i in df["attr_gender"]] == ["male", "female", "female"]
    assert [attrs["race"][i] for i in df["attr_race"]] == [
        "east asian",
        "latino hispanic",
        "middle eastern",
    ]
    assert meta["classes"] == ["female", "male"]
    assert df["label"].tolist() == [1, 0, 0] and df["group"].tolist() == [1, 0, 0]
    assert len(meta["retrieval_concepts"]) == 10

    # both splits on request; a bad value names file, column and the expected values
    df2, meta2 = get_adapter("fairface")(base / "extracted", base, splits=["train", "val"])
    assert meta2["splits"] == {"train": 1, "val": 3}
    csv = base / "extracted" / "fairface_label_val.csv"
    csv.write_text(csv.read_text().replace("Male", "M"))
    with pytest.raises(AdapterError, match="column 'gender' has unknown value.*'M'"):
        get_adapter("fairface")(base / "extracted", base)


# --------------------------------------------------------------------------- FACET

_facet_row = fx.facet_row


FACET_ROWS = [
    _facet_row(11, "sa_1.jpg", "doctor", {"x": 10, "y": 5, "width": 20, "height": 10}, "masc", "middle"),
    _facet_row(12, "sa_1.jpg", "nurse", {"x": 0, "y": 0, "width": 40, "height": 30}, "fem", "young"),
    _facet_row(13, "sa_2.jpg", "student", {"x": 1, "y": 1, "width": 5, "height": 5}, "fem", "young"),
    _facet_row(14, "sa_2.jpg", "doctor", {"x": 35.5, "y": 20.2, "width": 10, "height": 5}, "fem", "older"),
    _facet_row(15, "sa_3.jpg", "nurse", {"x": 2, "y": 3, "width": 4, "height": 5}, "na", "na"),
    _facet_row(16, "sa_3.jpg", "disk_jockey", {"x": 5, "y": 5, "width": 10, "height": 10}, "nb", "young"),
]  # fmt: skip


def _facet_files() -> dict[str, bytes]:
    """annotations/annotations.csv and imgs_{1,2,3}/sa_{1,2,3}.jpg (40x30) of FACET_ROWS."""
    return fx.facet_members(rows=FACET_ROWS, image_shape=(40, 30))


def _facet_archives(entry) -> dict[str, bytes]:
    return fx.raw_files(entry, _facet_files())


def test_facet_is_gated_then_accepts_placed_archives(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the professions path is relative to the workflow root
    entry = registry["facet"]
    base = tmp_path / "resources" / "datasets" / "facet"
    raw, lock = base / "raw", tmp_path / "config" / "datasets.lock.json"
    with pytest.raises(GatedDatasetError) as exc:
        fetch_dataset(entry, raw, base / "extracted", lock, **FAST)
    msg = str(exc.value)
    assert "is gated" in msg and "https://facet.metademolab.com" in msg
    assert entry.manual_steps in msg
    archives = _facet_archives(entry)
    assert sorted(archives) == ["annotations.zip", "imgs_1.zip", "imgs_2.zip", "imgs_3.zip"]
    for name in archives:
        assert str(raw / name) in msg

    for name, data in archives.items():  # placed where the message says
        (raw / name).write_bytes(data)
    root = fetch_dataset(entry, raw, base / "extracted", lock, **FAST)
    assert read_lock(lock)["facet/annotations.zip"]["sha256"] == sha256_bytes(
        archives["annotations.zip"]
    )
    build_index(entry, root, base)
    df, meta = read_index(base)
    validate_index(df, meta, base)

    assert len(meta["classes"]) == 42 and meta["n_dropped_persons"] == 1  # the student
    assert df["image_id"].tolist() == ["11", "12", "14", "15", "16"]
    assert df["path"].tolist()[:3] == [
        "extracted/imgs_1/sa_1.jpg",
        "extracted/imgs_1/sa_1.jpg",
        "extracted/imgs_2/sa_2.jpg",
    ]
    classes = meta["classes"]
    assert [classes[i] for i in df["label"]] == [
        "doctor",
        "nurse",
        "doctor",
        "nurse",
        "disk_jockey",
    ]
    assert meta["class_prompt_names"][classes.index("disk_jockey")] == "disk jockey"
    assert meta["attributes"] == {
        "gender": ["feminine", "masculine", "non_binary"],
        "age": ["young", "middle", "older"],
    }
    assert df["attr_gender"].tolist() == [1, 0, 0, -1, 2]
    assert df["attr_age"].tolist() == [1, 0, 2, -1, 0]
    lab = df["label"].to_numpy()
    assert df["group"].tolist() == [3 * lab[0] + 1, 3 * lab[1], 3 * lab[2], -1, 3 * lab[4] + 2]
    # boxes enlarged by 10 % per side, rounded outwards, clipped to the 40x30 image
    boxes = crop_boxes(df)
    np.testing.assert_array_equal(
        boxes,
        [[8, 4, 32, 16], [0, 0, 40, 30], [34, 19, 40, 26], [1, 2, 7, 9], [4, 4, 16, 16]],
    )
    # the extractor's crop: open the row's image, cut the box
    row = df.iloc[2]
    with Image.open(base / row["path"]) as im:
        assert apply_crop(im.convert("RGB"), row_box(row)).size == (6, 7)
    assert set(df["split"]) <= {"locate", "evaluate"}
    assert meta["crop"]["columns"] == ["crop_x0", "crop_y0", "crop_x1", "crop_y1"]


def test_facet_full_image_mode_and_unknown_class(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    src = tmp_path / "facet"
    fx.write_members(_facet_files(), src)
    with pytest.raises(AdapterError, match="no person of the kept professions"):
        get_adapter("facet")(src, src, crop="full_single")  # every image has two persons
    rows = [dict(r) for r in FACET_ROWS if r["filename"] != "sa_3.jpg"] + [
        _facet_row(
            21, "sa_3.jpg", "doctor", {"x": 2, "y": 3, "width": 4, "height": 5}, "masc", "na"
        )
    ]
    pd.DataFrame(rows, columns=fx.FACET_COLUMNS).to_csv(
        src / "annotations/annotations.csv", index=False
    )
    df, meta = get_adapter("facet")(src, src, crop="full_single")
    validate_index(df, meta, src)
    assert df["image_id"].tolist() == ["21"]
    assert crop_boxes(df).tolist() == [[0, 0, 40, 30]]
    rows[0]["class1"] = "astronaut_pilot"
    pd.DataFrame(rows, columns=fx.FACET_COLUMNS).to_csv(
        src / "annotations/annotations.csv", index=False
    )
    with pytest.raises(AdapterError, match="'astronaut_pilot'.* not among the 52 FACET classes"):
        get_adapter("facet")(src, src)


def test_facet_profession_rule_has_42():
    rule = load_facet_professions(REPO / "config" / "facet_professions.yaml")
    assert len(rule["classes"]) == 52
    assert len(rule["dropped"]) == 10
    assert len(rule["professions"]) == 42
    assert sorted(rule["professions"]) == sorted(set(rule["classes"]) - set(rule["dropped"]))
    data = yaml.safe_load((REPO / "config" / "facet_professions.yaml").read_text())
    assert all(d["reason"] for d in data["dropped"])


# --------------------------------------------------------------------------- small pure parts


def test_facet_presentation_by_hand():
    counts = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 2], [0, 1, 0]])
    na = np.array([0, 0, 1, 0, 1, 1])
    # unique positive max above na -> its index; all zero, ties, or na as large -> -1
    assert facet_presentation(counts, na).tolist() == [1, 0, -1, -1, 2, -1]


def test_stratified_split_by_hand():
    strata = ["a"] * 4 + ["b"] * 3 + ["c"]
    s1 = stratified_split(strata, seed=0)
    assert (s1[:4] == "locate").sum() == 2  # even stratum: exactly half
    assert (s1[4:7] == "locate").sum() in (1, 2)  # odd: the extra row by a seeded coin
    assert set(s1) <= {"locate", "evaluate"}
    np.testing.assert_array_equal(s1, stratified_split(strata, seed=0))
    draws = {tuple(stratified_split(strata, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    big = stratified_split(["x"] * 1000 + ["y"] * 1000, seed=1)
    assert (big[:1000] == "locate").sum() == 500 and (big[1000:] == "locate").sum() == 500
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(strata, seed=0, fraction=1.5)


def test_enlarge_box_and_crop_by_hand():
    # 20x10 box at (10, 5): 2 px more left/right, 1 px more up/down
    assert enlarge_box(10, 5, 20, 10, 100, 100) == (8, 4, 32, 16)
    # fractional: floor the left/top edge, ceil the right/bottom edge; clip to the image
    assert enlarge_box(35.5, 20.2, 10, 5, 40, 30) == (34, 19, 40, 26)
    assert enlarge_box(0, 0, 10, 10, 10, 10, margin=0.0) == (0, 0, 10, 10)
    with pytest.raises(CropError, match="non-positive"):
        enlarge_box(0, 0, 0, 5, 10, 10)
    with pytest.raises(CropError, match="outside"):
        enlarge_box(50, 50, 5, 5, 10, 10)
    im = Image.new("RGB", (10, 8))
    assert apply_crop(im, (1, 2, 4, 8)).size == (3, 6)
    assert apply_crop(im, None) is im
    with pytest.raises(CropError, match="rebuild the dataset index"):
        apply_crop(im, (0, 0, 11, 8))


def test_index_validates_crop_columns(tmp_path):
    from clipbias.data.adapters import image_folder

    src = tmp_path / "imgs"
    (src / "c0").mkdir(parents=True)
    (src / "c0" / "a.png").write_bytes(_image())
    df, meta = image_folder(src, src, name="toy")
    validate_index(df.assign(crop_x0=0, crop_y0=0, crop_x1=2, crop_y1=2), meta, src)
    with pytest.raises(IndexValidationError, match="'crop_y1': missing"):
        validate_index(df.assign(crop_x0=0, crop_y0=0, crop_x1=2), meta, src)
    with pytest.raises(IndexValidationError, match="'crop_x0'.*0 <= crop_x0 < crop_x1"):
        validate_index(df.assign(crop_x0=3, crop_y0=0, crop_x1=2, crop_y1=2), meta, src)


def test_celeba_protocol_view_young_old():
    df = pd.DataFrame(
        {
            "image_id": [f"{i}.jpg" for i in range(6)],
            "path": [f"img_align_celeba/{i}.jpg" for i in range(6)],
            "split": ["train"] * 6,
            "label": [1, 0, 0, 1, 0, 0],  # Blond_Hair
            "group": [2, 1, 0, 3, 1, 1],
            "attr_male": [0, 1, 0, 1, 1, 1],
            "attr_young": [1, 1, 0, 0, 1, 0],
        }
    )
    meta = {
        "name": "celeba",
        "classes": ["not_blond_hair", "blond_hair"],
        "attributes": {"male": ["female", "male"], "young": ["not_young", "young"]},
        "group_by": ["label", "male"],
        "target": "Blond_Hair",
    }
    out, m = celeba_protocol_view(df, meta, "refineclip_young")
    validate_index(out, m)
    assert m["classes"] == ["old", "young"] and m["class_prompt_names"] == ["old", "young"]
    assert out["label"].tolist() == [1, 1, 0, 0, 1, 0]
    assert out["group"].tolist() == [2, 3, 0, 1, 3, 1]  # 2 * young + male
    assert out["attr_blond_hair"].tolist() == [1, 0, 0, 1, 0, 0]
    assert m["group_names"] == ["old female", "old male", "young female", "young male"]
    assert m["minority_groups"] == []  # train counts [1, 2, 1, 2]: none below half the mean
    back, m2 = celeba_protocol_view(out, m, "ltc_blond_hair")
    validate_index(back, m2)
    assert back["label"].tolist() == df["label"].tolist()
    assert back["group"].tolist() == df["group"].tolist()
    with pytest.raises(AdapterError, match="unknown CelebA protocol"):
        celeba_protocol_view(df, meta, "smiling")
