"""PRISM's linear map (METHODS §10.2), trained with torch: the registered ``prism`` method
(torch env, rule ``predict_torch``). Quadruples and PRISM-mini: :mod:`clipbias.methods.prism`.

Why torch and not numpy Adam: autograd gives the exact gradient of the published loss,
``torch.optim.Adam`` is the reference's optimiser, and ``nn.Linear``'s default
initialisation under ``torch.manual_seed`` is the reference's random init, so a seed here
draws what it draws there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction
from clipbias.methods.prism import sample_quadruples
from clipbias.methods.texts import texts_sha256


def prism_loss(w, n1, n2, p1, p2, margin: float = 0.5):
    """The published loss (torch): texts L2-normalised, mapped by W (rows = outputs, as
    ``nn.Linear``), renormalised; mean positive distance + hinged negative similarity."""
    import torch.nn.functional as F

    def mapped(x):
        return F.normalize(F.normalize(x, dim=-1) @ w.T, dim=-1)

    pos = 1.0 - (mapped(p1) * mapped(p2)).sum(-1)
    neg = ((mapped(n1) * mapped(n2)).sum(-1) - margin).clamp(min=0.0)
    return pos.mean() + neg.mean()


def train_map(
    objects: np.ndarray,
    scenes: np.ndarray,
    quads: np.ndarray,
    lr: float,
    batch: int = 3,
    epochs: int = 1,
    margin: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """Learn W [D, D] (numpy, rows = outputs) on ``quads`` (:func:`sample_quadruples`) with
    Adam (weight decay 0); returns (W, loss of every step)."""
    import torch

    torch.manual_seed(int(seed))
    d = objects.shape[1]
    layer = torch.nn.Linear(d, d, bias=False, dtype=torch.float64)  # default init, seeded
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=0.0)
    obj = torch.as_tensor(np.asarray(objects, dtype=np.float64))
    sc = torch.as_tensor(np.asarray(scenes, dtype=np.float64))
    q = torch.as_tensor(quads)
    losses = []
    for _ in range(epochs):
        for start in range(0, len(q), batch):
            b = q[start : start + batch]
            loss = prism_loss(
                layer.weight, obj[b[:, 0]], obj[b[:, 1]], sc[b[:, 2]], sc[b[:, 3]], margin
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return layer.weight.detach().numpy().copy(), losses


def _counts(section: Mapping[str, Any], key: str) -> list[int]:
    return [len(v) for v in (section.get(key) or {}).values()]


def fit_prism(
    ctx: MethodContext,
    n_quadruples: int = 500,
    lr: float = 0.1,
    batch: int = 3,
    epochs: int = 1,
    margin: float = 0.5,
) -> Correction:
    spec = ctx.text_spec.get("prism") or {}
    obj_texts, obj_raw = ctx.text_roles("prism_object")
    scene_texts, scene_raw = ctx.text_roles("prism_scene")
    if not spec or not len(obj_texts) or not len(scene_texts):
        raise ValueError(
            "PRISM needs a prism section (objects per class, backgrounds per attribute value, "
            "templates) in the dataset text file; see config/texts/planted.yaml"
        )
    per_class = _counts(spec, "objects")
    if len(per_class) != len(ctx.class_names):
        raise ValueError(
            f"prism.objects lists {len(per_class)} classes, the classifier has "
            f"{len(ctx.class_names)}: give object words for every class, in class order"
        )
    quads = sample_quadruples(per_class, _counts(spec, "backgrounds"), n_quadruples, ctx.seed)
    w, losses = train_map(obj_raw, scene_raw, quads, lr, batch, epochs, margin, ctx.seed)
    clf = w @ np.asarray(ctx.classifier, dtype=np.float64)  # W t̂_c, not renormalised
    meta = {
        "n_quadruples": int(n_quadruples),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_last10": float(np.mean(losses[-10:])),
        "texts_sha256": texts_sha256([*obj_texts, *scene_texts]),
        "example_quadruple": [
            obj_texts[quads[0, 0]],
            obj_texts[quads[0, 1]],
            scene_texts[quads[0, 2]],
            scene_texts[quads[0, 3]],
        ],  # fmt: skip
    }
    return Correction(transform=lambda e, idx: e @ w.T, classifier=clf, meta=meta)


def predict_prism(ctx: MethodContext, **params) -> Any:
    return apply_correction(ctx, fit_prism(ctx, **params))
