"""Tip-Adapter and Tip-Adapter-F baselines on the RefineCLIP shots (METHODS §5.7).

Zhang et al. 2021 (arXiv 2111.03930). A cache of the few-shot image embeddings is added to the
zero-shot logits:

    logits(x) = τ·ê·T̂ + α_t·exp(−β_t (1 − ê·Fᵀ))·Y

with ê the L2-normalised query embedding, T̂ [D, C] the unit class text embeddings, F [n, D]
the L2-normalised shot embeddings (keys) and Y [n, C] their one-hot labels (values).
Defaults α_t = 1, β_t = 5.5, τ = 100 (the brief's values, from the Tip-Adapter paper; the
official ImageNet config instead starts from β = 1, α = 1.17 and searches both on a validation
split, see :func:`search_hyperparameters`). With α_t = 0 the logits are τ× the zero-shot
cosines.

Tip-Adapter-F makes the keys F learnable and minimises the cross-entropy of these logits on
the shots with AdamW (lr 1e-3, eps 1e-4, weight decay 0.01 = torch's default), a cosine
learning-rate schedule over all steps, 20 epochs and batch size 256, as in the official code.
Unlike the official code there is no image augmentation (the inputs are stored embeddings), so
the keys are fitted on exactly the embeddings they were initialised from.

torch is imported only by :func:`train_tip_adapter_f`, so the training-free part runs in the
analysis env (no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5
DEFAULT_TAU = 100.0

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_TAU",
    "TipAdapterF",
    "build_cache",
    "search_hyperparameters",
    "tip_adapter_logits",
    "tip_adapter_predict",
    "train_tip_adapter_f",
]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("zero embedding: cannot normalise (check the decomposition)")
    return x / norm


def build_cache(
    shot_emb: np.ndarray, shot_labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cache keys F (unit rows, [n, D]) and one-hot values Y ([n, C]) of the shots."""
    y = np.asarray(shot_labels, dtype=np.int64)
    if y.ndim != 1 or len(y) != len(shot_emb):
        raise ValueError(f"need one label per shot: {len(shot_emb)} shots, labels {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"shot labels must lie in 0..{n_classes - 1}")
    return _unit_rows(shot_emb), np.eye(n_classes)[y]


def tip_adapter_logits(
    emb: np.ndarray,
    classifier: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    tau: float = DEFAULT_TAU,
) -> np.ndarray:
    """τ·ê·T̂ + α·exp(−β(1 − ê·Fᵀ))·Y, [N, C] float64 (keys are used as given)."""
    e = _unit_rows(emb)
    clip_logits = tau * e @ np.asarray(classifier, dtype=np.float64)
    affinity = e @ np.asarray(keys, dtype=np.float64).T
    cache = np.exp(-beta * (1.0 - affinity)) @ np.asarray(values, dtype=np.float64)
    return clip_logits + alpha * cache


def tip_adapter_predict(
    emb: np.ndarray,
    classifier: np.ndarray,
    shot_emb: np.ndarray,
    shot_labels: np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    tau: float = DEFAULT_TAU,
) -> np.ndarray:
    """Training-free Tip-Adapter predictions [N] int64 with the shots as the cache."""
    keys, values = build_cache(shot_emb, shot_labels, np.asarray(classifier).shape[1])
    logits = tip_adapter_logits(emb, classifier, keys, values, alpha, beta, tau)
    return np.argmax(logits, axis=1).astype(np.int64)


def search_hyperparameters(
    val_emb: np.ndarray,
    val_labels: np.ndarray,
    classifier: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    tau: float = DEFAULT_TAU,
) -> dict[str, float]:
    """Grid search of (α_t, β_t) by validation accuracy, as the official code does.

    Default grids: β ∈ linspace(0.1, 7, 70), α ∈ linspace(0.1, 3, 30) (the official search
    range, coarser steps). Ties keep the first grid point (β outer, α inner loop).
    Returns ``{"alpha", "beta", "acc"}``; this uses extra labelled data (a "*" method).
    """
    alphas = np.linspace(0.1, 3.0, 30) if alphas is None else np.asarray(alphas, dtype=float)
    betas = np.linspace(0.1, 7.0, 70) if betas is None else np.asarray(betas, dtype=float)
    y = np.asarray(val_labels, dtype=np.int64)
    e = _unit_rows(val_emb)
    clip_logits = tau * e @ np.asarray(classifier, dtype=np.float64)
    affinity = e @ np.asarray(keys, dtype=np.float64).T
    best = {"alpha": float("nan"), "beta": float("nan"), "acc": -1.0}
    for b in betas:
        cache = np.exp(-b * (1.0 - affinity)) @ np.asarray(values, dtype=np.float64)
        for a in alphas:
            acc = float(np.mean(np.argmax(clip_logits + a * cache, axis=1) == y))
            if acc > best["acc"]:
                best = {"alpha": float(a), "beta": float(b), "acc": acc}
    log.info("Tip-Adapter search: α=%g β=%g val acc %.4f", best["alpha"], best["beta"], best["acc"])
    return best


@dataclass
class TipAdapterF:
    """Fine-tuned cache: keys [n, D], values [n, C], hyper-parameters and training history."""

    keys: np.ndarray
    values: np.ndarray
    alpha: float
    beta: float
    tau: float
    history: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def logits(self, emb: np.ndarray, classifier: np.ndarray) -> np.ndarray:
        return tip_adapter_logits(
            emb, classifier, self.keys, self.values, self.alpha, self.beta, self.tau
        )

    def predict(self, emb: np.ndarray, classifier: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(emb, classifier), axis=1).astype(np.int64)


def train_tip_adapter_f(
    shot_emb: np.ndarray,
    shot_labels: np.ndarray,
    classifier: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    tau: float = DEFAULT_TAU,
    lr: float = 1e-3,
    epochs: int = 20,
    batch_size: int = 256,
    weight_decay: float = 0.01,
    eps: float = 1e-4,
    seed: int = 42,
    device: str | None = None,
    num_threads: int | None = 1,
) -> TipAdapterF:
    """Tip-Adapter-F: learn the cache keys by cross-entropy on the shots (module docstring).

    Batches are drawn from a seeded permutation each epoch; the learning rate follows a cosine
    schedule over ``epochs × n_batches`` steps. ``device`` None/"auto" = CUDA when available;
    ``num_threads`` torch CPU threads while training (None = unchanged; see
    :func:`clipbias.methods.refineclip_adapt.torch_threads`).
    """
    import torch
    import torch.nn.functional as F

    from ..models import resolve_device
    from .refineclip_adapt import torch_threads

    classifier = np.asarray(classifier, dtype=np.float32)
    keys0, values0 = build_cache(shot_emb, shot_labels, classifier.shape[1])
    if epochs < 0 or batch_size < 1:
        raise ValueError("need epochs >= 0 and batch_size >= 1")
    dev = resolve_device(device)
    x = F.normalize(torch.tensor(np.asarray(shot_emb), dtype=torch.float32, device=dev), dim=1)
    y = torch.tensor(np.asarray(shot_labels, dtype=np.int64), device=dev)
    text = torch.tensor(classifier, device=dev)
    values = torch.tensor(values0, dtype=torch.float32, device=dev)
    keys = torch.nn.Parameter(torch.tensor(keys0, dtype=torch.float32, device=dev))
    n = len(y)
    n_batches = max(1, -(-n // batch_size))
    opt = torch.optim.AdamW([keys], lr=lr, eps=eps, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[tuple[int, float, float, float]] = []
    with torch_threads(num_threads):
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            losses, correct = [], 0
            lr_now = opt.param_groups[0]["lr"]
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb = x[idx]
                cache = torch.exp(-beta * (1.0 - xb @ keys.T)) @ values
                logits = tau * xb @ text + alpha * cache
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()) * len(idx))
                correct += int((logits.argmax(1) == y[idx]).sum())
            rows.append((epoch + 1, sum(losses) / n, correct / n, lr_now))
    history = pd.DataFrame(rows, columns=["epoch", "loss", "acc", "lr"])
    config = {
        "alpha": float(alpha),
        "beta": float(beta),
        "tau": float(tau),
        "lr": float(lr),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "optimizer": f"AdamW(eps={eps}, weight_decay={weight_decay}), cosine schedule",
        "seed": int(seed),
        "n_shots": int(n),
        "device": str(dev),
        "num_threads": num_threads,
    }
    if len(history):
        log.info(
            "Tip-Adapter-F: %d shots, %d epochs, final train loss %.4f acc %.3f",
            n,
            epochs,
            history.loss.iloc[-1],
            history.acc.iloc[-1],
        )
    return TipAdapterF(
        keys=keys.detach().cpu().numpy().astype(np.float64),
        values=values0,
        alpha=float(alpha),
        beta=float(beta),
        tau=float(tau),
        history=history,
        config=config,
    )
