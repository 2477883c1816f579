"""One extraction shard end to end on a tiny random CLIP and a tiny generated dataset."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clipbias.extract import default_workers, extract_shard, image_batches
from clipbias.features import FeatureSet, shard_bounds, write_manifest
from clipbias.models import load_model
from clipbias.synth import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("ds") / "planted", seed=3, n_train=40, n_val=20, n_test=20
    )


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_model("planted-vit-tiny", None, "cpu")


def test_shard_rows_sum_and_manifest(dataset, loaded, tmp_path):
    import pandas as pd

    n_rows = len(pd.read_parquet(dataset / "index.parquet"))  # twin splits included
    paths = []
    for shard in range(3):
        out = tmp_path / f"shard-{shard:05d}.parquet"
        n = extract_shard(loaded, dataset, out, shard, 3, batch_size=7)
        start, stop = shard_bounds(n_rows, 3, shard)
        assert n == stop - start == pq.read_metadata(out).num_rows
        paths.append(out)
    write_manifest(paths, tmp_path / "manifest.json")
    fs = FeatureSet.open(tmp_path)
    idx, heads, rest = fs.load()
    expected = pd.read_parquet(dataset / "index.parquet")["image_id"].tolist()
    assert idx["image_id"].tolist() == expected  # shards in order, rows in index order
    emb = heads.sum((1, 2)) + rest
    with torch.inference_mode():
        from clipbias.extract import load_images

        imgs = load_images(dataset, idx["path"].tolist(), loaded.preprocess)
        ref = torch.nn.functional.normalize(loaded.model.encode_image(imgs), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4)


def test_only_the_requested_splits_are_extracted(dataset, loaded, tmp_path):
    """features.splits: the shards partition the rows of the requested splits in index
    order; a stage that asks for another split gets an error naming features.splits; a
    split that is not in the index is refused before anything is written."""
    import pandas as pd

    from clipbias.features import FeatureError

    index = pd.read_parquet(dataset / "index.parquet")
    wanted = index[index["split"].isin(["test", "twin_background"])]
    paths = [tmp_path / f"shard-{i:05d}.parquet" for i in range(2)]
    for i, out in enumerate(paths):
        extract_shard(loaded, dataset, out, i, 2, batch_size=16, splits=["twin_background", "test"])
    write_manifest(paths, tmp_path / "manifest.json")
    fs = FeatureSet.open(tmp_path)
    assert fs.index()["image_id"].tolist() == wanted["image_id"].tolist()
    assert len(fs.index("test")) == (index["split"] == "test").sum()
    with pytest.raises(FeatureError, match="split 'train' is not in the features.*features.splits"):
        fs.index("train")
    with pytest.raises(FeatureError, match="split 'val' is not in the features"):
        next(fs.iter_batches(split="val"))
    bad = tmp_path / "bad.parquet"
    with pytest.raises(ValueError, match=r"\['holdout'\].*not in .*features.splits"):
        extract_shard(loaded, dataset, bad, 0, 1, splits=["test", "holdout"])
    assert not bad.exists()


def test_loader_workers_do_not_change_the_output(dataset, loaded, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    extract_shard(loaded, dataset, a, 1, 2, batch_size=8, num_workers=0)
    extract_shard(loaded, dataset, b, 1, 2, batch_size=8, num_workers=2)
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)


def test_image_batches_keep_index_order(dataset, loaded):
    import pandas as pd

    paths = pd.read_parquet(dataset / "index.parquet")["path"].tolist()[:10]
    plain = torch.cat(list(image_batches(dataset, paths, loaded.preprocess, 4, 0)))
    workers = torch.cat(list(image_batches(dataset, paths, loaded.preprocess, 4, 2)))
    assert plain.shape[0] == 10 and torch.equal(plain, workers)


def test_default_workers():
    assert default_workers(4, torch.device("cpu")) == 0
    assert default_workers(4, torch.device("cuda")) == 3
    assert default_workers(1, torch.device("cuda")) == 0
    assert default_workers(None, torch.device("cuda")) == 0


def test_unreadable_image_is_named_and_nothing_is_written(dataset, loaded, tmp_path):
    import pandas as pd

    idx = pd.read_parquet(dataset / "index.parquet")
    victim = dataset / idx["path"].iloc[0]
    saved = victim.read_bytes()
    victim.write_bytes(b"not a png")
    try:
        out = tmp_path / "shard-00000.parquet"
        with pytest.raises(FileNotFoundError, match=str(victim.name)):
            extract_shard(loaded, dataset, out, 0, 4, batch_size=8)
        assert not out.exists() and not list(tmp_path.iterdir())
    finally:
        victim.write_bytes(saved)


def test_crop_boxes_are_cut_before_preprocessing(dataset, loaded, tmp_path):
    """FACET-style rows (crop_* columns, several rows per image) embed the cropped region."""
    import pandas as pd
    from PIL import Image

    from clipbias.data.index import read_index

    index, meta = read_index(dataset)
    index = index[index["split"] == "test"].head(4).reset_index(drop=True)
    rows = pd.concat([index, index], ignore_index=True)  # two persons in each image
    rows["image_id"] = [f"{i}_p{k}" for k, i in enumerate(rows["image_id"])]
    rows["crop_x0"], rows["crop_y0"] = [0] * 4 + [8] * 4, [0] * 4 + [4] * 4
    rows["crop_x1"], rows["crop_y1"] = [16] * 4 + [32] * 4, [20] * 4 + [30] * 4
    root = tmp_path / "cropped"
    root.mkdir()
    for rel in rows["path"].unique():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((dataset / rel).read_bytes())
    rows.to_parquet(root / "index.parquet")
    (root / "dataset.json").write_text((dataset / "dataset.json").read_text())
    out = tmp_path / "shard-00000.parquet"
    extract_shard(loaded, root, out, 0, 1, batch_size=3)
    write_manifest([out], tmp_path / "manifest.json")
    _, heads, rest = FeatureSet.open(tmp_path).load()
    with torch.inference_mode():
        crops = [
            loaded.preprocess(Image.open(root / r.path).convert("RGB").crop(
                (r.crop_x0, r.crop_y0, r.crop_x1, r.crop_y1)))
            for r in rows.itertuples()
        ]  # fmt: skip
        ref = loaded.model.encode_image(torch.stack(crops))
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(heads.sum((1, 2)) + rest, ref, atol=1e-4)
    assert not np.allclose(ref[0], ref[4], atol=1e-3)  # two boxes of one image differ
