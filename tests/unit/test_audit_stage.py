"""The audit rule's stage (clipbias.stages.audit) on a tiny feature store with one planted
attribute-carrying head, its audit-texts table, and the audit_ablation methods reading its
located heads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipbias.features import build_table, write_classifier, write_manifest, write_shard
from clipbias.methods import audit as au
from clipbias.methods import audit_ablation, ltc
from clipbias.methods.texts import (
    read_audit_texts,
    write_audit_texts,
    write_method_texts,
)
from clipbias.stages import audit as st
from clipbias.stages import predict

LAYERS = [0, 1, 2, 3]
N_HEADS, DIM, N_CLS = 6, 8, 3
CARRIER = "L3H1"
VALUES = ["red", "yellow"]  # dataset.json order; the texts list them reversed below


def _split(rng, n, split):
    """D = 8: dims 0-2 class directions, dim 3 the colour direction u, 4-7 noise. The carrier
    head adds (2a - 1)(u + 0.7 e0): colour pushes predictions toward class 0."""
    y = rng.integers(0, N_CLS, n)
    a = (rng.random(n) < np.array([0.7, 0.5, 0.3])[y]).astype(np.int64)  # 1 = yellow
    heads = rng.normal(0, 0.08, (n, len(LAYERS), N_HEADS, DIM)).astype(np.float32)
    sign = (2 * a - 1).astype(np.float32)
    heads[:, 3, 1, 3] += sign
    heads[:, 3, 1, 0] += 0.7 * sign
    rest = rng.normal(0, 0.3, (n, DIM)).astype(np.float32)
    rest[np.arange(n), y] += 1.0
    index = pd.DataFrame(
        {
            "image_id": [f"{split}_{i:04d}" for i in range(n)],
            "path": [f"{split}/{i}.png" for i in range(n)],
            "split": split,
            "label": y,
            "group": -1,
            "attr_colour": a,
            "attr_background": rng.integers(0, 2, n),
        }
    )
    return index, heads, rest


def _audit_texts(rng):
    """Concept texts along ±u (yellow +), bias texts along ±u with a class-0 part."""
    rows, emb = [], []
    for v, s in (("yellow", 1.0), ("red", -1.0)):
        for i in range(5):
            e = rng.normal(0, 0.3, DIM)
            e[3] += 3.0 * s
            e[4] += 2.0
            rows.append(("colour", "concept", v, f"{v} concept {i}"))
            emb.append(e)
        for i in range(10):
            e = rng.normal(0, 0.1, DIM)
            e[3] += s
            e[0] += 0.6 * s
            rows.append(("colour", "bias", v, f"{v} bias {i}"))
            emb.append(e)
    # an attribute the dataset does not have: skipped with a warning
    for v, s in (("light", 1.0), ("dark", -1.0)):
        for i in range(5):
            e = rng.normal(0, 0.3, DIM)
            e[5] += 3.0 * s
            rows.append(("shade", "concept", v, f"{v} concept {i}"))
            emb.append(e)
        for i in range(10):
            rows.append(("shade", "bias", v, f"{v} bias {i}"))
            emb.append(rng.normal(0, 1, DIM))
    table = pd.DataFrame(rows, columns=["attribute", "role", "value", "text"])
    attrs = {
        "colour": {"values": ["yellow", "red"], "axis": ["yellow", "red"], "description": "c"},
        "shade": {"values": ["light", "dark"], "axis": ["light", "dark"], "description": ""},
    }
    return table, np.asarray(emb), attrs


def write_store(root, seed=0, splits=(("val", 300), ("test", 240))):
    rng = np.random.default_rng(seed)
    parts = [_split(rng, n, s) for s, n in splits]
    index = pd.concat([p[0] for p in parts], ignore_index=True)
    heads = np.concatenate([p[1] for p in parts])
    rest = np.concatenate([p[2] for p in parts])
    emb = heads.sum((1, 2)) + rest
    meta = {"layers": LAYERS, "n_layers": 4, "n_heads": N_HEADS, "dim": DIM, "head_dim": 2}
    ones = np.ones(len(index), np.float32)
    table = build_table(index, heads, rest, emb, ones, ones, ones, LAYERS, "float32", meta)
    write_shard(table, root / "shard-00000.parquet")
    write_manifest([root / "shard-00000.parquet"], root / "manifest.json")
    write_classifier(root / "classifier.parquet", ["c0", "c1", "c2"], np.eye(N_CLS, DIM), {})
    pool = rng.normal(0, 1, (40, DIM))
    pool[:, 3] *= 0.05
    write_method_texts(root / "texts.parquet", {"pool": [f"general {i}" for i in range(40)]}, pool)
    write_audit_texts(root / "audit_texts.parquet", *_audit_texts(rng))
    dmeta = {
        "classes": ["c0", "c1", "c2"],
        "attributes": {"colour": VALUES, "background": ["land", "water"]},
        "protected_attribute": "colour",
        "spurious_attribute": "background",
    }
    (root / "dataset.json").write_text(json.dumps(dmeta))
    return index, heads, rest


PARAMS = {"n_boot": 50, "n_draws": 100, "textspan": {"m": 6}, "min_concept_texts": 5}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_store")
    arrays = write_store(root)
    locator = st.audit(
        root, root / "dataset.json", root / "texts.parquet", root / "audit_texts.parquet",
        root / "audit", root / "heads" / "audit.json", "val", "test", seed=3, params=PARAMS,
    )  # fmt: skip
    return root, arrays, locator


def test_audit_texts_round_trip(tmp_path):
    table, emb, attrs = _audit_texts(np.random.default_rng(1))
    write_audit_texts(tmp_path / "a.parquet", table, emb, attrs)
    t2, e2, a2 = read_audit_texts(tmp_path / "a.parquet")
    pd.testing.assert_frame_equal(t2, table)
    np.testing.assert_allclose(e2, emb.astype(np.float32))
    assert a2["colour"] == {"values": ["yellow", "red"], "axis": ["yellow", "red"],
                            "description": "c"}  # fmt: skip
    with pytest.raises(ValueError, match="embeddings of shape"):
        write_audit_texts(tmp_path / "b.parquet", table, emb[:3], attrs)
    write_method_texts(tmp_path / "t.parquet", {"pool": ["x"]}, np.ones((1, 2)))
    with pytest.raises(ValueError, match="not an audit texts table"):
        read_audit_texts(tmp_path / "t.parquet")


def test_audit_stage_writes_every_table_and_the_locator(audited):
    root, _, locator = audited
    out = root / "audit"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_attributes"] == ["shade"] and list(summary["attributes"]) == ["colour"]
    assert summary["split_sizes"] == {"val": 300, "test": 240}
    assert summary["variants"] == ["split", "single_pool"]
    for variant in ("split", "single_pool"):
        folder = out / "colour" / variant
        for key in (*st.TABLE_KEYS, "textspan", "textspan_bias"):
            df = pd.read_csv(folder / f"{key}.csv")
            assert list(df.columns[:2]) == ["attribute", "variant"], key
            assert (df["variant"] == variant).all(), key
        info = json.loads((folder / "audit.json").read_text())
        assert info["values"] == ["yellow", "red"] and info["dataset_values"] == VALUES
        assert info["selection"]["split"]["single_pool"] == (variant == "single_pool")
        assert info["textspan"]["rank"] == 4 and info["textspan"]["m"] == 6  # head dim + 2
    sel = json.loads((out / "colour" / "split" / "audit.json").read_text())["selection"]
    assert sel["split"]["n_locate"] == 300 and sel["split"]["n_evaluate"] == 240
    assert sel["top_k"][0] == CARRIER and len(sel["top_k"]) == 4
    assert sel["greedy"][:1] == [CARRIER]
    heads = json.loads((root / "heads" / "audit.json").read_text())
    assert heads == locator
    entry = heads["attributes"]["colour"]
    assert entry["split"]["top_k"] == sel["top_k"] and entry["values"] == ["yellow", "red"]
    assert set(entry) == {"values", "rank_cav", "k", "split", "single_pool"}
    assert heads["layers"] == LAYERS and heads["n_heads"] == N_HEADS


def test_audit_stage_outcome_and_control(audited):
    root, _, _ = audited
    folder = root / "audit" / "colour" / "split"
    out = pd.read_csv(folder / "outcome.csv").set_index("condition")
    assert {"baseline", "top_k", "greedy", "top_k_transductive"} <= set(out.index)
    assert out.loc["top_k", "v"] < out.loc["baseline", "v"]
    assert (out["n"] == 240).all()
    ctrl = json.loads((folder / "audit.json").read_text())["random_control"]["top_k"]
    assert ctrl["rank"] == 1 and ctrl["delta_v"] < 0 and ctrl["mode"] == "enumerate"
    draws = pd.read_csv(folder / "random_draws.csv")
    assert len(draws[draws["set"] == "top_k"]) == ctrl["n_sets"]
    # attribute codes follow the texts' value order (yellow = 0), not dataset.json's
    pc = pd.read_csv(folder / "per_class.csv")
    assert set(pc["value_name"]) == {"yellow", "red"}


def test_audit_stage_equals_audit_attribute_called_directly(audited):
    """The stage's outcome = audit_attribute on the loaded arrays (no TextSpan, same seed)."""
    root, (index, heads, rest), _ = audited
    table, emb, attrs = read_audit_texts(root / "audit_texts.parquet")
    sub = table[table["attribute"] == "colour"]
    value_emb = {v: emb[sub.index[(sub["role"] == "concept") & (sub["value"] == v)]]
                 for v in ("yellow", "red")}  # fmt: skip
    cavs = au.zero_shot_cavs(value_emb, axis=["yellow", "red"])
    a = au.recode_attr(index["attr_colour"].to_numpy(), [1, 0])
    params = {**PARAMS, "textspan": {"enabled": False}, "single_pool": False}
    st.audit(
        root, root / "dataset.json", root / "texts.parquet", root / "audit_texts.parquet",
        root / "audit2", root / "heads2.json", "val", "test", seed=3, params=params,
    )  # fmt: skip
    direct = au.audit_attribute(
        heads, rest, np.eye(N_CLS, DIM).T, LAYERS, index["label"].to_numpy(), a, cavs,
        ["yellow", "red"], attribute="colour", is_locate=(index["split"] == "val").to_numpy(),
        n_layers=4, class_names=["c0", "c1", "c2"], seed=3, n_boot=50, n_draws=100,
    )  # fmt: skip
    got = pd.read_csv(root / "audit2" / "colour" / "split" / "outcome.csv")
    exp = direct["outcome"]
    np.testing.assert_allclose(got["v"], exp["v"], rtol=1e-6)
    np.testing.assert_allclose(got["accuracy"], exp["accuracy"], rtol=1e-6)
    sel = json.loads((root / "audit2" / "colour" / "split" / "audit.json").read_text())
    assert sel["selection"]["top_k"] == direct["selection"]["top_k"]
    assert not (root / "audit2" / "colour" / "single_pool").exists()
    assert not (root / "audit2" / "colour" / "split" / "textspan.csv").exists()


def test_one_split_is_cut_into_stratified_halves(tmp_path):
    write_store(tmp_path, seed=1, splits=(("test", 400),))
    params = {**PARAMS, "textspan": {"enabled": False}, "single_pool": False}
    st.audit(
        tmp_path, tmp_path / "dataset.json", tmp_path / "texts.parquet",
        tmp_path / "audit_texts.parquet", tmp_path / "audit", tmp_path / "h.json", "test", "test",
        seed=5, params=params,
    )  # fmt: skip
    sel = json.loads((tmp_path / "audit" / "colour" / "split" / "audit.json").read_text())
    n_loc, n_ev = sel["selection"]["split"]["n_locate"], sel["selection"]["split"]["n_evaluate"]
    assert n_loc + n_ev == 400 and abs(n_loc - 200) <= 12


def test_audit_stage_errors(tmp_path):
    write_store(tmp_path)
    args = (tmp_path, tmp_path / "dataset.json", tmp_path / "texts.parquet",
            tmp_path / "audit_texts.parquet", tmp_path / "out", tmp_path / "h.json")  # fmt: skip
    with pytest.raises(ValueError, match="unknown parameter 'kk'"):
        st.audit(*args, "val", "test", params={"kk": 1})
    with pytest.raises(ValueError, match=r"audit.textspan: unknown key\(s\) \['mm'\]"):
        st.audit(*args, "val", "test", params={"textspan": {"mm": 1}})
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "candidate_columns": ["label"]}))
    with pytest.raises(ValueError, match="one classifier over all classes"):
        st.audit(*args, "val", "test")
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "attributes": {"hue": ["a"]}}))
    with pytest.raises(ValueError, match="name them as in dataset.json"):
        st.audit(*args, "val", "test")
    assert not (tmp_path / "out").exists() and not (tmp_path / "h.json").exists()


def test_encode_audit_texts_reports_the_text_file(tmp_path):
    (tmp_path / "t.yaml").write_text("pool: [a]\n")
    with pytest.raises(ValueError, match=r"t\.yaml: audit text spec needs .*remove those"):
        st.encode_audit_texts("planted-vit-tiny", None, tmp_path / "t.yaml", tmp_path / "o")


# ------------------------------------------------------------------- audit_ablation methods


@pytest.mark.parametrize(
    "method,overrides,head_set,variant",
    [
        ("audit_ablation", {}, "top_k", "split"),
        ("audit_ablation_greedy", {}, "greedy", "split"),
        (
            "audit_ablation",
            {"variant": "single_pool", "attribute": "colour"},
            "top_k",
            "single_pool",
        ),
        ("audit_ablation", {"ablation_stats": "test"}, "top_k", "split"),
    ],
)
def test_audit_ablation_methods_equal_mean_ablation(audited, method, overrides, head_set, variant):
    from clipbias import metrics
    from clipbias.methods import registry

    root, (index, heads, rest), locator = audited
    spec = registry.get(method)
    params = spec.resolve_params(overrides)
    out = root / "pred" / f"{method}_{head_set}_{variant}_{params['ablation_stats']}.parquet"
    predict.predict(
        method, params, root, root / "dataset.json", out, "val", "test", seed=3,
        located={"audit": root / "heads" / "audit.json"},
    )  # fmt: skip
    df, _, meta = predict.read_predictions(out)
    chosen = locator["attributes"]["colour"][variant][head_set]
    assert meta["meta"]["heads"] == chosen and meta["meta"]["attribute"] == "colour"
    val = (index["split"] == "val").to_numpy()
    # the audit's means of the variant: the locate split, the test split (transductive), or
    # for the single pool the pool val ∪ test it was selected on (as its single-pool rows)
    rows = {"split": val, "single_pool": np.ones_like(val)}[variant]
    rows = rows if params["ablation_stats"] == "locate" else ~val
    expected_splits = sorted(set(index["split"][rows]))
    assert sorted(meta["meta"]["mean_splits"]) == expected_splits
    means = ltc.head_means(heads[rows])
    emb = ltc.ltc_correct(heads[~val], rest[~val], LAYERS, chosen, [], None, means)
    expected = metrics.predict(emb, np.eye(N_CLS, DIM).T)
    np.testing.assert_array_equal(df["pred"].to_numpy(), expected)


def test_audit_ablation_errors():
    located = {"attributes": {"colour": {"split": {"top_k": ["L3H1"], "greedy": []}}}}
    assert audit_ablation.selected_heads(located, {"protected_attribute": "colour"}, "",
                                         "split", "greedy") == ("colour", [])  # fmt: skip
    with pytest.raises(ValueError, match="set the method's 'attribute'"):
        audit_ablation.selected_heads(located, {}, "", "split", "top_k")
    with pytest.raises(ValueError, match=r"audited: \['colour'\]"):
        audit_ablation.selected_heads(located, {}, "gender", "split", "top_k")
    with pytest.raises(ValueError, match="single_pool"):
        audit_ablation.selected_heads(located, {}, "colour", "single_pool", "top_k")
