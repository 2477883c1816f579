"""SAGE, per-image template selection (Ye et al., AAAI 2026; METHODS §10.5): no training,
labels, LLM or batch statistics.

For every image and each of the 80 OpenAI templates j, the separation
σ_j(x) = max_c cos(ê, t̂_{j,c}) − min_c cos(ê, t̂_{j,c}); the top-K templates (K = 1) are
kept and the image is classified with t̄_c = normalise(mean over the kept templates of
t̂_{j,c}).

The per-template class embeddings t̂_{j,c} come from rule ``encode_class_templates``
(``class_templates.parquet`` next to the features; :func:`write_class_templates`), which runs
only for cells with a method that declares ``class_templates`` in the registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction

TEMPLATES_RESOURCE = "openai_imagenet_templates.txt"
_META_KEY = b"clipbias.class_templates"


def write_class_templates(
    out: str | os.PathLike,
    templates: Sequence[str],
    class_names: Sequence[str],
    embeddings: np.ndarray,
    meta: dict[str, Any] | None = None,
) -> None:
    """``class_templates.parquet``: one row per (template j, class c), template-major, with
    the raw text embedding of the filled template."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path, stamp_table

    emb = np.asarray(embeddings, dtype=np.float32)
    n_t, n_c = len(templates), len(class_names)
    if emb.shape[0] != n_t * n_c:
        raise ValueError(f"{n_t} templates x {n_c} classes but {emb.shape[0]} embeddings")
    table = pa.table(
        {
            "template": pa.array([t for t in templates for _ in class_names], pa.string()),
            "class_index": pa.array(np.tile(np.arange(n_c), n_t), pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
            ),
        }
    ).replace_schema_metadata(
        {_META_KEY: json.dumps({**(meta or {}), "classes": list(class_names)}).encode()}
    )
    with atomic_path(out) as tmp:
        pq.write_table(stamp_table(table, out), tmp)


def read_class_templates(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(templates, unit embeddings [T, C, D]) of :func:`write_class_templates`."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[_META_KEY])
    n_c = len(meta["classes"])
    templates = table.column("template").to_pylist()[::n_c]
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    emb = emb.reshape(len(templates), n_c, -1)
    return templates, emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def sage_predict(emb: np.ndarray, template_emb: np.ndarray, k: int = 1) -> np.ndarray:
    """SAGE's decision for embeddings [n, D] and unit template-class embeddings [T, C, D]."""
    e = np.asarray(emb, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = np.einsum("nd,tcd->ntc", e, template_emb)  # [n, T, C]
    sep = cos.max(axis=2) - cos.min(axis=2)  # [n, T]
    top = np.argsort(-sep, axis=1, kind="stable")[:, :k]  # [n, k]
    t_bar = template_emb[top].mean(axis=1)  # [n, C, D]
    t_bar = t_bar / np.linalg.norm(t_bar, axis=-1, keepdims=True)
    return np.argmax(np.einsum("nd,ncd->nc", e, t_bar), axis=1).astype(np.int64)


def fit(ctx: MethodContext, k: int = 1) -> Correction:
    from clipbias.methods.texts import texts_sha256

    if ctx.class_templates is None:
        raise ValueError(
            "SAGE needs the per-template class embeddings (class_templates.parquet, rule "
            "encode_class_templates)"
        )
    templates, t_emb = read_class_templates(ctx.class_templates)
    if t_emb.shape[1] != ctx.classifier.shape[1]:
        raise ValueError(
            f"class_templates has {t_emb.shape[1]} classes, the classifier {ctx.classifier.shape[1]}"
        )
    if not 1 <= k <= len(templates):
        raise ValueError(f"SAGE k must be in 1..{len(templates)}, got {k}")
    meta = {"k": int(k), "n_templates": len(templates), "templates_sha256": texts_sha256(templates)}
    return Correction(classify=lambda e, idx: sage_predict(e, t_emb, k), meta=meta)


def predict(ctx: MethodContext, **params) -> Any:
    return apply_correction(ctx, fit(ctx, **params))
