"""Stages that read features stream them: peak memory does not grow with the split.

The same stage runs on a feature store of N rows and one of 4N rows, each in a fresh Python
process, and its peak RSS (``VmHWM``) may grow by less than 25 %. The child sets a 16 MiB
batch budget (``clipbias.features.BATCH_BYTES``) so that even N rows span a dozen batches.
A control run of ``FeatureSet.load`` (the whole split in memory, what the stages did
before) must grow by more than 25 % on the same stores, so the test can tell the two apart.
The full-size numbers (ViT-H-14-sized rows) come from ``benchmarks/memory.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from clipbias.features import build_table, write_classifier, write_manifest, write_shard
from clipbias.methods.texts import write_audit_texts, write_method_texts

N = 1500
LAYERS, N_LAYERS, N_HEADS, DIM = [4, 5, 6, 7], 8, 8, 256
GROWTH = 0.25

CHILD = """
import sys
from pathlib import Path
import clipbias.features as F
F.BATCH_BYTES = 16 * 2**20
from clipbias.stages import locate
stage, folder, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if stage == "locate_ltc":
    locate.locate_ltc(folder, folder / "dataset.json", folder / "texts.parquet",
                      out / "ltc.json", out / "ltc_full.json", split="val", threads=1)
elif stage == "textspan":
    locate.textspan(folder, folder / "texts.parquet", out / "textspan.csv", "val",
                    last_layers=4, m=5, threads=1)
elif stage == "audit":
    from clipbias.stages import audit
    audit.audit(folder, folder / "dataset.json", folder / "texts.parquet",
                folder / "audit_texts.parquet", out / "audit", out / "heads_audit.json",
                "val", "val", seed=0, params={"n_boot": 100, "n_draws": 100,
                "textspan": {"m": 10}}, threads=1)
elif stage == "load":
    F.FeatureSet.open(folder).load(split="val")
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) * 1024)
"""

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="peak RSS is read from /proc (Linux)"
)


def _store(folder: Path, rows: int, seed: int) -> Path:
    """A float16 feature store: ``rows`` locate (val) rows in shards of 1,000, classifier,
    texts, audit texts of the background attribute and dataset.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    cls = rng.standard_normal((2, DIM)).astype(np.float32)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    meta = {"layers": LAYERS, "n_layers": N_LAYERS, "n_heads": N_HEADS, "dim": DIM,
            "head_dim": 32, "dtype": "float16"}  # fmt: skip
    shards = []
    for s, start in enumerate(range(0, rows, 1000)):
        n = min(1000, rows - start)
        labels = rng.integers(0, 2, n)
        bg = np.where(rng.random(n) < 0.8, labels, 1 - labels)
        heads = rng.standard_normal((n, len(LAYERS), N_HEADS, DIM), dtype=np.float32) * 0.02
        heads[:, 3, 0] += np.outer(0.05 * (2 * bg - 1), cls[1] - cls[0])
        rest = rng.standard_normal((n, DIM), dtype=np.float32) * 0.02
        emb = heads.sum((1, 2)) + rest
        index = pd.DataFrame({"image_id": [f"i{start + i}" for i in range(n)],
                              "path": [f"{start + i}.png" for i in range(n)], "split": "val",
                              "label": labels, "group": 2 * labels + bg,
                              "attr_background": bg})  # fmt: skip
        one = np.ones(n, np.float32)
        table = build_table(index, heads, rest, emb, one, one, one, LAYERS, "float16", meta)
        write_shard(table, folder / f"shard-{s:05d}.parquet")
        shards.append(folder / f"shard-{s:05d}.parquet")
    write_manifest(shards, folder / "manifest.json")
    write_classifier(folder / "classifier.parquet", ["a", "b"], cls, {})
    texts = {"pool": [f"text {i}" for i in range(200)], "attribute": ["land", "water"]}
    write_method_texts(folder / "texts.parquet", texts, rng.standard_normal((202, DIM)))
    audit_rows = [("background", role, v, f"{v} {role} {i}") for v in ("land", "water")
                  for role, n in (("concept", 5), ("bias", 10)) for i in range(n)]  # fmt: skip
    sign = np.repeat([-1.0, 1.0], 15)[:, None]
    write_audit_texts(
        folder / "audit_texts.parquet",
        pd.DataFrame(audit_rows, columns=["attribute", "role", "value", "text"]),
        rng.standard_normal((30, DIM)) * 0.3 + sign * (cls[1] - cls[0]),
        {"background": {"values": ["land", "water"], "axis": ["water", "land"]}},
    )
    dmeta = {"classes": ["a", "b"], "minority_groups": [1, 2], "spurious_attribute": "background",
             "attributes": {"background": ["land", "water"]}}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(dmeta))
    return folder


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    return _store(root / "n", N, 1), _store(root / "4n", 4 * N, 2)


def peak_rss(stage: str, folder: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", CHILD, stage, str(folder), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", ["locate_ltc", "textspan", "audit"])
def test_peak_memory_does_not_grow_with_rows(stores, tmp_path, stage):
    small, large = stores
    a = peak_rss(stage, small, tmp_path / "a")
    b = peak_rss(stage, large, tmp_path / "b")
    growth = (b - a) / a
    print(f"{stage}: {a / 2**20:.0f} MiB at {N} rows, {b / 2**20:.0f} MiB at {4 * N} rows")
    assert growth < GROWTH, f"{stage}: peak RSS grew {growth:.0%} from {N} to {4 * N} rows"
    if stage == "locate_ltc":  # the outputs are real, not an early exit
        res = json.loads((tmp_path / "b" / "ltc.json").read_text())
        assert res["n_samples"] == 4 * N and "L7H0" in [x["head"] for x in res["spurious"]]
    elif stage == "textspan":
        table = pd.read_csv(tmp_path / "b" / "textspan.csv")
        assert len(table) == 4 * N_HEADS * 5
    else:
        sel = json.loads((tmp_path / "b" / "heads_audit.json").read_text())
        assert sel["attributes"]["background"]["split"]["top_k"][0] == "L7H0"
        summary = json.loads((tmp_path / "b" / "audit" / "summary.json").read_text())
        assert summary["split_sizes"] == {"val": 4 * N}


def test_loading_the_whole_split_would_fail_this_check(stores, tmp_path):
    small, large = stores
    a = peak_rss("load", small, tmp_path / "a")
    b = peak_rss("load", large, tmp_path / "b")
    assert (b - a) / a > GROWTH
