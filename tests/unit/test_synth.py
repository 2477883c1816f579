import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbias.synth import generate

SMALL = dict(n_train=400, n_val=200, n_test=200, image_size=32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "planted", seed=7, **SMALL)


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_index_schema_and_metadata(ds):
    schema = pq.read_schema(ds / "index.parquet")
    expected = {
        "image_id": pa.string(),
        "path": pa.string(),
        "split": pa.string(),
        "label": pa.int64(),
        "group": pa.int64(),
    }
    for col, typ in expected.items():
        assert schema.field(col).type == typ, col
    meta = json.loads((ds / "dataset.json").read_text())
    for key in (
        "name",
        "classes",
        "attributes",
        "spurious_attribute",
        "protected_attribute",
        "group_by",
        "group_names",
        "minority_groups",
        "splits",
        "source",
        "vocabulary",
    ):
        assert key in meta, key
    attr_cols = {f"attr_{a}" for a in meta["attributes"]}
    assert attr_cols <= set(schema.names)
    for col in attr_cols:
        assert schema.field(col).type == pa.int64()
    assert meta["classes"] == ["circle", "triangle"]
    assert meta["attributes"]["background"] == ["land", "water"]
    assert meta["spurious_attribute"] == "background"
    assert meta["protected_attribute"] == "colour"
    assert meta["group_by"] == ["label", "background"]
    assert meta["group_names"] == [
        "circle on land",
        "circle on water",
        "triangle on land",
        "triangle on water",
    ]
    assert meta["minority_groups"] == [1, 2]
    assert meta["splits"] == {"train": 400, "val": 200, "test": 200}
    assert meta["source"] == "clipbias.synth 0.1.0 seed 7"
    assert "{}" in meta["vocabulary"]["class_prompt"]
    assert set(meta["vocabulary"]["background_words"]) == {"land", "water"}

    ix = pd.read_parquet(ds / "index.parquet")
    assert ix["image_id"].is_unique
    scene = ix[ix["attr_background"] >= 0]
    assert (scene["group"] == scene["label"] * 2 + scene["attr_background"]).all()
    assert (scene["attr_place"] // 2 == scene["attr_background"]).all()
    # plain drawings (train only): no background, no group
    plain = ix[ix["attr_background"] < 0]
    assert set(plain["split"]) == {"train"}
    assert (plain[["group", "attr_background", "attr_place"]] == -1).all().all()
    for name, n_values in ((a, len(v)) for a, v in meta["attributes"].items()):
        col = scene[f"attr_{name}"]
        assert col.between(0, n_values - 1).all()
    assert ix["attr_colour"].between(0, 1).all()
    assert ix["label"].between(0, 1).all()
    for row in ix.sample(20, random_state=0).itertuples():
        assert row.path == f"images/{row.split}/{row.image_id}.png"
        with Image.open(ds / row.path) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
    assert len(list((ds / "images").rglob("*.png"))) == 800
    assert not [p for p in ds.parent.iterdir() if p.name.endswith(".partial")]


def test_group_counts_and_correlations(ds):
    ix = pd.read_parquet(ds / "index.parquet")
    counts = ix.groupby(["split", "group"]).size()
    # train: 30 % plain drawings (group -1, classes balanced); of the other 280, 95 % of every
    # class on its majority background (circle -> land, triangle -> water); val likewise
    # without drawings; test balanced
    assert counts["train"].to_dict() == {-1: 120, 0: 133, 1: 7, 2: 7, 3: 133}
    assert counts["val"].tolist() == [95, 5, 5, 95]
    assert counts["test"].tolist() == [50, 50, 50, 50]
    plain = ix[ix["group"] == -1]
    assert plain["label"].value_counts().tolist() == [60, 60]
    for split in ("train", "val"):
        s = ix[(ix["split"] == split) & (ix["attr_background"] >= 0)]
        agree = (s["label"] == s["attr_background"]).mean()
        assert agree == pytest.approx(0.95, abs=0.01)
    # protected attribute (colour) independent of the class by default, in every split
    for split in ("train", "val", "test"):
        s = ix[ix["split"] == split]
        assert (s["label"] == s["attr_colour"]).mean() == pytest.approx(0.5, abs=0.02)


def test_configurable_correlations(tmp_path):
    out = generate(
        tmp_path / "d",
        seed=1,
        n_train=1000,
        n_val=100,
        n_test=120,
        spurious_correlation=0.8,
        protected_correlation=0.9,
        classes=("circle", "square", "triangle"),
        image_size=16,
        plain_fraction=0.3,
    )
    ix = pd.read_parquet(out / "index.parquet")
    meta = json.loads((out / "dataset.json").read_text())
    tr = ix[ix["split"] == "train"]
    assert (tr["attr_background"] == -1).sum() == 300
    maj = tr["label"] % 2
    tr_scene, maj_scene = tr[tr["attr_background"] >= 0], maj[tr["attr_background"] >= 0]
    assert (tr_scene["attr_background"] == maj_scene).mean() == pytest.approx(0.8, abs=0.01)
    assert (tr["attr_colour"] == maj).mean() == pytest.approx(0.9, abs=0.01)
    assert ix[ix["split"] == "test"].groupby("group").size().tolist() == [20] * 6
    assert meta["minority_groups"] == [1, 2, 5]
    assert len(meta["group_names"]) == 6


def test_captions_train_only_and_mix(ds):
    cap = pd.read_parquet(ds / "captions.parquet")
    ix = pd.read_parquet(ds / "index.parquet")
    assert list(cap.columns) == ["image_id", "caption"]
    assert set(cap["image_id"]) == set(ix.loc[ix["split"] == "train", "image_id"])
    text = cap.merge(ix, on="image_id")
    names_class = text["caption"].str.contains("circle|triangle")
    bg_words = "land|water|grass|field|forest|woods|ocean|sea|lake"
    names_bg = text["caption"].str.contains(bg_words)
    # plain drawings: the object only, never a background word, never "photo"
    plain = text["attr_background"] < 0
    assert names_class[plain].all() and not names_bg[plain].any()
    assert not text.loc[plain, "caption"].str.contains("photo").any()
    # scenes: ~70 % object only, ~20 % object + background, ~10 % background only
    scene = ~plain
    assert (names_class & ~names_bg)[scene].mean() == pytest.approx(0.7, abs=0.08)
    assert (names_class & names_bg)[scene].mean() == pytest.approx(0.2, abs=0.06)
    assert (~names_class & names_bg)[scene].mean() == pytest.approx(0.1, abs=0.05)
    # a caption naming a class names the right one; colour words match the colour
    circle = text["caption"].str.contains("circle")
    assert (text.loc[circle, "label"] == 0).all()
    assert (text.loc[text["caption"].str.contains("triangle"), "label"] == 1).all()
    assert (text.loc[text["caption"].str.contains("red "), "attr_colour"] == 0).all()
    assert (text.loc[text["caption"].str.contains("yellow "), "attr_colour"] == 1).all()


def test_deterministic_per_seed(ds, tmp_path):
    again = generate(tmp_path / "again", seed=7, **SMALL)
    assert _files(ds) == _files(again)
    other = generate(tmp_path / "other", seed=8, **SMALL)
    a, b = _files(ds), _files(other)
    assert a.keys() == b.keys()
    assert a["index.parquet"] != b["index.parquet"]
    assert a["images/test/test_000000.png"] != b["images/test/test_000000.png"]
    # regenerating over an existing folder replaces it
    generate(tmp_path / "other", seed=7, **SMALL)
    assert _files(tmp_path / "other") == a


def test_images_vary(ds):
    ix = pd.read_parquet(ds / "index.parquet")
    arrs = np.stack([np.asarray(Image.open(ds / p)) for p in ix["path"][:50]])
    assert arrs.std(0).mean() > 10  # position, size, texture and noise vary


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path / "x", classes=("circle",), **SMALL)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", spurious_correlation=1.5, **SMALL)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", caption_mix={"nonsense": 1.0}, **SMALL)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", classes=("circle", "hexagon"), **SMALL)
    with pytest.raises(ValueError):
        generate(tmp_path / "x", plain_fraction=1.0, **SMALL)
    assert not (tmp_path / "x").exists()


def test_planted_texts_name_the_generated_classes_and_words(repo):
    """config/texts/planted.yaml must speak the generator's vocabulary: accept pairs contrast
    the default classes, Ortho-Cali candidates name them, and no other shape appears
    (a stale shape name silently turns the insight directions into noise)."""
    import inspect
    import re

    import yaml

    from clipbias import synth

    classes = inspect.signature(synth.generate).parameters["classes"].default
    spec = yaml.safe_load((repo / "config/texts/planted.yaml").read_text())
    other_shapes = set(synth.SHAPES) - set(classes)
    texts = [t for pair in spec["insight_pairs"]["accept"] for t in pair]
    texts += spec["ortho_cali"]["candidates"] + spec["textspan_extra"]
    for text in texts:
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & other_shapes, f"{text!r} names a shape the generator does not draw"
    for pos, neg in spec["insight_pairs"]["accept"]:
        assert classes[0] in pos and classes[1] in neg, (pos, neg)
    cands = spec["ortho_cali"]["candidates"]
    half = len(cands) // 2
    assert all(classes[0] in c for c in cands[:half]) and all(classes[1] in c for c in cands[half:])
    vocab = synth.vocabulary(classes)
    known_bg = {w for words in vocab["background_words"].values() for w in words}
    for word in spec["spurious_words"]:
        assert word == "background" or any(word in w for w in known_bg), word
