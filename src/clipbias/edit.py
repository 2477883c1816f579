"""Merge a RefineCLIP adapter into an open_clip model (METHODS §5.6, "Merge"; paper §3.3).

open_clip computes the image embedding as e = pooled·P with ``visual.proj`` P ∈ ℝ^{W×D} (row
convention). The adapter maps e_θ = e·Mᵀ (M = diag(θ), a full matrix, or I + B·A), so the edited
projection is P_new = P·Mᵀ: for the diagonal adapter each **output column** d of P is multiplied
by θ_d (the paper's P ← diag(θ)P in its column convention). Nothing else changes, so the merged
model's ``encode_image`` equals the adapted embedding of the original one, and the text tower
is untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_path, sha256_file, stamped_metadata
from .methods.refineclip_adapt import adapter_matrix, apply_adapter

log = logging.getLogger(__name__)

__all__ = ["logit_scale", "merge_adapter", "merged_projection", "write_edited_checkpoint"]


def logit_scale(model: torch.nn.Module) -> float:
    """τ = exp(logit_scale) of a CLIP model (the temperature of g in phase 2, §2.3)."""
    return float(model.logit_scale.detach().exp().item())


def merged_projection(proj: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """P·Mᵀ for ``proj`` [W, D] (diag: columns scaled by θ), computed in float64, same dtype."""
    m = adapter_matrix(params)
    if m.shape != (proj.shape[1], proj.shape[1]):
        raise ValueError(
            f"adapter of dimension {m.shape[0]} does not fit a projection with "
            f"{proj.shape[1]} output columns; train it on this model's embeddings"
        )
    p = proj.detach().to(torch.float64)
    out = p @ torch.from_numpy(m).to(p.device).T
    return out.to(proj.dtype)


def _projection(model: torch.nn.Module) -> torch.nn.Parameter:
    proj = getattr(getattr(model, "visual", None), "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise ValueError(
            "the model has no visual.proj matrix (a ViT with a linear output projection is "
            "needed; attentional-pool or HF-tower models are not supported)"
        )
    return proj


@torch.no_grad()
def merge_adapter(model: torch.nn.Module, params: Mapping[str, Any]) -> None:
    """Replace ``model.visual.proj`` by P·Mᵀ in place."""
    proj = _projection(model)
    proj.copy_(merged_projection(proj, params))


def _probe_images(model: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    size = getattr(model.visual, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=gen)


@torch.no_grad()
def write_edited_checkpoint(
    model_name: str,
    pretrained: str | None,
    params: Mapping[str, Any],
    out_path: str | os.PathLike,
    device: str | None = None,
    verify: bool = True,
    n_probe: int = 2,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Load ``model_name``/``pretrained``, merge the adapter into ``visual.proj`` and write the
    full state dict as an open_clip-loadable ``.safetensors`` file (atomically).

    With ``verify``, ``encode_image`` of the merged model on ``n_probe`` seeded random images
    must equal the adapter applied to the original embeddings within ``atol`` (else the file is
    not written). Load the result with ``clipbias.models.load_model(model_name, out_path)``.
    Returns provenance: model, pretrained, variant, checkpoint sha256, verification error.
    """
    from safetensors.torch import save_file

    from .models import load_model

    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(
            f"{out_path} must end in .safetensors (open_clip picks the loader by suffix)"
        )
    loaded = load_model(model_name, pretrained, device)
    model = loaded.model
    _projection(model)
    probe = _probe_images(model, n_probe, seed=0).to(loaded.device) if verify else None
    before = model.encode_image(probe).float().cpu().numpy() if verify else None
    merge_adapter(model, params)
    err = float("nan")
    if verify:
        after = model.encode_image(probe).float().cpu().numpy()
        expected = apply_adapter(before.astype(np.float64), params)
        err = float(np.max(np.abs(after - expected)))
        if not err <= atol:
            raise RuntimeError(
                f"merged model deviates from the adapted embedding by {err:.3g} > {atol}; "
                "the checkpoint was not written"
            )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        meta = {"format": "pt", "clipbias.edit": str(params["variant"])}
        save_file(state, str(tmp), metadata=stamped_metadata(out_path, meta))
    info = {
        "model": model_name,
        "pretrained": loaded.pretrained,
        "base_checkpoint_sha256": loaded.checkpoint_sha256,
        "variant": str(params["variant"]),
        "checkpoint": str(out_path),
        "checkpoint_sha256": sha256_file(out_path),
        "verify_max_abs_diff": err,
        "logit_scale": logit_scale(model),
    }
    log.info(
        "merged %s adapter into %s visual.proj -> %s (probe max |Δ| %.2g)",
        info["variant"],
        model_name,
        out_path,
        err,
    )
    return info
