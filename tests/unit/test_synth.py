import json
import re

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from clipbias import synth
from clipbias.data.index import validate_index
from clipbias.synth import (
    LATENT_COLUMNS,
    PLACE_WORDS,
    PLACES,
    SHAPES,
    TEXTURE_WORDS,
    generate,
    object_alpha,
    render_images,
    vocabulary,
)

SMALL = dict(n_train=400, n_val=200, n_test=200, image_size=32)
CONTEXT_LENGTH = 16  # planted-vit-tiny text_cfg.context_length
TEXT_FILES = ("config/texts/planted.yaml", "config/texts/planted_multiclass.yaml")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "planted", seed=7, **SMALL)


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _pixels(root, paths):
    return np.stack([np.asarray(Image.open(root / p)) for p in paths])


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
    attr_cols = {f"attr_{a}" for a in meta["attributes"]}
    assert attr_cols <= set(schema.names)
    for col in attr_cols:
        assert schema.field(col).type == pa.int64()
    assert meta["classes"] == ["circle", "triangle"]
    assert meta["attributes"] == {
        "background": ["land", "water"],
        "colour": ["red", "yellow"],
        "place": ["grass", "forest", "ocean", "lake"],
    }
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
    assert meta["majority_background"] == {"circle": "land", "triangle": "water"}
    assert meta["associated_colour"] == {"circle": "red", "triangle": "yellow"}
    assert meta["splits"] == {
        "train": 400,
        "val": 200,
        "test": 200,
        "twin_background": 200,
        "twin_protected": 200,
    }
    assert meta["twins"]["splits"] == ["test"]
    assert meta["twins"]["kinds"]["background"] == {
        "split": "twin_background",
        "id_suffix": "|background",
    }
    assert meta["source"] == "clipbias.synth 0.1.0 seed 7"
    assert "{}" in meta["vocabulary"]["class_prompt"]
    assert set(meta["vocabulary"]["background_words"]) == {"land", "water"}

    ix = pd.read_parquet(ds / "index.parquet")
    validate_index(ix, meta, ds)  # the dataset-folder contract of docs/DESIGN.md
    scene = ix[ix["attr_background"] >= 0]
    assert (scene["attr_place"] // 2 == scene["attr_background"]).all()
    # plain drawings (train only): no background, no group
    plain = ix[ix["attr_background"] < 0]
    assert set(plain["split"]) == {"train"}
    assert (plain[["group", "attr_background", "attr_place"]] == -1).all().all()
    for row in ix.sample(20, random_state=0).itertuples():
        with Image.open(ds / row.path) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
    assert len(list((ds / "images").rglob("*.png"))) == 1200
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
    assert ix[ix["group"] == -1]["label"].value_counts().tolist() == [60, 60]
    for split in ("train", "val"):
        s = ix[(ix["split"] == split) & (ix["attr_background"] >= 0)]
        assert (s["label"] == s["attr_background"]).mean() == pytest.approx(0.95, abs=0.01)
    # protected attribute (colour) independent of the class by default
    for split in ("train", "val", "test"):
        s = ix[ix["split"] == split]
        assert (s["label"] == s["attr_colour"]).mean() == pytest.approx(0.5, abs=0.02)
    # test: balanced over class x background x colour, and the place sub-types within them
    test = ix[ix["split"] == "test"]
    cells = test.groupby(["label", "attr_background", "attr_colour"]).size()
    assert cells.tolist() == [25] * 8
    assert test.groupby(["label", "attr_place"]).size().tolist() == [25] * 8


def test_configurable_classes_colours_and_correlations(tmp_path):
    out = generate(
        tmp_path / "d",
        seed=1,
        n_train=1000,
        n_val=300,
        n_test=360,
        spurious_correlation=0.8,
        protected_correlation=0.9,
        classes=("circle", "square", "triangle"),
        colours=("red", "yellow", "purple"),
        image_size=16,
        plain_fraction=0.3,
        twin_splits=(),
    )
    ix = pd.read_parquet(out / "index.parquet")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["associated_colour"] == {"circle": "red", "square": "yellow", "triangle": "purple"}
    assert meta["majority_background"] == {"circle": "land", "square": "water", "triangle": "land"}
    assert set(ix["split"]) == {"train", "val", "test"}
    for split in ("train", "val"):
        s = ix[ix["split"] == split]
        scene = s[s["attr_background"] >= 0]
        maj = scene["label"] % 2
        assert (scene["attr_background"] == maj).mean() == pytest.approx(0.8, abs=0.01)
        # associated colour = label (colours[c % 3]); the other two share the rest equally
        assoc = s["attr_colour"] == s["label"]
        assert assoc.mean() == pytest.approx(0.9, abs=0.01)
        other = s.loc[~assoc, "attr_colour"].value_counts(normalize=True)
        assert other.min() == pytest.approx(1 / 3, abs=0.1)
    assert (ix[ix["split"] == "train"]["attr_background"] == -1).sum() == 300
    test = ix[ix["split"] == "test"]
    assert test.groupby(["label", "attr_background", "attr_colour"]).size().tolist() == [20] * 18
    assert meta["minority_groups"] == [1, 2, 5]
    assert len(meta["group_names"]) == 6


def test_latents_rerender_byte_identical(ds):
    """Originals and twins re-rendered from latents.parquet equal the stored PNGs, in any
    subset and order of rows (every image depends on its own row only)."""
    lat = pd.read_parquet(ds / "latents.parquet")
    ix = pd.read_parquet(ds / "index.parquet")
    assert list(lat.columns) == list(LATENT_COLUMNS)
    assert lat["image_id"].tolist() == ix["image_id"].tolist()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(lat), 60, replace=False)  # mixed splits, shuffled order
    again = render_images(lat.iloc[pick], image_size=32)
    np.testing.assert_array_equal(again, _pixels(ds, ix["path"].iloc[pick]))
    one = render_images(lat.iloc[[pick[0]]], image_size=32)
    np.testing.assert_array_equal(one[0], again[0])


def test_twins_change_only_their_attribute(ds):
    ix = pd.read_parquet(ds / "index.parquet").set_index("image_id")
    lat = pd.read_parquet(ds / "latents.parquet").set_index("image_id")
    test_ids = ix.index[ix["split"] == "test"]
    bg_ids = test_ids + "|background"
    pr_ids = test_ids + "|protected"
    src, bgt, prt = ix.loc[test_ids], ix.loc[bg_ids], ix.loc[pr_ids]
    assert (bgt["split"] == "twin_background").all() and (prt["split"] == "twin_protected").all()
    for twin in (bgt, prt):
        assert (twin["label"].to_numpy() == src["label"].to_numpy()).all()
        assert (twin["group"] == twin["label"] * 2 + twin["attr_background"]).all()
    # background twin: other family, same sub-type index (grass <-> ocean, forest <-> lake)
    assert (bgt["attr_place"].to_numpy() == (src["attr_place"].to_numpy() + 2) % 4).all()
    assert (bgt["attr_background"].to_numpy() == 1 - src["attr_background"].to_numpy()).all()
    assert (bgt["attr_colour"].to_numpy() == src["attr_colour"].to_numpy()).all()
    # protected twin: next colour, same background
    assert (prt["attr_colour"].to_numpy() == 1 - src["attr_colour"].to_numpy()).all()
    assert (prt["attr_place"].to_numpy() == src["attr_place"].to_numpy()).all()
    # same object latents and noise seed
    keep = [c for c in LATENT_COLUMNS if c not in ("image_id", "split", "place", "colour")]
    pd.testing.assert_frame_equal(
        lat.loc[bg_ids, keep].reset_index(drop=True), lat.loc[test_ids, keep].reset_index(drop=True)
    )
    # pixels: the object is untouched in the background twin, the background in the
    # protected twin
    ids = test_ids[:40]
    orig = _pixels(ds, ix.loc[ids, "path"])
    alpha = object_alpha(lat.loc[ids].reset_index(), 32)
    inside, outside = alpha >= 1, alpha <= 0
    bg_twin = _pixels(ds, ix.loc[ids + "|background", "path"])
    pr_twin = _pixels(ds, ix.loc[ids + "|protected", "path"])
    assert inside.sum() > 1000 and outside.sum() > 10000
    np.testing.assert_array_equal(bg_twin[inside], orig[inside])
    assert np.abs(bg_twin[outside].astype(int) - orig[outside]).mean() > 20
    np.testing.assert_array_equal(pr_twin[outside], orig[outside])
    assert np.abs(pr_twin[inside].astype(int) - orig[inside]).mean() > 20
    # twins are never captioned (training never sees them)
    cap = pd.read_parquet(ds / "captions.parquet")
    assert not cap["image_id"].str.contains("|", regex=False).any()


def test_twins_of_train_skip_plain_drawings(tmp_path):
    out = generate(tmp_path / "t", seed=2, n_train=100, n_val=10, n_test=16, twin_splits=["train"])
    ix = pd.read_parquet(out / "index.parquet")
    n_scene = int(((ix["split"] == "train") & (ix["attr_background"] >= 0)).sum())
    assert (ix["split"] == "twin_background").sum() == n_scene == 70
    assert (ix["split"] == "twin_protected").sum() == 100
    assert ix.loc[ix["split"] == "twin_protected", "image_id"].str.startswith("train_").all()


def _caption_table(ds):
    cap = pd.read_parquet(ds / "captions.parquet")
    lat = pd.read_parquet(ds / "latents.parquet")
    return cap.merge(lat, on="image_id")


def test_captions_language_matches_the_image(ds):
    text = _caption_table(ds)
    ix = pd.read_parquet(ds / "index.parquet")
    assert set(text["image_id"]) == set(ix.loc[ix["split"] == "train", "image_id"])
    vocab = vocabulary(["circle", "triangle"])
    words = set(vocab["words"])
    bg_words = synth.background_word_set()
    shape_feature_words = {
        x
        for c in ("circle", "triangle")
        for p in (*vocab["shape_words"][c]["adjectives"], *vocab["shape_words"][c]["features"])
        for x in p.split()
    } - {"a", "no", "with"}
    drawing = text[text["place"] < 0]
    has_feature = drawing["caption"].apply(lambda c: bool(set(c.split()) & shape_feature_words))
    assert has_feature.mean() > 0.25
    for row in text.itertuples():
        w = set(re.findall(r"[a-z]+", row.caption))
        assert w <= words, row.caption
        # the object's words: its own class name, colour, size and position
        assert not (w & {"circle", "triangle"}) - {row.shape}, row.caption
        assert not (w & {"red", "yellow"}) - {row.colour}, row.caption
        other = "triangle" if row.shape == "circle" else "circle"
        own_shape = {x for p in vocab["shape_words"][row.shape]["adjectives"] for x in p.split()}
        other_shape = {x for p in vocab["shape_words"][other]["adjectives"] for x in p.split()}
        assert not (w & (other_shape - own_shape)), row.caption
        size = synth.size_word(row.radius, 32, (0.18, 0.28))
        assert not (w & {"small", "large"}) - {str(size)}, row.caption
        pos = str(synth.position_word(row.cx, row.cy, 32))
        for p, phrase in synth.POSITION_PHRASES.items():
            if phrase in row.caption:
                assert p == pos, row.caption
        # shape features are described in drawing captions only (module doc)
        if row.place >= 0:
            assert not w & shape_feature_words, row.caption
        # background words only name the image's own place (or its family), texture words
        # only textures that are in the image
        if row.place < 0:
            assert not w & bg_words and "photo" not in w, row.caption
        else:
            place = PLACES[row.place]
            tex_a, tex_b = TEXTURE_WORDS[place]
            phrases = [*PLACE_WORDS[place][0], *PLACE_WORDS[place][1]]
            phrases += [*tex_a] * row.texture_a + [*tex_b] * row.texture_b
            own = {x for phrase in phrases for x in re.findall(r"[a-z]+", phrase)}
            assert not (w & bg_words) - own - {"background"}, row.caption


def test_caption_mix_and_class_prompt_share(ds):
    text = _caption_table(ds)
    scene = text[text["place"] >= 0]
    names_class = scene["caption"].str.contains("circle|triangle")
    names_bg = scene["caption"].apply(lambda c: bool(set(c.split()) & synth.background_word_set()))
    # kinds class 0.4 + object 0.3 (object, never background; object captions may use
    # "shape" instead of the class name), object_background 0.15, background 0.15
    assert (~names_bg).mean() == pytest.approx(0.7, abs=0.08)
    assert (names_bg & ~names_class & ~scene["caption"].str.contains("shape")).mean() == (
        pytest.approx(0.15, abs=0.06)
    )
    # the zero-shot class prompt itself is a common caption: class kind (0.4) x "a photo of a"
    # templates (3 of 6) x colour not named (0.5) = 10 % of the scene captions
    prompt = scene["caption"] == "a photo of a " + scene["shape"]
    assert prompt.mean() == pytest.approx(0.10, abs=0.04)
    # position and size are named often enough to be learned (about a fifth of captions)
    for words in ("left|right|top|bottom|centre", "small|large"):
        assert text["caption"].str.contains(words).mean() == pytest.approx(0.2, abs=0.07)
    # colour named in about half of the captions that describe the object
    obj = scene[names_class | scene["caption"].str.contains("shape")]
    assert obj["caption"].str.contains("red|yellow").mean() == pytest.approx(0.5, abs=0.1)


def test_captions_fit_the_context_length(ds):
    tok = open_clip.get_tokenizer("ViT-B-32")  # the SimpleTokenizer of planted-vit-tiny
    texts = pd.read_parquet(ds / "captions.parquet")["caption"].tolist()
    lengths = [(t != 0).sum().item() for t in tok(texts, context_length=77)]
    assert max(lengths) <= CONTEXT_LENGTH, texts[int(np.argmax(lengths))]


def test_vocabulary_covers_all_shapes():
    v = vocabulary(SHAPES, list(synth.PALETTE))
    words = set(v["words"])
    assert {"round", "pointed", "corners", "hole", "arms", "long", "thin"} <= words
    assert {"grass", "soil", "sand", "leaves", "bark", "waves", "ripples", "shore", "foam"} <= words
    assert v["texture_words"]["lake"] == {
        "texture_a": ["sand", "the shore"],
        "texture_b": ["ripples"],
    }
    assert {"left", "right", "top", "bottom", "centre", "small", "large"} <= words
    assert set(SHAPES) | set(synth.PALETTE) <= words
    assert v["shape_words"]["ring"]["features"][0] == "a hole"


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
    arrs = _pixels(ds, ix["path"][:50])
    assert arrs.std(0).mean() > 10  # position, size, texture and noise vary


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ("circle",)},
        {"classes": ("circle", "hexagon")},
        {"colours": ("red",)},
        {"colours": ("red", "green")},
        {"spurious_correlation": 1.5},
        {"protected_correlation": -0.1},
        {"caption_mix": {"nonsense": 1.0}},
        {"plain_fraction": 1.0},
        {"twin_splits": ["twin_background"]},
        {"object_scale": (0.3, 0.6)},
    ],
)
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path / "x", **{**SMALL, **kwargs})
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------- text files


def _all_texts(spec):
    """Every text of a config/texts file, with the role it plays."""
    out = []
    for role in ("accept", "reject"):
        for pair in spec["insight_pairs"][role]:
            out += [(role, t) for t in pair]
    for entry in spec.get("class_insight_pairs", []):
        assert set(entry["classes"]) <= set(spec["classes"]), entry["classes"]
        for pair in entry["accept"]:
            out += [("accept", t) for t in pair]
    out += [("ortho_spurious", t) for t in spec["ortho_cali"]["spurious"]]
    out += [("ortho_candidate", t) for t in spec["ortho_cali"]["candidates"]]
    out += [("attribute", t) for t in spec["attribute_prompts"]["default"]]
    for attr in spec["protected_attributes"].values():
        for texts in attr["values"].values():
            out += [("protected_value", t) for t in texts]
        out += [("bias_text", t) for t in attr["bias_texts"]]
    out += [("pool", t) for t in spec["pool"]]
    from clipbias.methods.texts import attribute_words, group_prompts, prism_texts

    objects, scenes = prism_texts(spec)
    out += [("prism_object", t) for t in objects] + [("prism_scene", t) for t in scenes]
    out += [("group_prompt", t) for t in group_prompts(spec)[0]]
    out += [("attribute_word", t) for t in attribute_words(spec)]
    return out


@pytest.mark.parametrize("path", TEXT_FILES)
def test_text_files_speak_the_caption_language(repo, path):
    """Every word of every text exists in the caption vocabulary of the generator settings
    the file is written for, and no text is a zero-shot class prompt (else knowledge
    injection becomes a class vote)."""
    spec = yaml.safe_load((repo / path).read_text())
    classes, colours = spec["classes"], spec["colours"]
    vocab = vocabulary(classes, colours)
    words = set(vocab["words"])
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    templates = {*config["classifier"]["templates"], vocab["class_prompt"]}
    prompts = {t.replace("{}", c) for t in templates for c in SHAPES}
    bg = synth.background_word_set()
    tok = open_clip.get_tokenizer("ViT-B-32")
    texts = _all_texts(spec)
    for role, text in texts:
        w = set(re.findall(r"[a-z]+", text.lower()))
        assert w <= words, f"{path}: {role} text {text!r} uses unknown words {w - words}"
        assert text not in prompts, f"{path}: {role} text {text!r} is a class prompt"
        assert (tok([text], context_length=77) != 0).sum() <= CONTEXT_LENGTH, text
        if role == "accept":  # discriminative shape features, no class name, no background
            assert not w & (set(SHAPES) | bg), f"{path}: accept text {text!r}"
        if role in ("reject", "ortho_spurious"):  # backgrounds
            assert w & bg, f"{path}: {role} text {text!r} names no background"
    assert set(spec["spurious_words"]) == bg
    if "class_insight_pairs" in spec:  # every pair of classes, since partners depend on the model
        pairs = {frozenset(e["classes"]) for e in spec["class_insight_pairs"]}
        n = len(classes)
        assert len(pairs) == len(spec["class_insight_pairs"]) == n * (n - 1) // 2
    # Ortho-Cali candidates: 5 per class in class order, pairs within a class
    cands = spec["ortho_cali"]["candidates"]
    assert len(cands) == 5 * len(classes)
    for k, c in enumerate(classes):
        assert all(c in t.split() for t in cands[5 * k : 5 * k + 5])
    assert all(i // 5 == j // 5 for i, j in spec["ortho_cali"]["pairs"])
    # TextSpan pool: a few hundred descriptions, no generic pool, background a minority
    pool = spec["pool"]
    assert spec["general_pool"] is False
    assert len(pool) >= 200 and len(set(pool)) == len(pool)
    bg_share = np.mean([bool(set(t.split()) & bg) for t in pool])
    assert 0.2 <= bg_share <= 0.45
    # protected attribute block (structure of config/texts/facet.yaml)
    colour = spec["protected_attributes"]["colour"]
    assert list(colour["values"]) == colours
    assert all(len(v) >= 5 for v in colour["values"].values())
    assert len(colour["bias_texts"]) >= 20
    per_value = [sum(c in t.split() for t in colour["bias_texts"]) for c in colours]
    assert len(set(per_value)) == 1 and sum(per_value) == len(colour["bias_texts"])
    assert colour["axis"] == colours[:2]
    for value, texts in colour["values"].items():
        assert all(value in t.split() for t in texts)


def test_default_text_file_matches_generator_defaults(repo):
    import inspect

    spec = yaml.safe_load((repo / TEXT_FILES[0]).read_text())
    params = inspect.signature(generate).parameters
    assert spec["classes"] == list(params["classes"].default)
    assert spec["colours"] == list(params["colours"].default)
    multi = yaml.safe_load((repo / TEXT_FILES[1]).read_text())
    assert len(multi["classes"]) >= 6 and set(multi["classes"]) <= set(SHAPES)


def test_textures_are_visible_and_named_only_when_present(ds):
    """A texture latent changes the background pixels (same seed, texture switched off)."""
    lat = pd.read_parquet(ds / "latents.parquet")
    with_tex = lat[(lat["place"] >= 0) & (lat["texture_a"] == 1)].head(20)
    without = with_tex.assign(texture_a=0)
    a, b = render_images(with_tex, 32), render_images(without, 32)
    outside = object_alpha(with_tex, 32) <= 0
    diff = np.abs(a.astype(int) - b)[outside].mean(-1)
    assert np.mean(diff > 10) > 0.05  # a visible share of the background changes
    assert (lat.loc[lat["place"] < 0, ["texture_a", "texture_b"]] == 0).all().all()
    scene = lat[lat["place"] >= 0]
    assert scene["texture_a"].mean() == pytest.approx(0.5, abs=0.06)
