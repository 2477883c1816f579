"""Text embeddings and zero-shot classifiers (METHODS §2.1)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CONVENTIONS = ("textspan", "ltc")

__all__ = ["CONVENTIONS", "class_text_embeddings", "encode_texts", "fill_template"]


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def encode_texts(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Raw (unnormalised) text-encoder outputs T(s), float32 on the CPU, shape [M, D].

    ``tokenizer`` is the open_clip tokenizer of the model (``open_clip.get_tokenizer(name)``).
    Runs under ``torch.inference_mode()`` in batches of ``batch_size`` on ``device`` (default:
    the model's device); the model must already live there.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    texts = list(texts)
    dev = torch.device(device) if device is not None else _model_device(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start : start + batch_size]).to(dev)
            out.append(model.encode_text(tokens).float().cpu())
    if not out:
        dim = getattr(model, "embed_dim", None) or model.text_projection.shape[-1]
        return torch.zeros(0, dim)
    return torch.cat(out).clone()  # clone: an ordinary tensor, not an inference tensor


def fill_template(template: str, name: str) -> str:
    """Insert a class name into a template with a ``{}`` or ``{c}`` placeholder."""
    if "{}" not in template and "{c}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' or '{{c}}' placeholder")
    return template.replace("{c}", name).replace("{}", name)


def class_text_embeddings(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    convention: str = "textspan",
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Unit-norm class embeddings t̂_c, one row per class: [C, D] float32 on the CPU.

    ``convention="textspan"`` (standard CLIP): normalise each template embedding, average over
    templates, renormalise. ``convention="ltc"``: average the raw embeddings, then normalise.
    Both coincide for a single template. Templates contain ``{}`` or ``{c}`` (METHODS §2.2).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(classnames, str) or isinstance(templates, str):
        raise TypeError("classnames and templates must be sequences of strings")
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    raw = encode_texts(model, tokenizer, prompts, batch_size=batch_size, device=device)
    raw = raw.view(len(classnames), len(templates), -1)
    if convention == "textspan":
        raw = F.normalize(raw, dim=-1)
    return F.normalize(raw.mean(1), dim=-1)
