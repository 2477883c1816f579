"""Fixture datasets (clipbias.data.fixtures): every registry dataset's fixture-scale copy in its
real layout passes check_layout, is indexed by its real adapter, validates, and holds what
each protocol of the shipped experiment configs reads; the derived tasks build from them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from clipbias.data import fixtures as fx
from clipbias.data.adapters import (
    GENDERBIAS_LOCATE_OCCUPATIONS,
    IMAGENET_A_1K_INDICES,
    IMAGENET_R_1K_INDICES,
    build_index,
    celeba_protocol_view,
)
from clipbias.data.derive import build_derived, top_classes
from clipbias.data.download import check_layout, safe_extract
from clipbias.data.index import read_index, validate_index
from clipbias.data.registry import load_registry

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # unit tests: small images; the rehearsal uses the model's input size


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "config" / "datasets.yaml")


@pytest.fixture(scope="module")
def prepared(registry, tmp_path_factory):
    """resources/datasets/<name>/{extracted, index.parquet, dataset.json} of every fixture, as
    rules download_dataset (here: write_extracted) and prepare_dataset leave them."""
    base = tmp_path_factory.mktemp("resources") / "datasets"
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)  # FACET's profession list is relative to the workflow root
    out = {}
    try:
        for name in fx.FIXTURES:
            root = base / name
            extracted = fx.write_extracted(name, root / "extracted", image_size=SIZE, seed=3)
            build_index(registry[name], check_layout(registry[name], extracted), root)
            df, meta = read_index(root)
            validate_index(df, meta, root)
            out[name] = (df, meta, root)
    finally:
        mp.undo()
    return out


def test_every_registry_dataset_with_files_has_a_fixture(registry):
    own = {n for n, e in registry.items() if not e.derived}
    assert set(fx.FIXTURES) == own
    with pytest.raises(fx.FixtureError, match="derived datasets are built from"):
        fx.members("imagenet_a_top10")


@pytest.mark.parametrize("name", sorted(fx.FIXTURES))
def test_images_readable_at_the_requested_size(prepared, name):
    df, meta, root = prepared[name]
    side = SIZE * fx.FacetScale().image_factor if name == "facet" else SIZE
    fmt = {".jpg": "JPEG", ".png": "PNG"}
    for path in df["path"].drop_duplicates().iloc[::7]:
        with Image.open(root / path) as im:
            im.load()
            assert im.size == (side, side) and im.mode == "RGB"
            assert im.format == fmt[Path(path).suffix], path
    assert fx.fixture_info(root / "extracted")["dataset"] == name


def _cells(df: pd.DataFrame, *cols: str) -> dict:
    return {k: int(v) for k, v in df.groupby(list(cols)).size().items()}


def test_waterbirds(prepared):
    df, meta, _ = prepared["waterbirds"]
    s = fx.WaterbirdsScale()
    for split, counts in (("train", s.train), ("val", s.val), ("test", s.test)):
        part = df[df["split"] == split]
        assert np.bincount(part["group"], minlength=4).tolist() == list(counts), split
        cats = set(part["attr_place_category"])
        assert cats == {0, 1, 2, 3}, split  # bamboo_forest, forest, lake, ocean
    train = df[df["split"] == "train"]
    assert np.bincount(train["label"]).tolist() == [32, 32]  # >= 30 shots per class (Table 3)
    assert meta["minority_groups"] == [1, 2]  # LTC locates on them: 8 + 8 train images
    assert (df[df["split"] == "val"].groupby("group").size() >= 3).all()


def test_celeba_both_protocol_views(prepared):
    df, meta, _ = prepared["celeba"]
    s = fx.CelebAScale()
    for split, counts in (("train", s.train), ("val", s.val), ("test", s.test)):
        part = df[df["split"] == split]
        assert np.bincount(part["group"], minlength=4).tolist() == list(counts), split
        assert set(part["attr_young"]) == {0, 1}
    assert meta["minority_groups"] == [3]  # blond males: LTC's bias-conflicting group
    young, ymeta = celeba_protocol_view(df, meta, "refineclip_young")
    for split in ("train", "val", "test"):
        part = young[young["split"] == split]
        assert (np.bincount(part["group"], minlength=4) > 0).all(), split
    train = young[young["split"] == "train"]
    assert np.bincount(train["label"]).tolist() == [13, 13]  # >= 10 shots per class (Table 2)
    # the celeba_young entry: the same files through the adapter's protocol option
    ydf, ymeta2 = prepared["celeba_young"][:2]
    assert ymeta2["classes"] == ["old", "young"]
    assert ydf["group"].tolist() == young["group"].tolist()
    assert np.bincount(ydf[ydf["split"] == "train"]["label"]).min() >= 10


def test_counteranimal(prepared):
    from clipbias.labels import imagenet_class_names
    from clipbias.protocols import counteranimal_worst_classes

    df, meta, root = prepared["counteranimal"]
    names = imagenet_class_names()
    assert len(meta["classes"]) == 12
    assert meta["classes"] == [names[i] for i in meta["imagenet_1k_indices"]]
    for split in ("common", "counter"):
        assert df.loc[df["split"] == split, "label"].nunique() == 12
    lines = (root / "extracted/LAION-final/imagenet_names.txt").read_text().splitlines()
    assert len(lines) == 1000 and lines[100] == "100\tblack swan"
    # worst-10 classes from any predictions: 10 of the 12 present in both subsets
    rng = np.random.default_rng(0)
    com, cnt = df[df["split"] == "common"], df[df["split"] == "counter"]
    worst = counteranimal_worst_classes(
        rng.random(len(com)) < 0.5, com["label"], rng.random(len(cnt)) < 0.5, cnt["label"]
    )
    assert len(worst) == 10


def test_genderbias(prepared):
    from clipbias.methods.ltc import worst_gender_mask
    from clipbias.protocols import genderbias_top_occupations, retrieval_skew

    df, meta, _ = prepared["genderbias_vl"]
    classes = meta["classes"]
    both = df.groupby("label")["attr_gender"].nunique() == 2
    loc = {classes[c] for c in df.loc[df["split"] == "locate", "label"].unique() if both[c]}
    test = {classes[c] for c in df.loc[df["split"] == "test", "label"].unique() if both[c]}
    assert len(loc) == 11 and loc <= set(GENDERBIAS_LOCATE_OCCUPATIONS)
    assert len(test) == 11 and not test & set(GENDERBIAS_LOCATE_OCCUPATIONS)
    assert meta["locate_occupations"] == sorted(loc)
    # the one-gender occupation is dropped, but stays a class through the pairing table
    one = fx.GENDERBIAS_TEST_OCCUPATIONS[fx.GenderBiasScale().n_test]
    assert one in classes and classes.index(one) not in set(df["label"])
    # every occupation with images has a counterpart, another class, in its classifier
    for occ, other in meta["counterparts"].items():
        assert other in classes and other != occ
    assert (df["label"] != df["attr_counterpart"]).all()
    assert (df.groupby(["label", "attr_gender"]).size() >= 3).all()
    rng = np.random.default_rng(1)
    for split, k in (("locate", 10), ("test", 10)):
        part = df[df["split"] == split]
        correct = rng.random(len(part)) < 0.5
        mask = worst_gender_mask(correct, part["label"].to_numpy(), part["attr_gender"].to_numpy())
        assert part.loc[mask, "label"].nunique() == k  # LTC's locate set (§4.4)
        top = genderbias_top_occupations(correct, part["label"], part["attr_gender"])
        assert len(top) == k  # the protocol's top-10 bias
    t = df[df["split"] == "test"]
    skew = retrieval_skew(rng.random(len(t)), t["label"], t["attr_gender"])
    assert (skew["metric"] == "retrieval_skew").sum() == 4  # occupations with >= 10 images


def test_fairface(prepared):
    df, meta, _ = prepared["fairface"]
    assert meta["splits"] == {"val": 63}
    attrs = meta["attributes"]
    assert set(df["attr_age"]) == set(range(len(attrs["age"]))) and len(attrs["age"]) == 9
    assert set(df["attr_race"]) == set(range(7)) and set(df["attr_gender"]) == {0, 1}
    assert len(set(zip(df["attr_age"], df["attr_race"], strict=True))) == 63
    # the train CSV and its images serve the adapter's splits option
    from clipbias.data.adapters import fairface

    root = prepared["fairface"][2]
    both, _ = fairface(root / "extracted", root, splits=["train", "val"])
    validate_index(both.reset_index(drop=True), {**meta, "splits": None}, root)
    assert (both["split"] == "train").sum() == fx.FairFaceScale().n_train


def test_facet_halves_hold_every_cell_the_audit_reads(prepared):
    from clipbias.methods.audit import cav_head_scores, stereotyped_classes

    df, meta, _ = prepared["facet"]
    s = fx.FacetScale()
    classes = meta["classes"]
    assert len(classes) == 42 and meta["n_dropped_persons"] == len(s.dropped) * s.per_dropped
    assert not set(s.dropped) & set(classes)
    core = [classes.index(p) for p in s.professions]
    fem, masc = meta["attributes"]["gender"].index("feminine"), 1
    for half in ("locate", "evaluate"):
        part = df[df["split"] == half]
        for c in core:
            g = part.loc[part["label"] == c, "attr_gender"]
            assert (g == fem).sum() == 10 and (g == masc).sum() == 10, (half, classes[c])
    assert {-1, 2} <= set(df["attr_gender"]) and -1 in set(df["attr_age"])
    assert df.groupby("path").size().max() == s.persons_per_image  # several persons per image
    # the audit's statistics on the halves (METHODS §6.4, §6.10), with a random model
    rng = np.random.default_rng(2)
    loc, ev = df[df["split"] == "locate"], df[df["split"] == "evaluate"]
    proj = rng.normal(size=(len(loc), 1, 3))
    young, older = 0, 2
    gender = cav_head_scores(proj, [23], loc["attr_gender"], loc["label"], masc, fem, 10)
    assert (gender["n_classes_within"] == 4).all()
    age = cav_head_scores(proj, [23], loc["attr_age"], loc["label"], young, older, 10)
    assert (age["n_classes_within"] == 2).all() and age["d_within"].notna().all()
    pred = rng.integers(0, len(classes), len(ev))
    st = stereotyped_classes(pred, ev["label"], ev["attr_gender"], len(classes))
    assert st["eligible"].sum() == 4 and st["selected"].sum() == 4
    st_age = stereotyped_classes(pred, ev["label"], ev["attr_age"], len(classes))
    assert st_age["eligible"].sum() == 4


def test_imagenet_r_and_a(prepared):
    df, meta, _ = prepared["imagenet_r"]
    assert len(meta["classes"]) == 22
    assert set(meta["imagenet_1k_indices"]) <= set(IMAGENET_R_1K_INDICES)
    assert meta["class_prompt_names"][0] == "goldfish"
    cartoons = df["path"].str.contains("/cartoon_").groupby(df["label"]).sum()
    assert cartoons.tolist() == list(fx.ImageNetRScale().cartoon)
    top = top_classes(df, 18, "cartoon_*")
    # out: the two classes without cartoons and, of the seven with one, the two last labels
    assert set(range(22)) - set(top) == {3, 10, 18, 21}
    df, meta, _ = prepared["imagenet_a"]
    assert len(meta["classes"]) == 12
    assert set(meta["imagenet_1k_indices"]) <= set(IMAGENET_A_1K_INDICES)
    sizes = np.sort(np.bincount(df["label"]))[::-1]
    assert (sizes[:10] >= 12).all() and (sizes[10:] < 12).all()
    assert df["path"].str.contains(" ").all()  # file names with spaces reach the index


def test_derived_tasks_build_from_the_fixtures(prepared, registry, tmp_path):
    roots = {n: prepared[n][2] for n in ("waterbirds", "imagenet_r", "imagenet_a")}
    out = roots["waterbirds"].parent
    wir = registry["waterbirds_imagenet_r"]
    build_derived(wir.name, wir.derive, roots, out / wir.name)
    df, meta = read_index(out / wir.name)
    validate_index(df, meta, out / wir.name)
    assert len(meta["classes"]) == 20 and meta["classes"][:2] == ["landbird", "waterbird"]
    assert len(meta["group_names"]) == 4
    ia = registry["imagenet_a_top10"]
    build_derived(ia.name, ia.derive, roots, out / ia.name)
    df, meta = read_index(out / ia.name)
    validate_index(df, meta, out / ia.name)
    per_class = df.groupby(["label", "split"]).size().unstack()
    assert len(meta["classes"]) == 10
    assert (per_class["train"] == 10).all() and (per_class["test"] >= 2).all()


@pytest.mark.parametrize("name", sorted(fx.FIXTURES))
def test_raw_files_unpack_to_the_same_folder(registry, name, tmp_path):
    files = fx.members(name, image_size=8, seed=1)
    raw = fx.raw_files(registry[name], files)
    assert set(raw) == {f.filename for f in registry[name].files if not f.optional}
    out = tmp_path / "x"
    out.mkdir()
    for spec in registry[name].files:
        if spec.filename not in raw:
            continue
        if spec.archive == "none":
            (out / spec.filename).write_bytes(raw[spec.filename])
        else:
            (tmp_path / spec.filename).write_bytes(raw[spec.filename])
            safe_extract(tmp_path / spec.filename, out, spec.archive)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files
    check_layout(registry[name], out)


def test_deterministic_and_seeded():
    a = fx.members("celeba", image_size=16, seed=5)
    assert a == fx.members("celeba", image_size=16, seed=5)
    b = fx.members("celeba", image_size=16, seed=6)
    assert a.keys() == b.keys()
    assert a["img_align_celeba/000001.jpg"] != b["img_align_celeba/000001.jpg"]
    imgs = [v for k, v in a.items() if k.endswith(".jpg")]
    assert len(set(imgs)) == len(imgs)  # no two images alike
    assert fx.archive_bytes(a, "tar.gz") == fx.archive_bytes(dict(a), "tar.gz")


def test_scale_changes_the_counts(registry, tmp_path):
    small = fx.WaterbirdsScale(train=(3, 1, 1, 3), val=(1, 1, 1, 1), test=(2, 2, 2, 2))
    ex = fx.write_extracted("waterbirds", tmp_path / "wb" / "extracted", image_size=8, scale=small)
    build_index(registry["waterbirds"], check_layout(registry["waterbirds"], ex), tmp_path / "wb")
    df, meta = read_index(tmp_path / "wb")
    assert meta["splits"] == {"train": 8, "val": 4, "test": 8}
    info = fx.fixture_info(ex)
    assert info["scale"] == {
        "WaterbirdsScale": {"train": [3, 1, 1, 3], "val": [1] * 4, "test": [2] * 4}
    }
    with pytest.raises(fx.FixtureError, match="scale must be a CelebAScale"):
        fx.members("celeba", scale=small)


def test_write_extracted_never_overwrites_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "extracted"
    target.mkdir()
    (target / "real.csv").write_text("x")
    with pytest.raises(FileExistsError, match="never overwrites"):
        fx.write_extracted("fairface", target, image_size=8)
    assert [p.name for p in target.iterdir()] == ["real.csv"]
    assert fx.fixture_info(target) is None  # a real download has no marker
    bad = fx.GenderBiasScale(n_locate=30)
    with pytest.raises(fx.FixtureError, match="n_locate <= 25"):
        fx.write_extracted("genderbias_vl", tmp_path / "gb", image_size=8, scale=bad)
    assert not any(p.name.startswith((".gb", "gb")) for p in tmp_path.iterdir())


def test_facet_professions_of_the_fixture_follow_the_rule():
    rule = yaml.safe_load((REPO / "config" / "facet_professions.yaml").read_text())
    s = fx.FacetScale()
    assert set(s.professions) | {s.extra} <= set(rule["professions"])
    assert set(s.dropped) <= {d["class"] for d in rule["dropped"]}


def test_genderbias_pairs_csv_reads_back():
    rows = [("Lawyer", "Paralegal", 40.0, 85.0), ("Chief executive", "Paralegal", 30.0, 85.0)]
    df = pd.read_csv(io.BytesIO(fx.genderbias_pairs_csv(rows)))
    assert list(df.columns) == list(fx.GENDERBIAS_PAIR_HEADER)
    assert df[["job_male", "job_female", "job_male_ratio", "job_female_ratio"]].values.tolist() == [
        list(r) for r in rows
    ]
    assert df["job_male_label"].notna().all() and df["job_female_3_class"].notna().all()
