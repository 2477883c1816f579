"""Streamed stages give what the whole-split code gave: the bounded reader, LTC locate,
TextSpan from sufficient statistics, and the planted ground truth (clipbias.streaming)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import clipbias.features as F
from clipbias import streaming
from clipbias.features import FeatureSet, build_table, write_classifier, write_manifest
from clipbias.ground_truth import planted_ground_truth_tables
from clipbias.methods import ltc
from clipbias.methods.texts import write_method_texts
from clipbias.methods.textspan import (
    textspan,
    textspan_from_moments,
    textspan_heads,
    textspan_heads_from_moments,
)
from clipbias.stages import evaluate, locate

LAYERS = [1, 2, 3]
N_LAYERS, N_HEADS, DIM = 4, 3, 6


def _rows(rng, n, split):
    labels = rng.integers(0, 2, n)
    bg = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    heads = 0.3 * rng.standard_normal((n, len(LAYERS), N_HEADS, DIM))
    heads[:, 2, 0, 0] += 1.0 * (2 * bg - 1)  # a background head
    heads[:, 2, 0, 1] += 0.3 * (2 * bg - 1)  # ... that also pushes class 1 on water
    heads[:, 1, 1, 1] += 0.6 * (2 * labels - 1)  # a class head
    heads[..., 2:] += 0.5  # a large mean (outside the class plane), as head contributions have
    rest = 0.2 * rng.standard_normal((n, DIM))
    index = pd.DataFrame(
        {
            "image_id": [f"{split}_{i:05d}" for i in range(n)],
            "path": [f"{split}/{i}.png" for i in range(n)],
            "split": split,
            "label": labels,
            "group": 2 * labels + bg,
            "attr_background": bg,
        }
    )
    return index, heads.astype(np.float32), rest.astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three shards with interleaved val/test rows (the third with row groups of 16 rows),
    classifier, attribute prompts and a text pool."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(7)
    parts = [_rows(rng, 260, "val"), _rows(rng, 140, "test")]
    order = rng.permutation(400)
    index = pd.concat([p[0] for p in parts], ignore_index=True).iloc[order].reset_index(drop=True)
    heads = np.concatenate([p[1] for p in parts])[order]
    rest = np.concatenate([p[2] for p in parts])[order]
    emb = heads.sum((1, 2)) + rest
    meta = {"layers": LAYERS, "n_layers": N_LAYERS, "n_heads": N_HEADS, "dim": DIM,
            "head_dim": 2}  # fmt: skip
    ones = np.ones(400, np.float32)
    shards = []
    for s, (a, b) in enumerate([(0, 150), (150, 300), (300, 400)]):
        sl = slice(a, b)
        table = build_table(index.iloc[sl], heads[sl], rest[sl], emb[sl], ones[sl], ones[sl],
                            ones[sl], LAYERS, "float32", meta)  # fmt: skip
        path = root / f"shard-{s:05d}.parquet"
        if s == 2:  # small row groups (what write_shard does for wide rows)
            with pq.ParquetWriter(path, table.schema) as w:
                w.write_table(table, row_group_size=16)
            (root / f"{path.name}.sha256").write_text(f"{F.sha256_file(path)}  {path.name}\n")
        else:
            F.write_shard(table, path)
        shards.append(path)
    write_manifest(shards, root / "manifest.json")
    cls = np.zeros((2, DIM), np.float32)
    cls[0, :2] = 0.6, -0.8
    cls[1, :2] = 0.6, 0.8
    write_classifier(root / "classifier.parquet", ["a", "b"], cls, {})
    texts = {"pool": [f"text {i}" for i in range(15)], "attribute": ["land", "water"]}
    temb = rng.standard_normal((17, DIM))
    temb[15] = [0, 0, 0, 0, 0, 0]
    temb[15, 0], temb[16, 0] = -1.0, 1.0  # land / water along the background head
    write_method_texts(root / "texts.parquet", texts, temb)
    dmeta = {"classes": ["a", "b"], "group_names": ["a0", "a1", "b0", "b1"],
             "minority_groups": [1, 2], "spurious_attribute": "background",
             "attributes": {"background": ["land", "water"]},
             "majority_background": {"a": "land", "b": "water"}}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(dmeta))
    return root, index, heads, rest, cls.T


@pytest.fixture
def small_batches(monkeypatch):
    """Every streamed stage reads batches of at most 7 rows."""
    monkeypatch.setattr(F, "MAX_BATCH_ROWS", 7)


# ------------------------------------------------------------------------------- reader


def test_reader_streams_every_split_in_order(store, small_batches):
    root, index, heads, rest, _ = store
    fs = FeatureSet.open(root)
    assert fs.batch_rows() == 7
    for split in ("val", "test", None):
        keep = np.ones(len(index), bool) if split is None else (index["split"] == split).to_numpy()
        parts = list(fs.iter_batches(split=split))
        assert max(len(p[0]) for p in parts) <= 7
        idx = pd.concat([p[0] for p in parts], ignore_index=True)
        assert idx["image_id"].tolist() == index.loc[keep, "image_id"].tolist()
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), heads[keep])
        got_rest = np.concatenate([p[2] for p in parts])
        np.testing.assert_allclose(got_rest, rest[keep], atol=1e-6)
    # rest=False does not read the embedding; a layer subset keeps the sum
    _, h, r = next(fs.iter_batches(layers=[3], split="val", rest=False))
    assert r is None and h.shape[1:] == (1, N_HEADS, DIM)


def test_row_groups_without_the_split_are_skipped(tmp_path):
    idx = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "path": list("abcd"),
                        "split": ["val", "val", "test", "test"], "label": [0, 1, 0, 1],
                        "group": [0, 1, 2, 3]})  # fmt: skip
    h = np.zeros((4, 1, 1, 2), np.float32)
    one = np.ones(4, np.float32)
    meta = {"layers": [0], "n_heads": 1, "dim": 2}
    table = build_table(idx, h, one[:, None] * [1, 2], one[:, None] * [1, 2], one, one, one,
                        [0], "float32", meta)  # fmt: skip
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=2)
    pf = pq.ParquetFile(tmp_path / "s.parquet")
    assert F._row_groups_with(pf, "split", "val") == [0]
    assert F._row_groups_with(pf, "split", "test") == [1]
    assert F._row_groups_with(pf, "split", "train") == []
    assert F._row_groups_with(pf, "split", None) == [0, 1]


def test_shards_without_the_split_are_neither_read_nor_hashed(tmp_path):
    shards = []
    for s, split in enumerate(["val", "test", "val"]):
        idx = pd.DataFrame({"image_id": [f"{s}{i}" for i in range(3)], "path": list("abc"),
                            "split": split, "label": [0, 1, 0], "group": [0, 1, 2]})  # fmt: skip
        h = np.full((3, 1, 1, 2), s, np.float32)
        one = np.ones(3, np.float32)
        table = build_table(idx, h, one[:, None] * [1, 2], one[:, None] * [1, 2], one, one, one,
                            [0], "float32", {"layers": [0], "n_heads": 1, "dim": 2})  # fmt: skip
        F.write_shard(table, tmp_path / f"shard-{s:05d}.parquet")
        shards.append(tmp_path / f"shard-{s:05d}.parquet")
    manifest = write_manifest(shards, tmp_path / "manifest.json")
    assert [e["splits"] for e in manifest["shards"]] == [{"val": 3}, {"test": 3}, {"val": 3}]
    shards[1].write_bytes(b"garbage")  # the test shard is corrupt
    fs = FeatureSet.open(tmp_path)
    _, heads, _ = fs.load(split="val")
    assert heads[:, 0, 0, 0].tolist() == [0, 0, 0, 2, 2, 2]
    assert fs.index("val")["image_id"].tolist() == ["00", "01", "02", "20", "21", "22"]
    with pytest.raises(F.FeatureError, match="shard-00001.parquet is corrupt"):
        fs.load(split="test")
    with pytest.raises(F.FeatureError, match="shard-00001.parquet is corrupt"):
        fs.index()


def test_default_batch_rows_follow_the_row_width(store):
    fs = FeatureSet.open(store[0])
    assert fs.batch_rows() == F.MAX_BATCH_ROWS  # tiny rows
    fs.meta = {**fs.meta, "layers": list(range(32)), "n_heads": 16, "dim": 1024}
    # ViT-H-14: all 32 layers vs the last 4
    assert fs.batch_rows() == F.BATCH_BYTES // (F.BYTES_PER_VALUE * (32 * 16 * 1024 + 1024))
    assert fs.batch_rows(layers=[28, 29, 30, 31], rest=False) == F.BATCH_BYTES // (
        F.BYTES_PER_VALUE * 4 * 16 * 1024
    )
    assert 30 < fs.batch_rows() < 100


def test_write_shard_bounds_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "ROW_GROUP_BYTES", 10 * (2 * 3 * 8 + 8 + 8) * 4)
    idx = pd.DataFrame({"image_id": [str(i) for i in range(35)], "path": ["p"] * 35,
                        "split": ["val"] * 35, "label": [0] * 35, "group": [0] * 35})  # fmt: skip
    h = np.ones((35, 2, 3, 8), np.float32)
    one = np.ones(35, np.float32)
    meta = {"layers": [0, 1], "n_heads": 3, "dim": 8}
    table = build_table(idx, h, np.ones((35, 8)), np.ones((35, 8)), one, one, one, [0, 1],
                        "float32", meta)  # fmt: skip
    F.write_shard(table, tmp_path / "s.parquet")
    md = pq.read_metadata(tmp_path / "s.parquet")
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10, 10, 10, 5]


# ------------------------------------------------------------------------------- LTC locate


def _reference_ltc(root, use_group_labels):
    """What stages.locate.locate_ltc wrote before streaming: the whole split in memory."""
    from clipbias.methods.texts import read_method_texts, unit_rows

    meta = json.loads((root / "dataset.json").read_text())
    names, classifier, _ = F.read_classifier(root / "classifier.parquet")
    fs = FeatureSet.open(root)
    idx, heads, rest = fs.load(split="val")
    labels, groups = idx["label"].to_numpy(), idx["group"].to_numpy()
    acc = None
    if not use_group_labels:
        attr = unit_rows(read_method_texts(root / "texts.parquet")["attribute"][1])
        groups, s_hat = ltc.infer_groups(heads.sum((1, 2)) + rest, attr.T, labels)
        acc = float(np.mean(s_hat == idx["attr_background"].to_numpy()))
    out = {}
    for variant in ("groups", "full"):
        res = ltc.locate_ltc(heads, rest, classifier, labels, fs.layers, groups=groups,
                             minority_groups=meta["minority_groups"], variant=variant,
                             class_names=names)  # fmt: skip
        out[variant] = locate._ltc_json(res, "val", use_group_labels, acc)
    return out


@pytest.mark.parametrize("use_group_labels", [True, False])
def test_streamed_locate_ltc_writes_the_same_json(store, small_batches, tmp_path, use_group_labels):
    root = store[0]
    expected = _reference_ltc(root, use_group_labels)
    locate.locate_ltc(root, root / "dataset.json", root / "texts.parquet", tmp_path / "g.json",
                      tmp_path / "f.json", split="val", use_group_labels=use_group_labels)  # fmt: skip
    got_g = json.loads((tmp_path / "g.json").read_text())
    got_f = json.loads((tmp_path / "f.json").read_text())
    assert got_g == json.loads(json.dumps(expected["groups"]))
    assert got_f == json.loads(json.dumps(expected["full"]))
    assert got_g["spurious"] or got_g["salient"]
    if not use_group_labels:
        assert got_g["attribute_accuracy"] > 0.6


def test_ltc_samples_with_candidates_match_whole_split(store, small_batches):
    root, index, heads, rest, cls = store
    fs = FeatureSet.open(root)
    keep = (index["split"] == "val").to_numpy()
    # per-sample candidate classes from index columns (GenderBias-style two-way classifiers)
    samples = streaming.ltc_samples(fs, cls, "val", candidate_columns=["label", "attr_background"])
    cand = np.stack([index["label"], index["attr_background"]], axis=1)[keep]
    delta, preds, _ = ltc.head_margins(heads[keep], rest[keep], cls, index["label"][keep], cand)
    np.testing.assert_array_equal(samples.winners, ltc.top_heads(delta))
    np.testing.assert_array_equal(samples.preds, preds)


# ------------------------------------------------------------------------------- TextSpan


@pytest.mark.parametrize("k,d,rank", [(300, 12, 8), (40, 64, None), (200, 16, 80)])
def test_textspan_from_moments_equals_textspan(k, d, rank):
    rng = np.random.default_rng(k + d)
    basis = rng.standard_normal((5, d))
    C = rng.standard_normal((k, 5)) * [3, 2, 1.5, 1, 0.5] @ basis + 2.0 * rng.standard_normal(d)
    C += 0.01 * rng.standard_normal((k, d))
    texts = rng.standard_normal((40, d))
    ref = textspan(C, texts, m=12, rank=rank)
    mom = streaming.HeadMoments([0], 1, d)
    for part in np.array_split(C, 5):  # several batches
        mom.update(part[:, None, None, :])
    got = textspan_from_moments(mom.mean(0, 0), mom.gram(0, 0), mom.centred_gram(0, 0),
                                mom.count, texts, m=12, rank=rank)  # fmt: skip
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.ve, ref.ve, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got.cum_ve, ref.cum_ve, rtol=0, atol=1e-8)
    assert got.rank == ref.rank
    assert got.total_variance == pytest.approx(ref.total_variance, rel=1e-10)
    assert got.reconstruction is None
    # the second-pass reconstruction equals textspan's
    np.testing.assert_allclose(got.reconstruct(C), ref.reconstruction, atol=1e-5)
    np.testing.assert_allclose(ref.reconstruct(C), ref.reconstruction, atol=1e-5)


def test_head_moments_equal_direct_sums():
    rng = np.random.default_rng(3)
    h = (rng.standard_normal((50, 2, 3, 4)) + 100.0).astype(np.float32)
    mom = streaming.HeadMoments([5, 6], 3, 4)
    for part in np.array_split(h, 4):
        mom.update(part)
    x = h[:, 1, 2].astype(np.float64)
    np.testing.assert_allclose(mom.mean(1, 2), x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(mom.gram(1, 2), x.T @ x, rtol=1e-12)
    xc = x - x.mean(0)
    np.testing.assert_allclose(mom.centred_gram(1, 2), xc.T @ xc, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="moments of"):
        mom.update(h[:, :1])


def test_streamed_textspan_stage_equals_whole_split(store, small_batches, tmp_path):
    root, index, heads, _, _ = store
    from clipbias.methods.texts import read_method_texts, unit_rows

    keep = (index["split"] == "val").to_numpy()
    last = [2, 3]  # the model's last 2 layers
    texts, emb = read_method_texts(root / "texts.parquet")["pool"]
    ref = textspan_heads(heads[keep][:, 1:], last, unit_rows(emb), texts, m=4, rank=4)
    locate.textspan(root, root / "texts.parquet", tmp_path / "ts.csv", "val", last_layers=2,
                    m=4, rank=4)  # fmt: skip
    got = pd.read_csv(tmp_path / "ts.csv", keep_default_na=False)
    assert got[["layer", "head", "head_id", "rank", "text_index", "text"]].equals(
        ref[["layer", "head", "head_id", "rank", "text_index", "text"]]
    )
    np.testing.assert_allclose(got["ve"], ref["ve"], atol=1e-8)
    np.testing.assert_allclose(got["cum_ve"], ref["cum_ve"], atol=1e-8)
    # the moments version also returns per-head results that reconstruct in a second pass
    mom = streaming.head_moments(FeatureSet.open(root), last, "val")
    _, results = textspan_heads_from_moments(mom, unit_rows(emb), texts, m=4, rank=4)
    _, recon = textspan_heads(heads[keep][:, 1:], last, unit_rows(emb), texts, m=4, rank=4,
                              return_reconstructions=True)  # fmt: skip
    np.testing.assert_allclose(
        results[(3, 1)].reconstruct(heads[keep][:, 2, 1]), recon[:, 1, 1], atol=1e-5
    )


# ------------------------------------------------------------------------------- ground truth


def test_streamed_ground_truth_equals_whole_split(store, small_batches, tmp_path):
    root, index, heads, rest, cls = store
    keep = (index["split"] == "test").to_numpy()
    meta = json.loads((root / "dataset.json").read_text())
    ref, ref_total = planted_ground_truth_tables(
        index[keep], heads[keep], rest[keep], LAYERS, cls, meta, n_boot=50, seed=1
    )
    evaluate.planted_ground_truth(root, root / "dataset.json", tmp_path / "gt.csv",
                                  tmp_path / "total.csv", "test", n_boot=50, seed=1)  # fmt: skip
    got = pd.read_csv(tmp_path / "gt.csv")
    # no twins and no protected attribute in this store: the associative background table
    assert set(got["kind"]) == {"associative"} and set(got["attribute"]) == {"background"}
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12, atol=1e-14)
    assert len(ref_total) == 0 and len(pd.read_csv(tmp_path / "total.csv")) == 0
    assert got.loc[got["rank"] == 1, "head_id"].item() == "L3H0"


def test_map_batches_rejects_wrong_row_counts(store, small_batches):
    fs = FeatureSet.open(store[0])
    with pytest.raises(ValueError, match="returned 1 rows"):
        streaming.map_batches(fs, lambda idx, h, r: (np.zeros(1),), split="val")
    with pytest.raises(F.FeatureError, match="not in the features"):
        streaming.map_batches(fs, lambda idx, h, r: (np.zeros(len(idx)),), split="train")


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory):
    """60 test rows and their background twins (same noise, background flipped), interleaved
    over two shards whose boundaries split the two splits differently."""
    root = tmp_path_factory.mktemp("twins")
    rng = np.random.default_rng(3)
    index, heads, rest = _rows(rng, 60, "test")
    bg = index["attr_background"].to_numpy()
    twin_h = heads.copy()
    flip = (1 - 2 * bg).astype(np.float32)  # the background head's terms change sign
    twin_h[:, 2, 0, 0] += 2.0 * flip
    twin_h[:, 2, 0, 1] += 0.6 * flip
    twin_idx = index.assign(
        image_id=index["image_id"] + "|background",
        split="twin_background",
        attr_background=1 - bg,
        group=2 * index["label"] + (1 - bg),
    )
    order = np.argsort(np.r_[np.arange(60) * 2.0, np.arange(60) * 2.0 + 1.5], kind="stable")
    all_idx = pd.concat([index, twin_idx], ignore_index=True).iloc[order].reset_index(drop=True)
    all_h = np.concatenate([heads, twin_h])[order]
    all_r = np.concatenate([rest, rest])[order]
    emb = all_h.sum((1, 2)) + all_r
    meta = {"layers": LAYERS, "n_layers": N_LAYERS, "n_heads": N_HEADS, "dim": DIM,
            "head_dim": 2}  # fmt: skip
    ones = np.ones(len(all_idx), np.float32)
    shards = []
    for s, (a, b) in enumerate([(0, 47), (47, 120)]):
        sl = slice(a, b)
        table = build_table(all_idx.iloc[sl], all_h[sl], all_r[sl], emb[sl], ones[sl], ones[sl],
                            ones[sl], LAYERS, "float32", meta)  # fmt: skip
        F.write_shard(table, root / f"shard-{s:05d}.parquet")
        shards.append(root / f"shard-{s:05d}.parquet")
    write_manifest(shards, root / "manifest.json")
    cls = np.zeros((2, DIM), np.float32)
    cls[0, :2] = 0.6, -0.8
    cls[1, :2] = 0.6, 0.8
    write_classifier(root / "classifier.parquet", ["a", "b"], cls, {})
    dmeta = {"classes": ["a", "b"], "group_names": ["a0", "a1", "b0", "b1"],
             "minority_groups": [1, 2], "spurious_attribute": "background",
             "attributes": {"background": ["land", "water"]},
             "majority_background": {"a": "land", "b": "water"}}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(dmeta))
    return root, heads, twin_h


def test_streamed_output_sensitivity_equals_whole_arrays(twin_store, small_batches, tmp_path):
    """The ground-truth stage pairs each test row with its twin across batch and shard
    boundaries (batches of 7 rows, shards cutting the splits at different rows)."""
    from clipbias.ground_truth import output_sensitivity

    root, heads, twin_h = twin_store
    evaluate.planted_ground_truth(root, root / "dataset.json", tmp_path / "gt.csv",
                                  tmp_path / "total.csv", "test", n_boot=30, seed=2)  # fmt: skip
    got = pd.read_csv(tmp_path / "gt.csv")
    assert set(got["kind"]) == {"causal", "associative", "output"}
    out = got[got["kind"] == "output"].reset_index(drop=True)
    ref = output_sensitivity(heads, twin_h, LAYERS, n_boot=30, seed=2)
    ref = ref.sort_values("rank").reset_index(drop=True)
    pd.testing.assert_frame_equal(out, ref, check_exact=False, rtol=1e-6, atol=1e-9)
    # the background head moves most; the pure class head (L2H1) is untouched by the swap
    assert out.loc[out["rank"] == 1, "head_id"].item() == "L3H0"
    assert ref.set_index("head_id").loc["L2H1", "effect"] == pytest.approx(0.0, abs=1e-9)


def test_output_sensitivity_rejects_misaligned_twins(twin_store, monkeypatch):
    from clipbias.stages.evaluate import _output_sensitivity

    root = twin_store[0]
    fs = FeatureSet.open(root)

    def reversed_twins(layers, split, rest=True, **kw):  # twins in another order
        batches = list(FeatureSet.iter_batches(fs, layers, split, rest=rest, **kw))
        yield from batches[::-1] if split == "twin_background" else batches

    monkeypatch.setattr(fs, "iter_batches", reversed_twins)
    meta = json.loads((root / "dataset.json").read_text())
    with pytest.raises(ValueError, match="not aligned"):
        _output_sensitivity(fs, meta, "test", ["background"], 10, 0)


def test_head_moments_add_equals_one_accumulation():
    rng = np.random.default_rng(4)
    h = (rng.standard_normal((90, 2, 3, 5)) * 3 + 50.0).astype(np.float32)
    whole = streaming.HeadMoments([1, 2], 3, 5)
    whole.update(h)
    a, b, empty = (streaming.HeadMoments([1, 2], 3, 5) for _ in range(3))
    a.update(h[:30])
    b.update(h[30:50] - 7.0)  # a different shift
    b.update(h[50:] - 7.0)
    b.shift += 7.0  # the same rows as h[30:], shifted around another point
    a.add(b)
    a.add(empty)
    empty.add(a)
    for m in (a, empty):
        assert m.count == 90
        for li in range(2):
            for hh in range(3):
                np.testing.assert_allclose(m.mean(li, hh), whole.mean(li, hh), rtol=1e-12)
                np.testing.assert_allclose(m.gram(li, hh), whole.gram(li, hh), rtol=1e-10)
                np.testing.assert_allclose(m.centred_gram(li, hh), whole.centred_gram(li, hh),
                                           rtol=1e-8, atol=1e-8)  # fmt: skip
    with pytest.raises(ValueError, match="different heads"):
        a.add(streaming.HeadMoments([1], 3, 5))
