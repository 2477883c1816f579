"""Registered RefineCLIP-family methods whose code needs torch (rule ``predict_torch``):

* ``predict_adapter`` — ``refineclip_adapt``, ``refineclip_adapt_full``, ``refineclip_adapt_lora``,
  ``refineclip_std_ft``, ``refineclip_no_teacher``: apply the phase-2 adapter trained by rule
  ``adapt_refineclip`` (``heads/{cell}/refineclip_adapter/{method}.safetensors``) to the test
  embeddings, e_θ = e·Mᵀ (METHODS §5.6); the merged checkpoint gives the same embeddings.
* ``predict_classifier`` — ``refineclip_classifier`` (paper Table 6): zero-ablate S* of the
  method's phase-1 file, then a linear probe fitted on the ablated shots
  (:mod:`clipbias.methods.linear_probe`); ``ablate: false`` fits it on the original embeddings
  (the table's "Original CLIP" + classifier row).
* ``predict_tip_adapter_f`` — ``tip_adapter_f``: Tip-Adapter-F on the same shots as phase 1
  (:func:`clipbias.methods.tip_adapter.train_tip_adapter_f`).

Training runs on CUDA when available, else on one CPU thread (the problems are tiny).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from clipbias.methods.api import MethodContext, MethodOutput
from clipbias.methods.fewshot import load_rows, parse_shots, predict_logits, resolve_tau, shot_rows
from clipbias.methods.refineclip import zero_ablate
from clipbias.methods.refineclip_ablate import ablation_edit, check_phase1, selected_meta

__all__ = ["predict_adapter", "predict_classifier", "predict_tip_adapter_f"]


def predict_adapter(ctx: MethodContext, **params: Any) -> MethodOutput:
    """Test predictions of the method's phase-2 adapter (see module docstring)."""
    from clipbias.methods.refineclip_adapt import apply_adapter, load_adapter

    result = check_phase1(ctx.located["refineclip"], ctx.seed, **params)
    path = ctx.located["refineclip_adapter"]
    adapter = load_adapter(path)
    if adapter["variant"] != params["variant"]:
        raise ValueError(
            f"{path} holds a {adapter['variant']!r} adapter, the method needs "
            f"{params['variant']!r}; rerun adapt_refineclip"
        )
    pred = ctx.predict(
        lambda h, rest, idx: apply_adapter(rest.astype(np.float64), adapter), layers=[]
    )
    meta = {
        "variant": params["variant"],
        "objective": params["objective"],
        "adapter": os.fspath(path),
        "phase1": selected_meta(result),
    }
    return MethodOutput(pred, meta)


def predict_classifier(
    ctx: MethodContext, ablate: bool = True, l2: float = 0.01, steps: int = 200, **params: Any
) -> MethodOutput:
    """Zero-ablate S* (unless ``ablate`` is false) and classify with a linear probe fitted on
    the (ablated) shots."""
    from clipbias.methods.linear_probe import linear_probe_logits, train_linear_probe

    result = check_phase1(ctx.located["refineclip"], ctx.seed, **params)
    heads = list(result["selected"]["heads"]) if ablate else []
    layers, edit = ablation_edit(heads)
    split, ids = parse_shots(result)
    idx, h, rest = load_rows(ctx.features, split, ids, layers)
    shot_emb = zero_ablate(h, rest, layers, heads)
    probe = train_linear_probe(
        shot_emb, idx["label"].to_numpy(), ctx.classifier.shape[1], l2=l2, steps=steps
    )
    out = []
    for _, hb, rb in ctx.batches(layers=layers):
        emb = zero_ablate(hb, rb, layers, heads)
        out.append(np.argmax(linear_probe_logits(emb, probe), axis=1).astype(np.int64))
    meta = {
        "phase1": selected_meta(result),
        "ablated": heads,
        "l2": float(l2),
        "probe_loss": probe["loss"],
        "probe_train_acc": probe["train_acc"],
        "lbfgs_iterations": probe["iterations"],
    }
    return MethodOutput(np.concatenate(out), meta)


def predict_tip_adapter_f(
    ctx: MethodContext,
    n_per_class: int = 10,
    shots_split: str = "train",
    shot_sampling: str = "random",
    alpha: float = 1.0,
    beta: float = 5.5,
    tau: float | str | None = None,
    lr: float = 1e-3,
    epochs: int = 20,
) -> MethodOutput:
    """Tip-Adapter-F: learn the cache keys on the shots, then predict the test split."""
    from clipbias.methods.tip_adapter import train_tip_adapter_f

    idx, _, shot_emb = shot_rows(
        ctx.features, shots_split, n_per_class, ctx.seed, layers=[], sampling=shot_sampling
    )
    t = resolve_tau(tau, ctx.feature_dir)
    model = train_tip_adapter_f(
        shot_emb, idx["label"].to_numpy(), ctx.classifier,
        alpha=alpha, beta=beta, tau=t, lr=lr, epochs=epochs, seed=ctx.seed,
    )  # fmt: skip
    pred = predict_logits(ctx, lambda e: model.logits(e, ctx.classifier))
    meta = {**model.config, "n_shots": len(idx), "shots_split": shots_split,
            "final_train_loss": float(model.history.loss.iloc[-1]) if len(model.history) else None}  # fmt: skip
    return MethodOutput(pred, meta)
