"""clipbias.text: raw text embeddings and the two classifier conventions (METHODS §2.1)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipbias.models import register_model_configs
from clipbias.text import class_text_embeddings, encode_texts, fill_template

NAME = "planted-vit-tiny"
CLASSES = ["landbird", "waterbird", "person with blond hair"]
TEMPLATES = ["a photo of a {}.", "a bad photo of a {c}.", "{} in the wild"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(NAME, pretrained=None).eval()
    return model, open_clip.get_tokenizer(NAME)


def test_encode_texts_matches_encode_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    texts = ["a photo of a cat.", "a dog", "", "x" * 200]  # empty and truncated strings too
    out = encode_texts(model, tok, texts)
    with torch.no_grad():
        ref = model.encode_text(tok(texts))
    assert out.shape == ref.shape == (4, 64)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert not out.is_inference()
    assert torch.allclose(out, ref, atol=1e-6)
    assert out.norm(dim=-1).sub(1).abs().max() > 1e-3  # raw, not normalised


def test_encode_texts_batching(model_and_tokenizer):
    model, tok = model_and_tokenizer
    texts = [f"a photo of number {i}" for i in range(7)]
    big = encode_texts(model, tok, texts)
    small = encode_texts(model, tok, texts, batch_size=3, device="cpu")
    assert torch.allclose(big, small, atol=1e-6)
    assert encode_texts(model, tok, []).shape == (0, big.shape[1])
    with pytest.raises(TypeError):
        encode_texts(model, tok, "a single string")
    with pytest.raises(ValueError):
        encode_texts(model, tok, texts, batch_size=0)


def test_fill_template():
    assert fill_template("a photo of a {}.", "cat") == "a photo of a cat."
    assert fill_template("A photo of {c}", "cat") == "A photo of cat"
    with pytest.raises(ValueError, match="placeholder"):
        fill_template("a photo", "cat")


@pytest.mark.parametrize("convention", ["textspan", "ltc"])
def test_class_embeddings_conventions(model_and_tokenizer, convention):
    model, tok = model_and_tokenizer
    out = class_text_embeddings(model, tok, CLASSES, TEMPLATES, convention=convention)
    raw = encode_texts(model, tok, [fill_template(t, c) for c in CLASSES for t in TEMPLATES])
    raw = raw.view(len(CLASSES), len(TEMPLATES), -1)
    if convention == "ltc":  # average raw embeddings, then normalise
        expect = F.normalize(raw.mean(1), dim=-1)
    else:  # normalise, average, renormalise
        expect = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)
    assert out.shape == (len(CLASSES), raw.shape[-1])
    assert torch.allclose(out.norm(dim=-1), torch.ones(len(CLASSES)), atol=1e-6)
    assert torch.allclose(out, expect, atol=1e-6)


def test_conventions_differ_only_for_ensembles(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ts = class_text_embeddings(model, tok, CLASSES, TEMPLATES, convention="textspan")
    ltc = class_text_embeddings(model, tok, CLASSES, TEMPLATES, convention="ltc")
    assert (ts - ltc).abs().max() > 1e-6
    one = ["A photo of {c}"]
    ts1 = class_text_embeddings(model, tok, CLASSES, one, convention="textspan")
    ltc1 = class_text_embeddings(model, tok, CLASSES, one, convention="ltc")
    assert torch.allclose(ts1, ltc1, atol=1e-6)
    # {} and {c} placeholders are interchangeable
    brace = class_text_embeddings(model, tok, CLASSES, ["A photo of {}"])
    assert torch.allclose(brace, ts1)


def test_class_embeddings_bad_arguments(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="convention"):
        class_text_embeddings(model, tok, CLASSES, TEMPLATES, convention="clip")
    with pytest.raises(ValueError, match="placeholder"):
        class_text_embeddings(model, tok, CLASSES, ["no placeholder"])
    with pytest.raises(ValueError):
        class_text_embeddings(model, tok, [], TEMPLATES)
    with pytest.raises(TypeError):
        class_text_embeddings(model, tok, "landbird", TEMPLATES)
