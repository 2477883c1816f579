"""The rehearsal's package parts: random weights of a real architecture (with the tag's
activation and normalisation), the path-based marker every writer stamps, the text cap."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from clipbias import io, rehearsal
from clipbias.methods.texts import capped

REPO = Path(__file__).resolve().parents[2]
REH = "results/ltc_waterbirds-rehearsal"


def test_weights_stem_of_tags_and_paths():
    assert rehearsal.weights_stem("ViT-L-14", "laion2b_s32b_b82k") == "ViT-L-14__laion2b_s32b_b82k"
    a = rehearsal.weights_stem("ViT-B-16", "ckpt/my model.safetensors")
    b = rehearsal.weights_stem("ViT-B-16", "other/my model.safetensors")
    assert a.startswith("ViT-B-16__my_model-") and a != b  # the path's hash keeps them apart
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def test_smallest_ranks_real_architectures_by_vision_flops():
    cost = {n: rehearsal.vision_cost(n) for n in ("ViT-B-16", "ViT-L-14", "ViT-H-14")}
    assert cost["ViT-B-16"] < cost["ViT-L-14"] < cost["ViT-H-14"]
    # 12 x 768^2 x 197 tokens
    assert cost["ViT-B-16"] == 12 * 768**2 * (14 * 14 + 1)
    models = [{"name": "ViT-H-14"}, {"name": "ViT-B-16"}, {"name": "ViT-L-14"}]
    assert rehearsal.smallest(models)["name"] == "ViT-B-16"
    assert rehearsal.vision_cost("no-such-model") == float("inf")
    assert rehearsal.vision_cost("planted-vit-tiny") < cost["ViT-B-16"]  # clipbias's configs


def test_random_weights_keep_the_tags_architecture_and_are_reproducible(tmp_path):
    from clipbias.io import sha256_file
    from clipbias.models import load_model

    # openai weights were trained with QuickGELU: the stand-in must be built with it too
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    meta = rehearsal.make_random_weights("ViT-B-32", "openai", a, seed=3)
    rehearsal.make_random_weights("ViT-B-32", "openai", b, seed=3)
    assert sha256_file(a) == sha256_file(b)  # canonical header: a function of the content
    assert meta["clipbias.rehearsal_of"] == "ViT-B-32/openai"
    settings = rehearsal.checkpoint_settings(a)
    assert settings["quick_gelu"] is True and settings["rehearsal"] == rehearsal.BANNER
    loaded = load_model("ViT-B-32", str(a), "cpu")
    assert loaded.quick_gelu_forced
    assert type(loaded.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    prov = loaded.provenance()
    assert prov["rehearsal"] == rehearsal.BANNER and prov["rehearsal_of"] == "ViT-B-32/openai"
    norm = loaded.preprocess.transforms[-1]
    assert tuple(round(x, 4) for x in norm.mean) == (0.4815, 0.4578, 0.4082)
    # another seed, other weights
    c = tmp_path / "c.safetensors"
    rehearsal.make_random_weights("ViT-B-32", "openai", c, seed=4)
    assert sha256_file(c) != sha256_file(a)


def test_canonical_header_sorts_keys_in_place(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "x.safetensors"
    save_file({"b": np.ones(3, np.float32), "a": np.zeros(2, np.float32)}, str(path), {"z": "1"})
    before = load_file(str(path))
    rehearsal.canonical_header(path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].decode().rstrip()
    assert list(json.loads(header)) == sorted(json.loads(header))
    after = load_file(str(path))
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_the_marker_follows_the_rehearsal_folder(tmp_path):
    assert io.rehearsal_banner(f"{REH}/metrics/x.csv") == io.REHEARSAL_BANNER
    assert io.rehearsal_banner("results/ltc_waterbirds/metrics/x.csv") is None
    assert io.rehearsal_banner("results/x-rehearsal") is None  # the folder itself, not inside
    root = tmp_path / "results" / "exp-rehearsal"
    io.write_json(root / "a.json", {"S": [1]})
    assert json.loads((root / "a.json").read_text()) == {"rehearsal": io.REHEARSAL_BANNER, "S": [1]}
    io.write_json(tmp_path / "b.json", {"S": [1]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"S": [1]}
    df = pd.DataFrame({"method": ["a#b", "c"], "value": [1.0, 2.0]})
    io.write_csv(df, root / "t.csv", comments=["caption line 1\nline 2"])
    text = (root / "t.csv").read_text().splitlines()
    assert text[:3] == [f"# {io.REHEARSAL_BANNER}", "# caption line 1", "# line 2"]
    assert io.read_csv(root / "t.csv").equals(df)  # a '#' inside the table is data
    assert io.csv_comments(root / "t.csv")[0] == io.REHEARSAL_BANNER
    io.write_csv(pd.DataFrame(), root / "empty.csv")
    assert io.read_csv(root / "empty.csv").empty
    table = pa.table({"x": [1]}).replace_schema_metadata({"k": "v"})
    stamped = io.stamp_table(table, root / "p.parquet")
    assert stamped.schema.metadata[b"clipbias.rehearsal"] == io.REHEARSAL_BANNER.encode()
    assert stamped.schema.metadata[b"k"] == b"v"
    assert io.stamp_table(table, tmp_path / "p.parquet") is table
    assert io.stamped_metadata(root / "w.safetensors", {"format": "pt"}) == {
        "format": "pt",
        "clipbias.rehearsal": io.REHEARSAL_BANNER,
    }


def test_sage_class_templates_in_a_rehearsal_folder_carry_the_marker(tmp_path):
    """Found by the suite's rehearsal cells: class_templates.parquet (rule
    encode_class_templates) was the one unmarked artifact of a rehearsal."""
    import pyarrow.parquet as pq

    from clipbias.methods.sage import read_class_templates, write_class_templates

    path = tmp_path / "results" / "exp-rehearsal" / "features" / "class_templates.parquet"
    write_class_templates(path, ["a {}"], ["x", "y"], np.eye(2, 3))
    meta = pq.read_schema(path).metadata
    assert meta[b"clipbias.rehearsal"] == io.REHEARSAL_BANNER.encode()
    assert read_class_templates(path)[0] == ["a {}"]


def test_figures_in_a_rehearsal_folder_carry_the_banner(tmp_path):
    from PIL import Image

    from clipbias import plots

    out = tmp_path / "results" / "exp-rehearsal" / "figures" / "f"
    fig = plots.new_figure(3, 2)
    fig.add_subplot().plot([0, 1], [0, 1])
    paths = plots.save_figure(fig, out)
    assert any(t.get_text() == io.REHEARSAL_BANNER for t in fig.texts)
    with Image.open(paths["png"]) as im:
        assert im.text["Comment"] == io.REHEARSAL_BANNER
    # the PDF's Info /Subject (UTF-16 because of the dash)
    assert "REHEARSAL".encode("utf-16-be") in paths["pdf"].read_bytes()
    plain = plots.new_figure(3, 2)
    plots.save_figure(plain, tmp_path / "g")
    assert not plain.texts


def test_capped_keeps_an_evenly_spaced_subset_in_order():
    texts = [f"t{i}" for i in range(10)]
    assert capped(texts, 0) == texts and capped(texts, 20) == texts
    assert capped(texts, 4) == ["t0", "t2", "t5", "t7"]
    assert capped(texts, 1) == ["t0"]


@pytest.mark.parametrize("cap", [0, 5])
def test_method_texts_cap_only_the_general_pool(cap):
    from clipbias.methods.texts import method_texts

    spec = {"pool": ["a dataset text"], "attribute_prompts": {"default": ["a", "b"]}}
    full = method_texts(spec)["pool"]
    got = method_texts(spec, pool_cap=cap)["pool"]
    assert got[-1] == "a dataset text" and got[0] == full[0]
    assert len(got) == (len(full) if cap == 0 else cap + 1)


def test_prepare_marks_a_fixture_and_a_real_run_refuses_one(tmp_path):
    from clipbias.data.fixtures import write_extracted
    from clipbias.stages.data import prepare_dataset

    registry = REPO / "config" / "datasets.yaml"
    extracted = tmp_path / "waterbirds" / "extracted"
    write_extracted("waterbirds", extracted, image_size=16)
    with pytest.raises(ValueError, match="holds a rehearsal fixture"):
        prepare_dataset(registry, "waterbirds", extracted, tmp_path / "waterbirds")
    assert not (tmp_path / "waterbirds" / "index.parquet").exists()
    prepare_dataset(registry, "waterbirds", extracted, tmp_path / "waterbirds", rehearsal=True)
    meta = json.loads((tmp_path / "waterbirds" / "dataset.json").read_text())
    assert meta["rehearsal"] == rehearsal.BANNER and meta["classes"] == ["landbird", "waterbird"]


def test_imagenet_classifier_subset_keeps_the_mapping():
    from clipbias.labels import (
        capped_imagenet_subset,
        classifier_class_names,
        classifier_labels,
        imagenet_class_names,
    )

    meta = {"classifier_classes": "imagenet_1k", "imagenet_1k_indices": [2, 10, 100]}
    assert len(classifier_class_names(meta)) == 1000
    np.testing.assert_array_equal(classifier_labels([0, 2, 1], meta), [2, 100, 10])
    subset = capped_imagenet_subset([2, 10, 100], 5)
    assert len(subset) == 5 and {2, 10, 100} <= set(subset) and subset == sorted(subset)
    capped = {**meta, "classifier_subset": subset}
    names = classifier_class_names(capped)
    np.testing.assert_array_equal(
        [names[c] for c in classifier_labels([0, 2, 1], capped)],
        [imagenet_class_names()[i] for i in (2, 100, 10)],
    )
    with pytest.raises(ValueError, match="include every class"):
        classifier_labels([0], {**meta, "classifier_subset": [2, 10]})
