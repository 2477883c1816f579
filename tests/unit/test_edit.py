"""Merging a RefineCLIP adapter into open_clip's ``visual.proj`` (METHODS §5.6, "Merge")."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipbias import edit
from clipbias.io import sha256_file
from clipbias.methods.refineclip_adapt import apply_adapter
from clipbias.models import load_model

NAME = "planted-vit-tiny"  # embed_dim 64, 32x32 images
D = 64


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    loaded = load_model(NAME, None, "cpu")
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    state = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _params(variant: str) -> dict:
    rng = np.random.default_rng(2)
    if variant == "diag":
        return {"variant": "diag", "theta": rng.uniform(0.2, 1.5, D).astype(np.float32)}
    if variant == "full":
        m = np.eye(D) + 0.1 * rng.normal(size=(D, D))
        return {"variant": "full", "M": m.astype(np.float32)}
    return {
        "variant": "lora",
        "A": (0.1 * rng.normal(size=(3, D))).astype(np.float32),
        "B": (0.1 * rng.normal(size=(D, 3))).astype(np.float32),
    }


def test_merged_projection_scales_output_columns():
    proj = torch.randn(5, 4, dtype=torch.float64)
    theta = np.array([2.0, 0.5, 1.0, -1.0])
    got = edit.merged_projection(proj, {"variant": "diag", "theta": theta})
    torch.testing.assert_close(got, proj * torch.tensor(theta)[None, :])
    m = np.arange(16, dtype=np.float64).reshape(4, 4)
    got = edit.merged_projection(proj, {"variant": "full", "M": m})
    torch.testing.assert_close(got, proj @ torch.tensor(m).T)
    with pytest.raises(ValueError, match="64"):
        edit.merged_projection(torch.zeros(5, 64), {"variant": "diag", "theta": theta})


@pytest.mark.parametrize("variant", ["diag", "full", "lora"])
def test_merged_checkpoint_encodes_the_adapted_embedding(base_ckpt, images, tmp_path, variant):
    params = _params(variant)
    out = tmp_path / "edited.safetensors"
    info = edit.write_edited_checkpoint(NAME, str(base_ckpt), params, out, device="cpu")
    assert info["checkpoint_sha256"] == sha256_file(out)
    assert info["variant"] == variant and info["verify_max_abs_diff"] < 1e-5
    base = load_model(NAME, str(base_ckpt), "cpu")
    edited = load_model(NAME, str(out), "cpu")
    with torch.no_grad():
        e = base.model.encode_image(images).numpy()
        e2 = edited.model.encode_image(images).numpy()
        tok = base.tokenizer(["a circle"])
        t1 = base.model.encode_text(tok)
        t2 = edited.model.encode_text(tok)
    np.testing.assert_allclose(e2, apply_adapter(e, params), atol=1e-5)
    if variant == "diag":
        np.testing.assert_allclose(e2, e * params["theta"], atol=1e-5)
    torch.testing.assert_close(t1, t2)  # the text tower is untouched
    assert not np.allclose(e, e2, atol=1e-3)


def test_bad_output_path_and_model_without_projection(base_ckpt, tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        edit.write_edited_checkpoint(NAME, str(base_ckpt), _params("diag"), tmp_path / "x.pt")
    loaded = load_model(NAME, str(base_ckpt), "cpu")
    loaded.model.visual.proj = None
    with pytest.raises(ValueError, match="visual.proj"):
        edit.merge_adapter(loaded.model, _params("diag"))
