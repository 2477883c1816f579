"""The streamed audit stage writes what the in-memory one wrote (issue 15).

``audit_reference.reference_audit`` is a frozen copy of the stage before it streamed (all
terminal-layer heads of the cell in memory). On small synthetic feature stores, in several
configurations (two splits or one stratified split, several attributes, more stored layers
than terminal ones, float16 shards, tiny batches), every file the streamed
:func:`clipbias.stages.audit.audit` writes must equal the reference's: the same files, the
same selections, counts and texts exactly, floats to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from audit_reference import mean_heads as reference_mean_heads
from audit_reference import reference_audit, stereotype_logit_scores

from clipbias.features import build_table, write_classifier, write_manifest, write_shard
from clipbias.methods.texts import write_audit_texts, write_method_texts
from clipbias.stages import audit as st

RTOL, ATOL = 1e-9, 1e-12


def _audit_texts(rng, dim):
    """Concept and bias texts of colour (dims 0/1), age (dims 2/3) and an attribute the
    dataset does not have (shade: skipped)."""
    rows, emb = [], []

    def add(attr, role, value, text, e):
        rows.append((attr, role, value, text))
        emb.append(e)

    for v, s in (("yellow", 1.0), ("red", -1.0)):
        for i in range(5):
            e = rng.normal(0, 0.3, dim)
            e[0] += 3.0 * s
            e[dim - 1] += 2.0
            add("colour", "concept", v, f"{v} concept {i}", e)
        for i in range(10):
            e = rng.normal(0, 0.2, dim)
            e[0] += s
            e[4] += 0.5 * s
            add("colour", "bias", v, f"{v} bias {i}", e)
    for v, s in (("young", -1.0), ("middle", 0.0), ("older", 1.0)):
        for i in range(5):
            e = rng.normal(0, 0.3, dim)
            e[2] += 3.0 * s
            e[dim - 1] += 2.0
            add("age", "concept", v, f"{v} concept {i}", e)
        for i in range(7):
            e = rng.normal(0, 0.2, dim)
            e[2] += s
            add("age", "bias", v, f"{v} bias {i}", e)
    for v in ("light", "dark"):
        for i in range(5):
            add("shade", "concept", v, f"{v} concept {i}", rng.normal(0, 1, dim))
        for i in range(10):
            add("shade", "bias", v, f"{v} bias {i}", rng.normal(0, 1, dim))
    table = pd.DataFrame(rows, columns=["attribute", "role", "value", "text"])
    attrs = {
        "colour": {"values": ["yellow", "red"], "axis": ["yellow", "red"], "description": "c"},
        "age": {"values": ["young", "middle", "older"], "axis": ["older", "young"],
                "description": "a"},
        "shade": {"values": ["light", "dark"], "axis": ["light", "dark"], "description": ""},
    }  # fmt: skip
    return table, np.asarray(emb), attrs


def write_store(
    root: Path,
    splits=(("val", 300), ("test", 260)),
    layers=(0, 1, 2, 3, 4, 5),
    n_heads=5,
    dim=12,
    n_cls=4,
    shard_rows=128,
    dtype="float32",
    seed=0,
) -> None:
    """A feature store whose class predictions depend on colour and age through two
    carrier heads (a colour head in the last layer, an age head in the one before), with a
    non-trivial embedding norm and a random (non-identity) unit classifier."""
    rng = np.random.default_rng(seed)
    layers = list(layers)
    classifier = rng.normal(0, 1, (dim, n_cls))
    classifier[np.arange(n_cls) + 5, np.arange(n_cls)] += 3.0
    classifier /= np.linalg.norm(classifier, axis=0)
    frames, heads, rests = [], [], []
    for split, n in splits:
        y = rng.integers(0, n_cls, n)
        colour = (rng.random(n) < np.linspace(0.8, 0.2, n_cls)[y]).astype(np.int64)  # 1 = yellow
        age = rng.integers(0, 4, n)  # 3 = unknown
        h = rng.normal(0, 0.15, (n, len(layers), n_heads, dim)).astype(np.float32)
        s_col = (2 * colour - 1).astype(np.float32)
        h[:, -1, 1, 0] += 1.2 * s_col
        h[:, -1, 1] += np.outer(0.9 * s_col, classifier[:, 0]).astype(np.float32)
        s_age = np.where(age == 3, 0.0, age - 1.0).astype(np.float32)
        h[:, -2, 3, 2] += 1.0 * s_age
        h[:, -2, 3] += np.outer(0.6 * s_age, classifier[:, 2]).astype(np.float32)
        h += rng.normal(0, 0.3, (1, len(layers), n_heads, dim)).astype(np.float32)  # head means
        r = rng.normal(0, 0.5, (n, dim)).astype(np.float32)
        r += 2.5 * classifier[:, y].T.astype(np.float32) + 3.0  # norm far from 1
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [f"{split}_{i:04d}" for i in range(n)],
                    "path": [f"{split}/{i}.png" for i in range(n)],
                    "split": split,
                    "label": y,
                    "group": -1,
                    "attr_colour": 1 - colour,  # dataset order [red, yellow]
                    "attr_age": age,
                }
            )
        )
        heads.append(h)
        rests.append(r)
    index = pd.concat(frames, ignore_index=True)
    heads, rest = np.concatenate(heads), np.concatenate(rests)
    if dtype == "float16":
        heads = heads.astype(np.float16).astype(np.float32)
    emb = heads.sum((1, 2)) + rest
    meta = {"layers": layers, "n_layers": max(layers) + 1, "n_heads": n_heads, "dim": dim,
            "head_dim": 3}  # fmt: skip
    shards = []
    for s, start in enumerate(range(0, len(index), shard_rows)):
        part = slice(start, start + shard_rows)
        one = np.ones(len(index.iloc[part]), np.float32)
        table = build_table(
            index.iloc[part].reset_index(drop=True), heads[part], rest[part], emb[part],
            one, one, one, layers, dtype, meta,
        )  # fmt: skip
        shards.append(root / f"shard-{s:05d}.parquet")
        write_shard(table, shards[-1])
    write_manifest(shards, root / "manifest.json")
    names = [f"class {c}" for c in range(n_cls)]
    write_classifier(root / "classifier.parquet", names, classifier.T, {})
    pool = rng.normal(0, 1, (40, dim))
    write_method_texts(root / "texts.parquet", {"pool": [f"general {i}" for i in range(40)]}, pool)
    write_audit_texts(root / "audit_texts.parquet", *_audit_texts(rng, dim))
    dmeta = {
        "classes": names,
        "attributes": {"colour": ["red", "yellow"], "age": ["young", "middle", "older", "na"]},
        "protected_attribute": "colour",
    }
    (root / "dataset.json").write_text(json.dumps(dmeta))


def _close(a, b, where: str) -> None:
    """JSON values equal: floats to RTOL, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, int | float), where
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_outputs(ref: Path, new: Path) -> None:
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    assert files
    for rel in files:
        if rel.suffix == ".json":
            got = json.loads((new / rel).read_text())
            if "selection" in got:  # the one key added since the reference: the ranking used
                assert got["selection"].pop("ranking") == "combined", rel
            _close(json.loads((ref / rel).read_text()), got, str(rel))
            continue
        a, b = pd.read_csv(ref / rel), pd.read_csv(new / rel)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), rel
        for col in a.columns:
            x, y = a[col], b[col]
            if pd.api.types.is_float_dtype(x) and pd.api.types.is_numeric_dtype(y):
                np.testing.assert_allclose(
                    y.to_numpy(float), x.to_numpy(float), rtol=RTOL, atol=ATOL,
                    err_msg=f"{rel}: {col}",
                )  # fmt: skip
            else:
                pd.testing.assert_series_equal(x, y, obj=f"{rel}: {col}")


# the reference ranks by METHODS §6.6 item 2 (the default before issue 25): ranking combined
FAST = {"n_boot": 40, "n_draws": 60, "textspan": {"m": 4}, "min_per_group": 5, "k": 3,
        "greedy_max_acc_drop": 0.03, "ranking": "combined"}  # fmt: skip
CASES = {
    # two splits, every table (TextSpan, single pool, transductive)
    "two_splits": ({}, FAST, {}),
    # one split cut per attribute (colour and age get different halves), float16 shards,
    # batches of a few rows, the other switches of the RECON choices
    "one_split": (
        {"splits": (("test", 520),), "dtype": "float16", "shard_rows": 200, "seed": 1},
        {
            **FAST,
            "stereotype_split": "evaluate",
            "bias_correction": True,
            "greedy_max_k": 2,
            "disparity": "class_v",
            "flagged_first": False,
            "terminal_layers": 3,
            "greedy_min_drop": 0.0,
            "greedy_max_acc_drop": 0.05,
        },
        {"batch_bytes": 16 * 3000},
    ),  # fmt: skip
    # no TextSpan, no single pool, no transductive or stereotype scores; sampled control
    "reduced": (
        {"seed": 2, "layers": (2, 3, 4)},
        {
            **FAST,
            "textspan": {"enabled": False},
            "single_pool": False,
            "transductive": False,
            "stereotype_score": False,
            "cav_score": "abs_d",
            "max_enumerate": 5,
            "k": 2,
            "terminal_layers": 2,
            "greedy": False,
        },
        {},
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_stage_writes_what_the_in_memory_stage_wrote(tmp_path, monkeypatch, case):
    import clipbias.features as F

    store_kw, params, opts = CASES[case]
    root = tmp_path / "store"
    root.mkdir()
    write_store(root, **store_kw)
    splits = [s for s, _ in store_kw.get("splits", (("val", 0), ("test", 0)))]
    loc, test = splits[0], splits[-1]
    args = (root, root / "dataset.json", root / "texts.parquet", root / "audit_texts.parquet")
    ref = reference_audit(*args, tmp_path / "ref", tmp_path / "ref.json", loc, test, seed=7,
                          params=params)  # fmt: skip
    if "batch_bytes" in opts:
        monkeypatch.setattr(F, "BATCH_BYTES", opts["batch_bytes"])
    new = st.audit(*args, tmp_path / "new", tmp_path / "new.json", loc, test, seed=7,
                   params=params)  # fmt: skip
    assert new == ref
    assert json.loads((tmp_path / "new.json").read_text()) == ref
    assert_same_outputs(tmp_path / "ref", tmp_path / "new")
    # the case exercises what it is meant to: both attributes audited, tables present
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    assert list(summary["attributes"]) == ["colour", "age"]
    assert summary["skipped_attributes"] == ["shade"]
    if case != "reduced":
        assert (tmp_path / "new" / "age" / "single_pool" / "textspan_bias.csv").is_file()
        assert summary["attributes"]["colour"]["split"]["top_k"][0] == "L5H1"
        assert summary["attributes"]["age"]["split"]["top_k"][0] == "L4H3"
        assert summary["attributes"]["age"]["split"]["greedy"]


# ------------------------------------------------------------------- the streamed pieces


def test_head_logit_predictions_equal_normalised_ablated_embedding():
    """argmax of base + Σ_{h∈S} (μ_h·T − ĉ_h·T) = argmax of the cosine between the mean-ablated,
    normalised embedding and the unit class embeddings, also when ‖e‖ is far from 1."""
    from clipbias.methods import audit as au

    rng = np.random.default_rng(11)
    n, layers, n_heads, dim, n_cls = 400, [6, 7], 4, 16, 9
    heads = rng.normal(0, 2.0, (n, len(layers), n_heads, dim)).astype(np.float32)
    heads += rng.normal(0, 3.0, (1, len(layers), n_heads, dim)).astype(np.float32)
    rest = (rng.normal(0, 5.0, (n, dim)) + 40.0).astype(np.float32)  # ‖e‖ ~ 160
    T = rng.normal(0, 1, (dim, n_cls))
    T /= np.linalg.norm(T, axis=0)
    means = au.mean_heads(heads, rng.random(n) < 0.5)
    logits = au.HeadLogits.from_heads(heads, rest, T, layers)
    pool = [f"L{lyr}H{h}" for lyr in layers for h in range(n_heads)]
    eng = au.LogitDeltas(logits, pool, logits.mean_logits(means), dtype=np.float64)
    emb = heads.sum((1, 2), dtype=np.float64) + rest
    assert np.linalg.norm(emb, axis=1).min() > 50
    changed = 0
    for s in [[], ["L7H1"], ["L6H0", "L7H3"], pool[:5], pool]:
        e = emb.copy()
        for hid in s:
            li, h = layers.index(int(hid[1])), int(hid[3])
            e -= heads[:, li, h].astype(np.float64) - means[li, h].astype(np.float64)
        cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ T
        expected = np.argmax(cos, axis=1)
        np.testing.assert_array_equal(eng.predict(s), expected)
        np.testing.assert_allclose(eng.logits(s), e @ T, rtol=1e-10, atol=1e-9)
        changed += int((expected != np.argmax(emb @ T, axis=1)).sum())
    assert changed > 50  # the ablations do move predictions


def test_accumulator_equals_the_in_memory_statistics():
    """AuditAccumulator over uneven batches = the statistics audit_attribute computes from
    the whole arrays: logits, projections, means (bit for bit), moments, stereotype sums."""
    from clipbias.methods import audit as au
    from clipbias.streaming import HeadMoments

    rng = np.random.default_rng(5)
    n, layers, terminal, n_heads, dim, n_cls = 2500, [3, 4, 5], [4, 5], 3, 6, 4
    heads = rng.normal(0, 1, (n, 3, n_heads, dim)) + rng.normal(0, 4, (3, n_heads, dim))
    heads = heads.astype(np.float32)
    rest = rng.normal(0, 1, (n, dim)).astype(np.float32)
    T = rng.normal(0, 1, (dim, n_cls))
    cav = rng.normal(0, 1, (dim, 2))
    y = rng.integers(0, n_cls, n)
    attr = rng.integers(-1, 2, n)
    loc = rng.random(n) < 0.4
    acc = au.AuditAccumulator(n, layers, terminal, n_heads, dim, T, cav, moment_rows=64)
    k_loc, k_ev, k_all = acc.add_means(loc), acc.add_means(~loc), acc.add_means(None)
    assert acc.add_means(loc.copy()) == k_loc  # equal masks share one accumulator
    m_loc, m_all = acc.add_moments(loc), acc.add_moments(None)
    a_loc = np.where(loc, attr, -1)
    smap = au.stereotyped_class_map(y, a_loc, n_cls, 1.0)
    k_st = acc.add_stereotype(y, a_loc, smap)
    start = 0
    for size in [1, 7, 300, 2000, 100, 92]:
        rest_b = rest[start : start + size] - heads[start : start + size, 0].sum((1,))
        acc.update(heads[start : start + size], rest_b)
        start += size
    assert start == n
    stats = acc.finish()

    ht = heads[:, 1:]
    rest_t = (rest - heads[:, 0].sum(1) + heads[:, 0].sum(1, dtype=np.float64)).astype(np.float32)
    ref = au.HeadLogits.from_heads(ht, rest_t, T, terminal)
    np.testing.assert_allclose(stats.logits.base, ref.base, rtol=1e-12)
    np.testing.assert_array_equal(stats.logits.logits, ref.logits)
    np.testing.assert_array_equal(stats.proj, np.einsum("nlhd,dk->nlhk", heads,
                                                        cav.astype(np.float32)))  # fmt: skip
    for key, mask in ((k_loc, loc), (k_ev, ~loc), (k_all, np.ones(n, bool))):
        np.testing.assert_array_equal(stats.means[key], reference_mean_heads(ht, mask))
        np.testing.assert_array_equal(stats.means[key], au.mean_heads(ht, mask))
    for key, mask in ((m_loc, loc), (m_all, np.ones(n, bool))):
        mom = HeadMoments(terminal, n_heads, dim)
        mom.update(ht[mask])
        got = stats.moments[key]
        assert got.count == mask.sum()
        for li in range(2):
            for h in range(n_heads):
                np.testing.assert_allclose(got.mean(li, h), mom.mean(li, h), rtol=1e-12)
                np.testing.assert_allclose(got.gram(li, h), mom.gram(li, h), rtol=1e-11)
                np.testing.assert_allclose(got.centred_gram(li, h), mom.centred_gram(li, h),
                                           rtol=1e-9, atol=1e-9)  # fmt: skip
    pred = np.argmax(ref.base, axis=1)
    sel = au.stereotype_selection(pred, y, a_loc, smap)
    sums, count = stats.stereotype[k_st]
    assert count == sel.sum() > 20
    np.testing.assert_allclose(sums, au.stereotype_logit_sums(ht[sel], T, y[sel], pred[sel]),
                               rtol=1e-12)  # fmt: skip
    table = au.stereotype_logit_table(sums, count, terminal)
    full = np.full(n, -1)
    full[loc] = pred[loc]
    old = stereotype_logit_scores(ht, terminal, T, y, a_loc, full, 1.0)  # the frozen copy
    np.testing.assert_allclose(table["stereo_logit"], old["stereo_logit"], rtol=1e-12)
    with pytest.raises(RuntimeError, match="before the first update"):
        acc.add_means(loc)


def test_bias_textspan_from_moments_equals_bias_textspan():
    from clipbias.methods import audit as au
    from clipbias.methods.textspan import augment_pool
    from clipbias.streaming import HeadMoments

    rng = np.random.default_rng(8)
    heads = rng.normal(0, 1, (500, 2, 3, 10)) * np.linspace(2, 0.2, 10)
    heads = (heads + rng.normal(0, 2, (2, 3, 10))).astype(np.float32)
    general = [f"g{i}" for i in range(30)]
    bias = [f"b{i}" for i in range(8)]
    texts, _ = augment_pool(general, bias)
    emb = rng.normal(0, 1, (len(texts), 10))
    ref_table, ref_stats = au.bias_textspan(heads, [10, 11], texts, emb, bias, m=6, rank=7)
    mom = HeadMoments([10, 11], 3, 10)
    for part in np.array_split(heads, 4):
        mom.update(part)
    table, stats = au.bias_textspan_from_moments(mom, texts, emb, bias, m=6, rank=7)
    pd.testing.assert_frame_equal(table, ref_table, rtol=1e-9)
    pd.testing.assert_frame_equal(stats, ref_stats, rtol=1e-9)
    with pytest.raises(ValueError, match="not in the pool"):
        au.bias_textspan_from_moments(mom, general, emb[:30], bias)
