"""Mixed-precision decomposition (features.precision): the sum invariant checked in the same
precision, the error against float32, and extraction with bfloat16 on the CPU.

Model: ``planted-vit-tiny`` with random weights and perturbed LayerNorm affines / attention
biases (as in test_decompose.py), 64 random images. Measured on the CPU (torch 2.14):

=========  =============  ==================  ======================  =================
precision  Σ ĉ − ê (same  Σ ĉ − ê_float32     Σ ĉ − encode_image      arg-max agreement
           pass)          (max abs)           under the same autocast  with float32
=========  =============  ==================  ======================  =================
bfloat16   2e-7           1.1e-3              3.9e-3                  100 % (100 classes)
float16    2e-7           1.8e-4              4.8e-4                  100 %
=========  =============  ==================  ======================  =================

The tolerances below are these numbers with head-room, and METHODS §1.5's float16 budget
(5e-3, identical arg-max on >= 99.9 %) for the distance to float32.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from test_decompose import make_images, make_model

from clipbias.decompose import decompose, residual_parts
from clipbias.extract import check_sum, extract_shard, load_images
from clipbias.features import FeatureSet, write_manifest
from clipbias.models import load_model, register_model_configs
from clipbias.synth import generate

N_IMAGES, N_CLASSES = 64, 100
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# max |Σ ĉ − ê| against the stock forward under the same autocast (measured 3.9e-3 / 4.8e-4)
STOCK_TOL = {"bfloat16": 1e-2, "float16": 2e-3}


@pytest.fixture(scope="module")
def tiny():
    register_model_configs()
    model = make_model("planted-vit-tiny")
    images = make_images(model, N_IMAGES)
    ref = decompose(model, images)  # float32
    g = torch.Generator().manual_seed(5)
    classifier = F.normalize(torch.randn(ref.embedding.shape[1], N_CLASSES, generator=g), dim=0)
    return model, images, ref, classifier


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_sum_invariant_in_the_same_precision(tiny, precision):
    model, images, ref, classifier = tiny
    dec = decompose(model, images, precision=precision)
    total = dec.total()
    assert dec.heads.dtype == dec.embedding.dtype == torch.float32
    # the parts sum to the embedding of this (mixed-precision) pass to float32 rounding
    assert (total - dec.embedding).abs().max() < 1e-5
    assert F.cosine_similarity(total, dec.embedding).min() > 1 - 1e-6
    # ... which is the stock open_clip forward under the same autocast, up to half rounding
    with torch.inference_mode(), torch.autocast("cpu", dtype=DTYPES[precision]):
        stock = F.normalize(model.encode_image(images).float(), dim=-1)
    assert (total - stock).abs().max() < STOCK_TOL[precision]
    # and within METHODS §1.5's float16 budget of the float32 decomposition
    assert (total - ref.embedding).abs().max() < 5e-3
    agree = ((total @ classifier).argmax(1) == (ref.embedding @ classifier).argmax(1)).float()
    assert agree.mean() >= 0.999
    # per-head terms move by about the same amount as the embedding
    assert (dec.heads - ref.heads).abs().max() < 5e-3
    assert not torch.equal(dec.heads, ref.heads)  # half precision really was used


def test_mixed_residual_parts_sum_to_the_residual(tiny):
    model, images, _, _ = tiny
    parts = residual_parts(model, images[:8], precision="bfloat16")
    total = parts.cls + parts.mlp.sum(1) + parts.heads.sum((1, 2))
    assert parts.residual.dtype == torch.float32
    rel = (total - parts.residual).abs().max() / parts.residual.abs().max()
    assert rel < 1e-5


def test_spatial_terms_in_mixed_precision_sum_to_the_head(tiny):
    model, images, _, _ = tiny
    dec = decompose(model, images[:4], precision="bfloat16", spatial_heads=[(5, 1), (2, 0)])
    for (layer, head), terms in dec.spatial.items():
        assert terms.dtype == torch.float32
        torch.testing.assert_close(terms.sum(1), dec.heads[:, layer, head], atol=1e-5, rtol=0)


def test_precision_arguments_are_checked(tiny):
    model, images, _, _ = tiny
    with pytest.raises(ValueError, match="precision must be one of"):
        decompose(model, images[:2], precision="int8")
    with pytest.raises(ValueError, match="needs dtype=torch.float32"):
        decompose(model, images[:2], precision="bfloat16", dtype=torch.float64)
    with pytest.raises(ValueError, match="precision='float16' or 'bfloat16'"):
        decompose(model, images[:2], dtype=torch.float16)


def test_check_sum_rejects_parts_that_do_not_add_up(tiny):
    model, images, _, _ = tiny
    dec = decompose(model, images[:4], precision="bfloat16")
    assert check_sum(dec) < 1e-5
    dec.heads[0, 0, 0] += 1e-2
    with pytest.raises(RuntimeError, match="features.precision: float32"):
        check_sum(dec)


def test_extract_shard_in_bfloat16(tmp_path):
    dataset = generate(tmp_path / "planted", seed=3, n_train=8, n_val=8, n_test=8)
    torch.manual_seed(0)
    loaded = load_model("planted-vit-tiny", None, "cpu")
    out = tmp_path / "feat" / "shard-00000.parquet"
    extract_shard(loaded, dataset, out, 0, 1, batch_size=10, precision="bfloat16")
    write_manifest([out], tmp_path / "feat" / "manifest.json")
    meta = FeatureSet.open(tmp_path / "feat").meta
    assert meta["precision"] == "bfloat16"
    idx, heads, rest = FeatureSet.open(tmp_path / "feat").load()
    emb = pq.read_table(out, columns=["embedding"]).column(0).combine_chunks()
    emb = emb.flatten().to_numpy().reshape(len(idx), -1)
    np.testing.assert_allclose(heads.sum((1, 2)) + rest, emb, atol=1e-6)
    with torch.inference_mode():
        imgs = load_images(dataset, pd.Series(idx["path"]).tolist(), loaded.preprocess)
        ref = F.normalize(loaded.model.encode_image(imgs), dim=-1).numpy()
    assert np.abs(emb - ref).max() < 5e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_cuda_mixed_precision(tiny, precision):
    model, images, ref, _ = tiny
    cuda = make_model("planted-vit-tiny").cuda()
    dec = decompose(cuda, images.pin_memory().cuda(non_blocking=True), precision=precision)
    assert dec.heads.device.type == "cpu" and dec.heads.is_pinned()
    assert (dec.total() - dec.embedding).abs().max() < 1e-5
    assert (dec.total() - ref.embedding).abs().max() < 5e-3
