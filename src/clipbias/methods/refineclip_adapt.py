"""RefineCLIP phase 2, representation adapting (METHODS §5.6, paper §3.3, eqs. 11-13).

A trainable map of the joint image embedding, e_θ = e·Mᵀ, is fitted on the few-shot samples:

* ``diag``: M = diag(θ), θ ∈ ℝ^D initialised to 1 (the paper's standard strategy);
* ``full``: M ∈ ℝ^{D×D} initialised to the identity (paper Appendix D);
* ``lora``: M = I + B·A, A ∈ ℝ^{r×D} drawn U(−1/√D, 1/√D) from a seeded generator,
  B ∈ ℝ^{D×r} zero, so M = I at the start.

With g(e) = softmax(τ·cos(e, t_c)) over the classes, the objective is

    L = L_CE + α·L_success + β·L_locality
    L_CE       = mean_{all shots} −log g(e_θ(x))_{y(x)}
    L_success  = mean_{x∈W} KL( g(E_abl(x, S*)) ‖ g(e_θ(x)) )      (ablated model as teacher)
    L_locality = mean_{x∈C∪A} KL( g(e(x)) ‖ g(e_θ(x)) )            (original model as teacher)

``objective="std_ft"`` is standard fine-tuning, α = β = 0 (only L_CE); ``"no_ablated_teacher"``
(paper Appendix B) drops the ablated teacher and applies the locality KL to the original model
on *all* shots: L = L_CE + β·mean_{all} KL(g(e) ‖ g(e_θ)). An empty set gives a zero term.

Optimisation: Adam, full batch, ``steps`` updates at a fixed learning rate. Training curves
are a tidy frame (step, set, metric, value): the loss terms at every step (evaluated before
that step's update, plus the final parameters at ``step = steps``), and accuracies every
``eval_every`` steps on the training shots (``train``), on the misclassified shots W of the
success loss (``success``) and the correct shots of the locality loss (``locality``), and on any
named evaluation sets. The teacher's accuracy on W (how many misclassified shots the ablated
model gets right, i.e. what the success loss can teach) is in the run's configuration.

Which step's adapter is returned: the last (``select_set`` None), or the evaluated step with the
best worst-group accuracy on ``select_set`` (a validation split with group ids; ties by the
average group accuracy, then the earlier step), whose curves (set ``select``, metrics
``worst_group_acc`` and ``avg_group_acc``) are kept with the others; the test split is never
looked at. Deterministic for a seed on a given device and thread count (only the LoRA init is
random, from its own generator).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import metrics

log = logging.getLogger(__name__)

VARIANTS = ("diag", "full", "lora")
OBJECTIVES = ("refineclip", "std_ft", "no_ablated_teacher")
DEFAULTS = {
    "variant": "diag",
    "objective": "refineclip",
    "alpha": 1e3,
    "beta": 1e3,
    "tau": 100.0,
    "lr": 1e-3,
    "steps": 500,
    "rank": 4,
    "seed": 42,
    "eval_every": 10,
}

__all__ = [
    "DEFAULTS",
    "OBJECTIVES",
    "VARIANTS",
    "AdaptResult",
    "adapter_matrix",
    "apply_adapter",
    "load_adapter",
    "save_adapter",
    "torch_threads",
    "train_adapter",
]


@dataclass
class AdaptResult:
    """Trained adapter parameters, training curves and the run's configuration."""

    params: dict[str, Any]
    curves: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Applying an adapter (numpy, for prediction)
# ---------------------------------------------------------------------------------------------


def _variant(params: Mapping[str, Any]) -> str:
    v = params.get("variant")
    if v not in VARIANTS:
        raise ValueError(f"adapter params have variant {v!r}; expected one of {VARIANTS}")
    return str(v)


def adapter_matrix(params: Mapping[str, Any]) -> np.ndarray:
    """M [D, D] with e_θ = e·Mᵀ: diag(θ), the full matrix, or I + B·A."""
    v = _variant(params)
    if v == "diag":
        return np.diag(np.asarray(params["theta"], dtype=np.float64))
    if v == "full":
        return np.asarray(params["M"], dtype=np.float64)
    a = np.asarray(params["A"], dtype=np.float64)
    b = np.asarray(params["B"], dtype=np.float64)
    return np.eye(b.shape[0]) + b @ a


def apply_adapter(emb: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """e_θ = e·Mᵀ for embeddings [N, D] (θ ⊙ e for ``diag``), same dtype as ``emb``."""
    emb = np.asarray(emb)
    v = _variant(params)
    if v == "diag":
        out = emb * np.asarray(params["theta"])
    elif v == "full":
        out = emb @ np.asarray(params["M"]).T
    else:
        out = emb + (emb @ np.asarray(params["A"]).T) @ np.asarray(params["B"]).T
    return out.astype(emb.dtype, copy=False)


def save_adapter(
    path: str | os.PathLike, params: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """Write adapter params as safetensors (arrays; variant and ``metadata`` as header strings)."""
    from safetensors.numpy import save_file

    from ..io import atomic_path, stamped_metadata

    v = _variant(params)
    arrays = {
        k: np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        for k, x in params.items()
        if isinstance(x, np.ndarray)
    }
    meta = {"variant": v, **{str(k): str(x) for k, x in (metadata or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=stamped_metadata(path, meta))


def load_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Read params written by :func:`save_adapter`."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            out[k] = f.get_tensor(k)
    out["variant"] = meta.get("variant")
    _variant(out)
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class _Adapter(torch.nn.Module):
    def __init__(self, variant: str, dim: int, rank: int, seed: int):
        super().__init__()
        self.variant = variant
        if variant == "diag":
            self.theta = torch.nn.Parameter(torch.ones(dim))
        elif variant == "full":
            self.M = torch.nn.Parameter(torch.eye(dim))
        else:
            gen = torch.Generator().manual_seed(int(seed))
            bound = 1.0 / math.sqrt(dim)
            self.A = torch.nn.Parameter((torch.rand(rank, dim, generator=gen) * 2 - 1) * bound)
            self.B = torch.nn.Parameter(torch.zeros(dim, rank))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        if self.variant == "diag":
            return e * self.theta
        if self.variant == "full":
            return e @ self.M.T
        return e + (e @ self.A.T) @ self.B.T

    def numpy_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant}
        for name, p in self.named_parameters():
            out[name] = p.detach().to("cpu").numpy().astype(np.float32).copy()
        if self.variant == "lora":
            out["rank"] = int(self.A.shape[0])
        return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (None: leave it) and restore it.

    The few-shot problems are tiny (tens of samples × D); on a busy CPU, intra-op threads
    only add synchronisation (measured: 500 steps took 1.3 s on 1 thread, 8-22 s on 2 busy
    cores), so the trainers default to one thread.
    """
    prev = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(int(n))
        yield
    finally:
        torch.set_num_threads(prev)


def _log_probs(e: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """log g(e) = log softmax(τ cos(e, t_c)); a zero embedding gives the uniform distribution."""
    return F.log_softmax(tau * (F.normalize(e, dim=1) @ text), dim=1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over masked rows of KL(p ‖ q) = Σ_c p (log p − log q); 0 for an empty mask."""
    if not bool(mask.any()):
        return log_q.new_zeros(())
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return kl[mask].mean()


def _mask(x: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if x is None:
        return np.zeros(n, dtype=bool)
    x = np.asarray(x, dtype=bool)
    if x.shape != (n,):
        raise ValueError(f"{name} must be a boolean mask of shape ({n},), got {x.shape}")
    return x


def _check(emb, labels, classifier, teacher_emb) -> None:
    if emb.ndim != 2:
        raise ValueError(f"emb must be [N, D], got {emb.shape}")
    n, d = emb.shape
    if classifier.ndim != 2 or classifier.shape[0] != d:
        raise ValueError(f"classifier must be [D, C] with D = {d}, got {classifier.shape}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N] = ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classifier.shape[1]):
        raise ValueError("labels must index the classifier columns (0..C-1)")
    if teacher_emb is not None and teacher_emb.shape != emb.shape:
        raise ValueError(
            f"teacher_emb must have the shape of emb {emb.shape}, got {teacher_emb.shape}"
        )


def _accuracies(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    correct = pred == y
    if len(y) == 0:
        return float("nan"), float("nan")
    per_class = [correct[y == c].mean() for c in np.unique(y)]
    return float(correct.mean()), float(np.mean(per_class))


def _select_set(select_set, dim: int):
    """(embeddings float32, labels, groups) of the step-selection set, checked; or None."""
    if select_set is None:
        return None
    x, y, g = select_set
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    g = np.asarray(g, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != dim or y.shape != (len(x),) or g.shape != y.shape:
        raise ValueError(
            f"select_set must be (embeddings [n, {dim}], labels [n], groups [n]); got "
            f"{x.shape}, {y.shape}, {g.shape}"
        )
    keep = g >= 0  # rows without a group cannot count for the worst group
    if not keep.any():
        raise ValueError(
            "select_set needs rows with group ids >= 0 (the step is chosen by worst-group "
            "accuracy); give a split with groups, or keep the last step"
        )
    return x[keep], y[keep], g[keep]


def _teacher_acc(teacher, labels, classifier, success) -> float:
    """Accuracy of the ablated teacher (argmax of its logits) on the W shots; NaN if none."""
    if teacher is None or not success.any():
        return float("nan")
    text = classifier.astype(np.float64)
    text = text / np.linalg.norm(text, axis=0, keepdims=True)  # as the adapter's g
    pred = np.argmax(teacher[success].astype(np.float64) @ text, axis=1)
    return float(np.mean(pred == labels[success]))


def _train_loop(steps, eval_every, losses, evaluate, opt, rows) -> None:
    """Full-batch Adam; loss terms logged at every step before its update, plus the end."""
    for step in range(steps + 1):
        terms = losses()
        for k, v in terms.items():
            rows.append((step, "train", k, float(v.detach())))
        if step % eval_every == 0 or step == steps:
            evaluate(step)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()


def train_adapter(
    emb: np.ndarray,
    labels: np.ndarray,
    classifier: np.ndarray,
    teacher_emb: np.ndarray | None = None,
    success_mask: np.ndarray | None = None,
    locality_mask: np.ndarray | None = None,
    *,
    variant: str = DEFAULTS["variant"],
    objective: str = DEFAULTS["objective"],
    alpha: float = DEFAULTS["alpha"],
    beta: float = DEFAULTS["beta"],
    tau: float = DEFAULTS["tau"],
    lr: float = DEFAULTS["lr"],
    steps: int = DEFAULTS["steps"],
    rank: int = DEFAULTS["rank"],
    seed: int = DEFAULTS["seed"],
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    eval_every: int = DEFAULTS["eval_every"],
    device: str | None = None,
    num_threads: int | None = 1,
    select_set: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> AdaptResult:
    """Fit the RefineCLIP adapter (module docstring) on the few-shot samples.

    ``emb`` [N, D] original image embeddings ê(x) of the shots, ``labels`` [N],
    ``classifier`` [D, C] class text embeddings (columns normalised here), ``teacher_emb``
    [N, D] the ablated embeddings E_abl(x, S*) (eq. 5; only rows in ``success_mask`` are used),
    ``success_mask`` W and ``locality_mask`` C ∪ A (see
    :func:`clipbias.methods.refineclip.phase2_masks`). ``tau`` is the softmax temperature of g
    (pass the checkpoint's ``logit_scale.exp()``). ``eval_sets`` maps a name to (embeddings,
    labels) tracked every ``eval_every`` steps. ``select_set`` (embeddings, labels, groups),
    e.g. the validation split: return the evaluated step's adapter with the best worst-group
    accuracy on it (module docstring); None: the last step's. ``device`` None/"auto" = CUDA
    when available.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if steps < 0 or eval_every < 1 or (variant == "lora" and rank < 1):
        raise ValueError("need steps >= 0, eval_every >= 1 and (for lora) rank >= 1")
    emb = np.asarray(emb, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    classifier = np.asarray(classifier, dtype=np.float32)
    teacher = None if teacher_emb is None else np.asarray(teacher_emb, dtype=np.float32)
    _check(emb, labels, classifier, teacher)
    n, dim = emb.shape
    success = _mask(success_mask, n, "success_mask")
    locality = _mask(locality_mask, n, "locality_mask")
    if objective == "refineclip" and (success_mask is None or locality_mask is None):
        raise ValueError(
            "objective 'refineclip' needs success_mask (W) and locality_mask (C ∪ A); "
            "get them from refineclip.phase2_masks(labels, zero-shot predictions)"
        )
    if objective == "refineclip" and success.any() and teacher is None:
        raise ValueError(
            "objective 'refineclip' needs teacher_emb: the ablated embeddings "
            "refineclip.zero_ablate(heads, rest, layers, S*) of the shots"
        )
    if objective == "std_ft":
        alpha, beta = 0.0, 0.0
    if objective == "no_ablated_teacher":
        alpha = 0.0
        locality = np.ones(n, dtype=bool)

    from ..models import resolve_device

    dev = resolve_device(device)
    t0 = time.perf_counter()
    text = F.normalize(torch.tensor(classifier, device=dev), dim=0)
    e = torch.tensor(emb, device=dev)
    y = torch.tensor(labels, device=dev)
    m_succ = torch.tensor(success, device=dev)
    m_loc = torch.tensor(locality, device=dev)
    with torch.no_grad():
        logp_orig = _log_probs(e, text, tau)
        logp_abl = (
            _log_probs(torch.tensor(teacher, device=dev), text, tau)
            if teacher is not None
            else None
        )
    model = _Adapter(variant, dim, rank, seed).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sets = {"train": (emb, labels)}
    for name, (x, yy) in (eval_sets or {}).items():
        if name == "train":
            raise ValueError("'train' is reserved for the training shots; rename the eval set")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"eval set {name!r} must be [n, {dim}], got {x.shape}")
        sets[name] = (x, np.asarray(yy, dtype=np.int64))
    for name, m in (("success", success), ("locality", locality)):
        if name in sets:
            raise ValueError(f"{name!r} is reserved for the shots of that loss; rename the set")
        if m.any():
            sets[name] = (emb[m], labels[m])
    eval_t = {k: torch.tensor(x, device=dev) for k, (x, _) in sets.items()}
    sel = _select_set(select_set, dim)
    sel_t = None if sel is None else torch.tensor(sel[0], device=dev)
    best: dict[str, Any] = {}
    rows: list[tuple[int, str, str, float]] = []

    def losses() -> dict[str, torch.Tensor]:
        logq = _log_probs(model(e), text, tau)
        ce = F.nll_loss(logq, y)
        succ = _kl(logp_abl, logq, m_succ) if logp_abl is not None else ce.new_zeros(())
        loc = _kl(logp_orig, logq, m_loc)
        return {"loss": ce + alpha * succ + beta * loc, "ce": ce, "success": succ, "locality": loc}

    def evaluate(step: int) -> None:
        with torch.no_grad():
            for name, (_, yy) in sets.items():
                pred = torch.argmax(model(eval_t[name]) @ text, dim=1).cpu().numpy()
                acc, cavg = _accuracies(pred, yy)
                rows.append((step, name, "acc", acc))
                rows.append((step, name, "class_avg_acc", cavg))
            if sel is None:
                return
            pred = torch.argmax(model(sel_t) @ text, dim=1).cpu().numpy()
            key = (
                metrics.worst_group_accuracy(pred, sel[1], sel[2]),
                metrics.avg_group_accuracy(pred, sel[1], sel[2]),
            )
            rows.append((step, "select", "worst_group_acc", key[0]))
            rows.append((step, "select", "avg_group_acc", key[1]))
            if not best or key > best["key"]:  # ties: the earlier step
                best.update(key=key, step=step, params=model.numpy_params())

    with torch_threads(num_threads):
        _train_loop(steps, eval_every, losses, evaluate, opt, rows)
    curves = pd.DataFrame(rows, columns=["step", "set", "metric", "value"])
    params = model.numpy_params() if sel is None else best["params"]
    chosen = steps if sel is None else int(best["step"])
    at = curves[curves.step == chosen].set_index(["set", "metric"]).value
    config = {
        "variant": variant,
        "objective": objective,
        "alpha": float(alpha),
        "beta": float(beta),
        "tau": float(tau),
        "lr": float(lr),
        "steps": int(steps),
        "rank": int(rank) if variant == "lora" else None,
        "seed": int(seed),
        "optimizer": "Adam (full batch)",
        "n_samples": int(n),
        "n_success": int(success.sum()),
        "n_locality": int(locality.sum()),
        # the ablated teacher on W and the adapter on W at the kept step (NaN: W empty)
        "teacher_acc_success": _teacher_acc(teacher, labels, classifier, success),
        "success_acc": float(at.get(("success", "acc"), float("nan"))),
        "locality_acc": float(at.get(("locality", "acc"), float("nan"))),
        "step_selection": "last" if sel is None else "select_set worst_group_acc",
        "selected_step": chosen,
        "device": str(dev),
        "num_threads": num_threads,
        "wall_seconds": time.perf_counter() - t0,
    }
    final = curves[(curves.step == steps) & (curves.set == "train")].set_index("metric").value
    log.info(
        "RefineCLIP phase 2: adapter of step %d; on W teacher acc %.3f, adapter %.3f",
        chosen,
        config["teacher_acc_success"],
        config["success_acc"],
    )
    log.info(
        "RefineCLIP phase 2 (%s, %s, α=%g, β=%g, τ=%g, lr=%g, %d steps): loss %.4g, "
        "train acc %.3f, %.1f s",
        variant,
        objective,
        alpha,
        beta,
        tau,
        lr,
        steps,
        final["loss"],
        final["acc"],
        config["wall_seconds"],
    )
    return AdaptResult(params=params, curves=curves, config=config)
