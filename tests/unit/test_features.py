"""Parquet feature shards: schema, round trips, manifest verification, projection, streaming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clipbias.features import (
    FeatureError,
    FeatureSet,
    build_table,
    read_classifier,
    shard_bounds,
    write_classifier,
    write_manifest,
    write_shard,
)

L, H, D = 3, 2, 8


def _index(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"img{offset + i}" for i in range(n)],
            "path": [f"images/{offset + i}.png" for i in range(n)],
            "split": ["val" if i % 2 else "test" for i in range(n)],
            "label": np.arange(n) % 2,
            "group": np.arange(n) % 4,
            "attr_background": (np.arange(n) // 2) % 2,
        }
    )


def _arrays(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    heads = rng.normal(size=(n, L, H, D)).astype(np.float32) * 0.1
    rest = rng.normal(size=(n, D)).astype(np.float32) * 0.1
    emb = heads.sum((1, 2)) + rest
    return heads, rest, emb


def _write_set(folder, n_shards=3, rows=5, dtype="float32"):
    paths, truth = [], []
    meta = {"layers": list(range(L)), "n_heads": H, "dim": D, "dtype": dtype, "model": "toy"}
    for s in range(n_shards):
        idx = _index(rows, offset=s * rows)
        heads, rest, emb = _arrays(rows, seed=s)
        norm = np.ones(rows, np.float32)
        table = build_table(idx, heads, rest, emb, norm, norm, norm, list(range(L)), dtype, meta)
        p = folder / f"shard-{s:05d}.parquet"
        write_shard(table, p)
        paths.append(p)
        truth.append((idx, heads, rest, emb))
    write_manifest(paths, folder / "manifest.json")
    return paths, truth


@pytest.mark.parametrize("n,k", [(10, 3), (3, 5), (0, 2), (7, 1)])
def test_shard_bounds_partition_rows(n, k):
    bounds = [shard_bounds(n, k, s) for s in range(k)]
    covered = [i for a, b in bounds for i in range(a, b)]
    assert covered == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_float32_round_trip_is_exact(tmp_path):
    _, truth = _write_set(tmp_path)
    fs = FeatureSet.open(tmp_path)
    idx, heads, rest = fs.load()
    assert np.array_equal(heads, np.concatenate([t[1] for t in truth]))
    emb = np.concatenate([t[3] for t in truth])
    np.testing.assert_allclose(heads.sum((1, 2)) + rest, emb, atol=1e-6)
    assert idx["image_id"].tolist() == [f"img{i}" for i in range(15)]
    assert list(idx.columns[:5]) == ["image_id", "path", "split", "label", "group"]


def test_float16_round_trip_within_tolerance_same_argmax(tmp_path):
    _, truth = _write_set(tmp_path, dtype="float16")
    fs = FeatureSet.open(tmp_path)
    _, heads, rest = fs.load()
    ref = np.concatenate([t[1] for t in truth])
    assert np.abs(heads - ref).max() < 5e-3
    classifier = np.random.default_rng(1).normal(size=(D, 4)).astype(np.float32)
    emb_ref = np.concatenate([t[3] for t in truth])
    assert np.array_equal(
        ((heads.sum((1, 2)) + rest) @ classifier).argmax(1), (emb_ref @ classifier).argmax(1)
    )


def test_schema_and_metadata(tmp_path):
    paths, _ = _write_set(tmp_path)
    schema = pq.read_schema(paths[0])
    assert schema.field("heads_l00").type.list_size == H * D
    assert schema.field("rest").type.list_size == D
    meta = json.loads(schema.metadata[b"clipbias.meta"])
    assert meta["layers"] == [0, 1, 2] and meta["model"] == "toy"


def test_layer_projection_keeps_sum(tmp_path):
    _, truth = _write_set(tmp_path)
    fs = FeatureSet.open(tmp_path)
    _, heads, rest = fs.load(layers=[2])
    assert heads.shape == (15, 1, H, D)
    emb = np.concatenate([t[3] for t in truth])
    np.testing.assert_allclose(heads.sum((1, 2)) + rest, emb, atol=1e-6)
    with pytest.raises(FeatureError, match="not stored"):
        fs.load(layers=[5])


def test_split_filter_and_streaming_aggregates(tmp_path):
    _, truth = _write_set(tmp_path)
    fs = FeatureSet.open(tmp_path)
    idx, heads, _ = fs.load(split="val")
    assert set(idx["split"]) == {"val"}
    means = fs.head_means(split="val")
    np.testing.assert_allclose(means, heads.mean(0), atol=1e-6)
    direction = np.ones(D, np.float32)
    counts = fs.top1_counts(direction, split="val")
    proj = (heads @ direction).reshape(len(heads), -1).argmax(1)
    assert np.array_equal(counts.reshape(-1), np.bincount(proj, minlength=L * H))
    # streaming in small batches gives the same result
    parts = list(fs.iter_batches(split="val", batch_rows=2))
    assert sum(len(p[0]) for p in parts) == len(idx)


def test_corrupt_shard_is_detected_by_manifest(tmp_path):
    paths, _ = _write_set(tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    fs = FeatureSet.open(tmp_path)  # shards are checked before their data is first used
    for read in (fs.load, fs.index, fs.verify_all):
        with pytest.raises(FeatureError) as e:
            read()
        assert str(paths[1]) in str(e.value) and "rerun" in str(e.value)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FeatureError, match="manifest.json"):
        FeatureSet.open(tmp_path)


def test_failed_write_leaves_nothing(tmp_path):
    idx = _index(2)
    heads, rest, emb = _arrays(2)
    ones = np.ones(2, np.float32)
    table = build_table(idx, heads, rest, emb, ones, ones, ones, [0, 1, 2], "float32", {})
    target = tmp_path / "shard-00000.parquet"

    class Boom(Exception):
        pass

    import clipbias.features as F

    orig = F.pq.write_table

    def failing(tbl, where, **kw):
        orig(tbl, where, **kw)
        raise Boom

    F.pq.write_table = failing
    try:
        with pytest.raises(Boom):
            write_shard(table, target)
    finally:
        F.pq.write_table = orig
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_classifier_round_trip(tmp_path):
    emb = np.eye(3, D, dtype=np.float32)
    write_classifier(tmp_path / "c.parquet", ["a", "b", "c"], emb, {"templates": ["x {}"]})
    names, clf, meta = read_classifier(tmp_path / "c.parquet")
    assert names == ["a", "b", "c"] and clf.shape == (D, 3)
    assert np.array_equal(clf.T, emb) and meta["templates"] == ["x {}"]


def test_manifest_refuses_shard_corrupted_after_write(tmp_path):
    paths, _ = _write_set(tmp_path)
    (tmp_path / "manifest.json").unlink()
    data = bytearray(paths[0].read_bytes())
    data[100] ^= 0xFF  # bit rot that keeps the Parquet footer readable
    paths[0].write_bytes(bytes(data))
    with pytest.raises(FeatureError) as e:
        write_manifest(paths, tmp_path / "manifest.json")
    assert str(paths[0]) in str(e.value) and "rerun" in str(e.value)
    assert not (tmp_path / "manifest.json").exists()


def test_stale_partial_from_killed_write_is_removed(tmp_path):
    stale = tmp_path / ".shard-00000.parquet.abc123.partial"
    stale.write_bytes(b"half a shard")
    _write_set(tmp_path, n_shards=1)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "shard-00000.parquet",
        "shard-00000.parquet.sha256",
    ]
