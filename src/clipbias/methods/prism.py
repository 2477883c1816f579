"""PRISM and PRISM-mini (Molahasani et al., ICCV 2025; METHODS §10.2): text-only debiasing
of the embedding space; no image and no label is used.

* ``prism_mini`` (closed form): V = the normalised embeddings of the attribute words
  (texts role ``attribute_word``), P = I − V(VᵀV)⁻¹Vᵀ; the image becomes êP (no
  renormalisation), the class vectors stay as they are (equivalently scored against Pt̂_c).
* ``prism``: a bias-free linear map W (D × D, PyTorch's default ``nn.Linear`` initialisation,
  seeded) learned on text quadruples (n₁, n₂, p₁, p₂) with
  L = mean[1 − cos(Wp₁, Wp₂)] + mean[max(0, cos(Wn₁, Wn₂) − margin)], Adam, batches of 3
  quadruples, 1 epoch; scored by ⟨Wê/‖Wê‖, Wt̂_c⟩ (class vectors not renormalised).

Quadruples without an LLM ([REC]): built from the dataset's own vocabulary, the text file's
``prism`` section (:func:`clipbias.methods.texts.prism_texts`): n₁, n₂ are the object texts
of two words of two different classes; p₁, p₂ the scene texts of one of those two words on a
background word of one attribute value and on one of another value. Every choice is drawn
independently (the reference's index-aligned draws are a pitfall, §10.2), with the cell's
seed. The map is trained with torch in :mod:`clipbias.methods.prism_train` (autograd of the
published loss, ``torch.optim.Adam`` and the published initialisation, so the seeds mean what
they mean in the reference code); ``prism`` therefore runs in the torch env (rule
``predict_torch``), ``prism_mini`` in the analysis env.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction
from clipbias.methods.texts import texts_sha256, unit_rows


def orthogonal_projection(words: np.ndarray) -> np.ndarray:
    """P = I − V(VᵀV)⁻¹Vᵀ [D, D] for the unit columns V of ``words`` [k, D] (rows)."""
    v = unit_rows(words).astype(np.float64).T  # [D, k]
    return np.eye(v.shape[0]) - v @ np.linalg.solve(v.T @ v, v.T)


def fit_mini(ctx: MethodContext) -> Correction:
    words, raw = ctx.text_roles("attribute_word")
    if len(words) < 1:
        raise ValueError(
            "PRISM-mini needs attribute words (attribute_prompts.words or .values in the "
            "dataset text file)"
        )
    p = orthogonal_projection(raw)
    meta = {"words": list(words), "texts_sha256": texts_sha256(words)}
    return Correction(transform=lambda e, idx: e @ p, meta=meta)


def predict_mini(ctx: MethodContext) -> Any:
    return apply_correction(ctx, fit_mini(ctx))


# --------------------------------------------------------------------------------- PRISM


def sample_quadruples(
    objects_per_class: Sequence[int],
    backgrounds_per_value: Sequence[int],
    n: int,
    seed: int,
) -> np.ndarray:
    """[n, 4] indices (n₁, n₂ into the object texts; p₁, p₂ into the scene texts).

    Object texts are numbered class by class (``objects_per_class`` words each), scene texts
    object-major over all background words (``backgrounds_per_value`` words per value)."""
    obj_start = np.concatenate([[0], np.cumsum(objects_per_class)])
    bg_start = np.concatenate([[0], np.cumsum(backgrounds_per_value)])
    n_bg = int(bg_start[-1])
    n_cls, n_val = len(objects_per_class), len(backgrounds_per_value)
    if n_cls < 2 or n_val < 2 or min(objects_per_class) < 1 or min(backgrounds_per_value) < 1:
        raise ValueError(
            "PRISM quadruples need >= 2 classes and >= 2 attribute values, each with at "
            f"least one word (prism.objects: {list(objects_per_class)}, prism.backgrounds: "
            f"{list(backgrounds_per_value)})"
        )
    rng = np.random.default_rng(seed)
    out = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        c1, c2 = rng.choice(n_cls, size=2, replace=False)
        o1 = obj_start[c1] + rng.integers(objects_per_class[c1])
        o2 = obj_start[c2] + rng.integers(objects_per_class[c2])
        o = (o1, o2)[rng.integers(2)]
        v1, v2 = rng.choice(n_val, size=2, replace=False)
        b1 = bg_start[v1] + rng.integers(backgrounds_per_value[v1])
        b2 = bg_start[v2] + rng.integers(backgrounds_per_value[v2])
        out[i] = (o1, o2, o * n_bg + b1, o * n_bg + b2)
    return out
