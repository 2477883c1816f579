"""A linear classifier on few-shot image embeddings ("an additional classifier", RefineCLIP
paper Appendix A.3 / Table 6; METHODS §5.7).

The paper trains "an additional classifier" after identify-then-ablate without saying which
[RECON]: here multinomial logistic regression on the L2-normalised (ablated) embeddings,

    min_{W, b}  mean_i CE(x̂_i·W + b, y_i) + (l2 / 2)·‖W‖²,

a strictly convex problem (l2 > 0) solved from W = 0, b = 0 by full-batch L-BFGS with a
strong-Wolfe line search, so the result does not depend on a seed. The L2 strength plays the
role of the inverse C of CLIP's own linear-probe protocol (sklearn, C·Σ CE + ½‖W‖²:
l2 = 1 / (C·n)). Classes without shots get only their bias and are never predicted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["linear_probe_logits", "train_linear_probe"]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def linear_probe_logits(emb: np.ndarray, probe: dict[str, Any]) -> np.ndarray:
    """x̂·W + b for embeddings [N, D] (normalised here), [N, C] float64."""
    return _unit_rows(emb) @ np.asarray(probe["W"], np.float64) + np.asarray(probe["b"], np.float64)


def train_linear_probe(
    emb: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    l2: float = 0.01,
    steps: int = 200,
    device: str | None = None,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Fit the probe (module docstring); ``steps`` = L-BFGS iterations at most.

    Returns ``{"W" [D, C], "b" [C], "loss", "train_acc", "iterations", "wall_seconds"}``.
    """
    import torch
    import torch.nn.functional as F

    from clipbias.methods.refineclip_adapt import torch_threads
    from clipbias.models import resolve_device

    labels = np.asarray(labels, dtype=np.int64)
    x_np = _unit_rows(emb)
    if x_np.ndim != 2 or len(x_np) != len(labels) or len(labels) == 0:
        raise ValueError(f"need embeddings [n, D] and n labels, got {x_np.shape}, {labels.shape}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    if not l2 > 0 or steps < 1:
        raise ValueError(f"need l2 > 0 and steps >= 1, got l2={l2}, steps={steps}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    x = torch.tensor(x_np, dtype=torch.float64, device=dev)
    y = torch.tensor(labels, device=dev)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=int(steps),
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss_fn():
        return F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch_threads(num_threads):
        opt.step(closure)
        with torch.no_grad():
            loss = float(loss_fn())
            acc = float(((x @ w + b).argmax(1) == y).double().mean())
    state = opt.state[opt._params[0]]
    out = {
        "W": w.detach().cpu().numpy(),
        "b": b.detach().cpu().numpy(),
        "loss": loss,
        "train_acc": acc,
        "iterations": int(state.get("n_iter", 0)),
        "wall_seconds": time.perf_counter() - t0,
    }
    log.info(
        "linear probe: %d shots, %d classes, l2=%g: loss %.4f, train acc %.3f after %d L-BFGS "
        "iterations",
        len(labels),
        n_classes,
        l2,
        loss,
        acc,
        out["iterations"],
    )
    return out
