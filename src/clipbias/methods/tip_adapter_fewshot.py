"""Tip-Adapter (training-free) as the registered method ``tip_adapter`` (METHODS §5.7).

The cache holds the same shots as RefineCLIP phase 1 (:func:`clipbias.methods.fewshot.shot_index`
with the cell's seed): keys = their L2-normalised embeddings, values = one-hot labels.
logits = τ·ê·T̂ + α_t·exp(−β_t(1 − ê·Fᵀ))·Y with α_t = 1, β_t = 5.5 by default (the original
paper's defaults; no validation search, so nothing beyond the shots is used) and τ the
checkpoint's logit scale. numpy only (analysis env).
"""

from __future__ import annotations

from clipbias.methods.api import MethodContext, MethodOutput
from clipbias.methods.fewshot import predict_logits, resolve_tau, shot_rows


def predict(
    ctx: MethodContext,
    n_per_class: int = 10,
    shots_split: str = "train",
    shot_sampling: str = "random",
    alpha: float = 1.0,
    beta: float = 5.5,
    tau: float | str | None = None,
) -> MethodOutput:
    from clipbias.methods.tip_adapter import build_cache, tip_adapter_logits

    idx, _, shot_emb = shot_rows(
        ctx.features, shots_split, n_per_class, ctx.seed, layers=[], sampling=shot_sampling
    )
    labels = idx["label"].to_numpy()
    keys, values = build_cache(shot_emb, labels, ctx.classifier.shape[1])
    t = resolve_tau(tau, ctx.feature_dir)
    pred = predict_logits(
        ctx, lambda e: tip_adapter_logits(e, ctx.classifier, keys, values, alpha, beta, t)
    )
    meta = {"alpha_t": float(alpha), "beta_t": float(beta), "tau": t, "n_shots": len(idx),
            "shots_split": shots_split}  # fmt: skip
    return MethodOutput(pred, meta)
