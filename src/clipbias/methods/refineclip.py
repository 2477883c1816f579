"""RefineCLIP phase 1, identify-then-ablate (METHODS §5.1-5.5), and edit metrics (§7.1).

From a few labelled shots, every error direction (y_e, ŷ_e) present among the zero-shot
predictions gives three sample sets (§5.1): W (label y_e predicted ŷ_e), C (label y_e predicted
correctly), A (label ŷ_e predicted correctly). For every head of the last 4 stored layers the
head-replacement effect (eq. 6)

    Δ(x, y, h̄) = sim(ê(x) − ĉ_k(x) + h̄_k, t_y) − sim(ê(x), t_y)

feeds four direct-effect scores (eqs. 7-9):

    DE_A = mean_W [Δ(x, y_e, h̄_C) − Δ(x, ŷ_e, h̄_C)]   list: descending
    DE_B = mean_C [Δ(x, y_e, h̄_W) − Δ(x, ŷ_e, h̄_W)]   list: ascending
    DE_C = mean_A [Δ(x, ŷ_e, h̄_W) − Δ(x, y_e, h̄_W)]   list: descending
    DE_D = mean_W [Δ(x, ŷ_e, h̄_A) − Δ(x, y_e, h̄_A)]   list: ascending

A score is computed when the set it averages over is non-empty; an empty *reference* set (the
one whose mean replaces the head) is the zero vector (paper Appendix A.2). Each computable
score gives a candidate list of its top T heads; S_t = the first t heads of a list is
zero-ablated (eq. 5) and scored by the utility (eq. 10)

    U(S_t) = mean_i [sim(E_abl(x_i, S_t), t_{y_i}) − mean_{y ≠ y_i} sim(E_abl(x_i, S_t), t_y)]

with each sample's own label y_i (``utility_label="own"``, the default: the paper's text says
the utility compares the ablated representation "to the ground-truth label versus
non-ground-truth labels", §3.2) or, as eq. 10 is printed, with the class y_e of the list's
error direction for every shot (``utility_label="y_e"``; METHODS §9 #14). S* maximises U over
all directions, lists and t; ties go to the smaller t, then to the first list in the order
(direction (y_e, ŷ_e) ascending, score A, B, C, D).

T, the length of a candidate list, is the paper's 15 (of the 4 × 16 = 64 heads of ViT-L/14
and ViT-H/14; also 15 of ViT-B/16's 48); ``T_ratio`` scales it to models with fewer scored
heads K: T = min(T, max(1, round(T_ratio · K))) (:func:`candidate_length`; 15/64 is the
paper's ratio at 64 heads).

"Ours*" (:func:`select_on_validation`; paper Appendix A.2: "we perform ablation on the top t
heads in each ordered candidate list and select the list that delivers the best performance on
the validation set, rather than relying on the utility estimation") keeps each list's t of
largest utility and picks the *list* with the best worst-group accuracy on a validation split,
ties by average-group accuracy (§5.5 step 6); ``choose_t="validation"`` picks t on the
validation split as well (the variant ``refineclip_star_t``). Both need only per-group counts
of correct predictions per candidate, which :func:`validation_counts` accumulates over a
streamed split.

All interventions are direct-path interventions on the stored contributions (§1.3): the
ablated embedding is not renormalised; the cosine similarity makes its norm irrelevant. The
cosine of a zero vector is taken as 0 (it only arises when every component is ablated).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from . import HeadId, all_heads, head_position, head_str, parse_head

log = logging.getLogger(__name__)

SCORES = ("A", "B", "C", "D")
SCORE_ORDER = {"A": "descending", "B": "ascending", "C": "descending", "D": "ascending"}
SIMILARITIES = ("cosine", "dot")
UTILITY_LABELS = ("own", "y_e")
CHOOSE_T = ("utility", "validation")
DEFAULT_T = 15
DEFAULT_SCORE_LAYERS = 4

__all__ = [
    "DEFAULT_SCORE_LAYERS",
    "DEFAULT_T",
    "SCORES",
    "UTILITY_LABELS",
    "ErrorDirection",
    "ValidationCounts",
    "candidate_length",
    "candidate_order",
    "direct_effect_scores",
    "edit_metric_rows",
    "edit_metrics",
    "error_directions",
    "identify_then_ablate",
    "parse_head",
    "phase2_masks",
    "replacement_effect",
    "sample_shots",
    "scores_frame",
    "select_max_utility",
    "select_on_validation",
    "select_on_validation_counts",
    "selected_heads",
    "utility",
    "utility_curve",
    "validation_counts",
    "zero_ablate",
    "zero_shot_predictions",
]


# ---------------------------------------------------------------------------------------------
# Few-shot sampling (§5.5, "sample selection")
# ---------------------------------------------------------------------------------------------


def sample_shots(
    labels: np.ndarray,
    n_per_class: int,
    seed: int = 42,
    pool_mask: np.ndarray | None = None,
    classes: Iterable[int] | None = None,
) -> np.ndarray:
    """Indices of ``n_per_class`` samples per class, drawn without replacement.

    ``classes`` defaults to every label value in ``labels``; ``pool_mask`` [N] restricts the
    draw (e.g. to the train split). Classes are visited in increasing order with one seeded
    :class:`numpy.random.Generator`, so the draw depends only on (labels, pool, n, seed).
    Returns the sorted indices, int64. Raises if a class has fewer than ``n_per_class`` samples
    in the pool.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    pool = np.ones(len(labels), dtype=bool)
    if pool_mask is not None:
        pool_mask = np.asarray(pool_mask, dtype=bool)
        if pool_mask.shape != labels.shape:
            raise ValueError(
                f"pool_mask has shape {pool_mask.shape}, labels {labels.shape}; give one "
                "boolean per sample"
            )
        pool = pool_mask
    wanted = np.unique(labels) if classes is None else np.unique(np.asarray(list(classes)))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in wanted:
        idx = np.flatnonzero(pool & (labels == c))
        if len(idx) < n_per_class:
            raise ValueError(
                f"class {int(c)} has only {len(idx)} samples in the pool, {n_per_class} needed; "
                "lower n_per_class or widen the pool (e.g. another split)"
            )
        chosen.append(rng.choice(idx, size=n_per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Predictions, error directions, zero ablation (§5.1, §5.2)
# ---------------------------------------------------------------------------------------------


def _embeddings(heads: np.ndarray, rest: np.ndarray) -> np.ndarray:
    return np.asarray(heads).sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, np.float64)


def zero_shot_predictions(heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray):
    """argmax_c <Σ ĉ_k, t_c> per sample, [N] int64."""
    return metrics.predict(_embeddings(heads, rest), np.asarray(classifier, np.float64))


@dataclass(frozen=True)
class ErrorDirection:
    """Sample sets of one error direction (§5.1); index arrays into the shots."""

    true: int
    pred: int
    wrong: np.ndarray  # W: label == true, prediction == pred
    correct: np.ndarray  # C: label == true, predicted correctly
    reference: np.ndarray  # A: label == pred, predicted correctly

    @property
    def key(self) -> str:
        return f"{self.true}->{self.pred}"


def error_directions(labels: np.ndarray, preds: np.ndarray) -> list[ErrorDirection]:
    """Every (y_e, ŷ_e) with at least one misclassified sample, ordered by (y_e, ŷ_e)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    ok = labels == preds
    pairs = sorted({(int(y), int(p)) for y, p in zip(labels[~ok], preds[~ok], strict=True)})
    return [
        ErrorDirection(
            y,
            p,
            np.flatnonzero((labels == y) & (preds == p)),
            np.flatnonzero(ok & (labels == y)),
            np.flatnonzero(ok & (labels == p)),
        )
        for y, p in pairs
    ]


def phase2_masks(
    labels: np.ndarray, preds: np.ndarray, direction: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (success, locality) for phase 2 (§5.6).

    ``direction`` "y->p" (the error direction S* was selected for): success = its W set
    W_{y_e,ŷ_e} (eq. 11), locality = its C_{y_e} ∪ A_{ŷ_e} (eq. 12). ``None``: success = the
    union of the W sets (every misclassified shot), locality = the union of the C and A sets
    over all error directions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    dirs = error_directions(labels, preds)
    if direction is not None:
        dirs = [d for d in dirs if d.key == direction]
        if not dirs:
            raise ValueError(
                f"no misclassified shot in direction {direction!r} among these shots; "
                "pass the direction of the phase-1 result's S* (selected.direction)"
            )
    success = np.zeros(len(labels), dtype=bool)
    locality = np.zeros(len(labels), dtype=bool)
    for d in dirs:
        success[d.wrong] = True
        locality[d.correct] = True
        locality[d.reference] = True
    return success, locality


def _positions(heads_ids: Iterable[str | Sequence[int]], layers: Sequence[int]):
    return [head_position(parse_head(h), layers) for h in heads_ids]


def zero_ablate(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    ablate: Iterable[str | Sequence[int]],
) -> np.ndarray:
    """Zero ablation (eq. 5): ê(x) − Σ_{(l,h)∈S} ĉ_{l,h}(x), [N, D] float64, not renormalised.

    ``heads`` [N, L, H, D] holds the stored layers ``layers``; head ids are "L{l}H{h}" or tuples.
    """
    heads = np.asarray(heads)
    emb = _embeddings(heads, rest)
    for li, h in _positions(ablate, layers):
        emb -= heads[:, li, h].astype(np.float64)
    return emb


# ---------------------------------------------------------------------------------------------
# Head-replacement effect (eq. 6) and the four scores (eqs. 7-9)
# ---------------------------------------------------------------------------------------------


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; expected one of {SIMILARITIES}")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (cosine of a zero vector := 0)."""
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den > 0)
    return out


def replacement_effect(
    emb: np.ndarray,
    contrib: np.ndarray,
    replacement: np.ndarray,
    text: np.ndarray,
    similarity: str = "cosine",
) -> np.ndarray:
    """Δ (eq. 6) for every sample, head and class at once, [n, K, m] float64.

    ``emb`` [n, D] image embeddings ê(x), ``contrib`` [n, K, D] head contributions ĉ_k(x),
    ``replacement`` [K, D] the vectors h̄_k put in their place, ``text`` [D, m] class text
    embeddings. ``similarity="cosine"`` (CLIP) or ``"dot"`` (Proposition 1). The cosine uses
    ‖e − c + h̄‖² = ‖e‖² + ‖c‖² + ‖h̄‖² − 2⟨e,c⟩ + 2⟨e,h̄⟩ − 2⟨c,h̄⟩, so no [n, K, D] copy is made.
    """
    _check_similarity(similarity)
    e = np.asarray(emb, dtype=np.float64)
    c = np.asarray(contrib, dtype=np.float64)
    r = np.asarray(replacement, dtype=np.float64)
    t = np.asarray(text, dtype=np.float64)
    base = e @ t  # [n, m]
    new = base[:, None, :] - np.einsum("nkd,dm->nkm", c, t) + (r @ t)[None]
    if similarity == "dot":
        return new - base[:, None, :]
    e2 = np.einsum("nd,nd->n", e, e)
    sq = (
        e2[:, None]
        + np.einsum("nkd,nkd->nk", c, c)
        + np.einsum("kd,kd->k", r, r)[None]
        - 2 * np.einsum("nd,nkd->nk", e, c)
        + 2 * (e @ r.T)
        - 2 * np.einsum("nkd,kd->nk", c, r)
    )
    new_norm = np.sqrt(np.maximum(sq, 0.0))[..., None]
    base_norm = np.sqrt(e2)[:, None]
    return _safe_div(new, new_norm) - _safe_div(base, base_norm)[:, None, :]


def _mean_or_zero(contrib: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if len(idx) == 0:
        return np.zeros(contrib.shape[1:], dtype=np.float64)
    return contrib[idx].mean(axis=0)


def direct_effect_scores(
    emb: np.ndarray,
    contrib: np.ndarray,
    classifier: np.ndarray,
    true: int,
    pred: int,
    wrong: Sequence[int],
    correct: Sequence[int],
    reference: Sequence[int],
    similarity: str = "cosine",
) -> dict[str, np.ndarray | None]:
    """DE_A..DE_D (eqs. 7-9) of all K heads for one error direction, ``{score: [K] | None}``.

    ``emb`` [n, D], ``contrib`` [n, K, D] over the shots; ``wrong``/``correct``/``reference``
    index W, C, A. A score is ``None`` when the set it averages over is empty (DE_B needs C,
    DE_C needs A); an empty reference set is replaced by the zero vector.
    """
    wrong, correct, reference = (np.asarray(x, dtype=np.int64) for x in (wrong, correct, reference))
    if len(wrong) == 0:
        raise ValueError(
            f"direction {true}->{pred} has no misclassified samples (W is empty); "
            "scores are defined only for observed errors"
        )
    emb = np.asarray(emb, dtype=np.float64)
    contrib = np.asarray(contrib, dtype=np.float64)
    text = np.asarray(classifier, dtype=np.float64)[:, [true, pred]]  # column 0: y_e, 1: ŷ_e
    mean_w = _mean_or_zero(contrib, wrong)
    mean_c = _mean_or_zero(contrib, correct)
    mean_a = _mean_or_zero(contrib, reference)

    def de(samples: np.ndarray, repl: np.ndarray, toward_true: bool) -> np.ndarray | None:
        if len(samples) == 0:
            return None
        delta = replacement_effect(emb[samples], contrib[samples], repl, text, similarity)
        diff = delta[..., 0] - delta[..., 1]  # Δ(y_e) − Δ(ŷ_e)
        return (diff if toward_true else -diff).mean(axis=0)

    return {
        "A": de(wrong, mean_c, True),
        "B": de(correct, mean_w, True),
        "C": de(reference, mean_w, False),
        "D": de(wrong, mean_a, False),
    }


def candidate_length(T: int, T_ratio: float | None, n_scored: int) -> int:
    """Length of a candidate list: ``T`` (the paper's 15), or with ``T_ratio`` the ratio's
    share of the ``n_scored`` heads, rounded half up, at least 1 and at most ``T``; never more
    than ``n_scored``. E.g. T_ratio = 15/64: 15 of 64 heads, 4 of 16."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if T_ratio is not None:
        if not 0 < T_ratio <= 1:
            raise ValueError(f"T_ratio must be in (0, 1], got {T_ratio}")
        T = min(T, max(1, math.floor(T_ratio * n_scored + 0.5)))
    return int(min(T, n_scored))


def candidate_order(values: np.ndarray, score: str, T: int) -> np.ndarray:
    """Flat head ids of the top T heads for a score (§5.4 ordering; ties: storage order)."""
    v = np.asarray(values, dtype=np.float64)
    key = -v if SCORE_ORDER[score] == "descending" else v
    return np.argsort(key, kind="stable")[: min(T, len(v))]


# ---------------------------------------------------------------------------------------------
# Utility (eq. 10) and selection (Algorithm 1)
# ---------------------------------------------------------------------------------------------


def _sims(emb: np.ndarray, classifier: np.ndarray, similarity: str) -> np.ndarray:
    """sim(emb, t_c) over the last axis of ``emb`` -> [..., C]."""
    s = emb @ classifier
    if similarity == "dot":
        return s
    return _safe_div(s, np.linalg.norm(emb, axis=-1, keepdims=True))


def _utility_from_sims(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mean over samples (axis 0) of s[y_i] − mean_{y≠y_i} s[y]; s is [n, ..., C]."""
    n_cls = s.shape[-1]
    if n_cls < 2:
        raise ValueError("the utility needs at least two classes")
    idx = labels.reshape((-1,) + (1,) * (s.ndim - 1))
    own = np.take_along_axis(s, idx, axis=-1)[..., 0]
    others = (s.sum(axis=-1) - own) / (n_cls - 1)
    return (own - others).mean(axis=0)


def utility(
    emb: np.ndarray, classifier: np.ndarray, labels: np.ndarray, similarity: str = "cosine"
) -> float:
    """U (eq. 10) of a set of (ablated) embeddings [n, D] with each sample's own label."""
    _check_similarity(similarity)
    s = _sims(np.asarray(emb, np.float64), np.asarray(classifier, np.float64), similarity)
    return float(_utility_from_sims(s, np.asarray(labels, dtype=np.int64)))


def utility_curve(
    emb: np.ndarray,
    contrib: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    order: Sequence[int],
    similarity: str = "cosine",
) -> np.ndarray:
    """U(S_t) for t = 1..len(order), S_t = the first t heads of ``order`` (flat ids), [T]."""
    _check_similarity(similarity)
    order = np.asarray(order, dtype=np.int64)
    classifier = np.asarray(classifier, np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    ablated = np.array(emb, dtype=np.float64)  # running ê − Σ_{j≤t} ĉ_j (numpy's cumsum is slow)
    curve = np.empty(len(order))
    for t, k in enumerate(order):
        ablated -= contrib[:, k]
        curve[t] = _utility_from_sims(_sims(ablated, classifier, similarity), labels)
    return curve


def select_max_utility(curves: Sequence[np.ndarray], atol: float = 0.0) -> tuple[int, int]:
    """(list index, t) with the largest utility; ties (within ``atol``) -> smaller t, then the
    earlier list. ``t`` is 1-based."""
    if not curves:
        raise ValueError("no candidate lists to select from")
    best = max(float(np.max(c)) for c in curves if len(c))
    ties = [
        (t + 1, i)
        for i, c in enumerate(curves)
        for t, u in enumerate(np.asarray(c))
        if u >= best - atol
    ]
    t, i = min(ties)
    return i, t


# ---------------------------------------------------------------------------------------------
# Phase 1 driver
# ---------------------------------------------------------------------------------------------


def _score_layers(layers: Sequence[int], n_score_layers: int) -> list[int]:
    layers = [int(x) for x in layers]
    if n_score_layers < 1:
        raise ValueError(f"n_score_layers must be >= 1, got {n_score_layers}")
    chosen = sorted(layers)[-n_score_layers:]
    if len(chosen) < n_score_layers:
        log.warning(
            "only %d stored layers (%s); scoring all of them instead of the last %d",
            len(chosen),
            chosen,
            n_score_layers,
        )
    return chosen


def _check_inputs(heads, rest, classifier, labels, layers) -> None:
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got shape {heads.shape}")
    n, n_l, _, d = heads.shape
    if rest.shape != (n, d):
        raise ValueError(f"rest must be [N, D] = {(n, d)}, got {rest.shape}")
    if classifier.ndim != 2 or classifier.shape[0] != d:
        raise ValueError(f"classifier must be [D, C] with D = {d}, got {classifier.shape}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N] = ({n},), got {labels.shape}")
    if len(layers) != n_l:
        raise ValueError(f"{len(layers)} layer numbers given for {n_l} stored layers")
    if len(labels) and (labels.min() < 0 or labels.max() >= classifier.shape[1]):
        raise ValueError("labels must index the classifier columns (0..C-1)")


def identify_then_ablate(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[int],
    *,
    T: int = DEFAULT_T,
    n_score_layers: int = DEFAULT_SCORE_LAYERS,
    similarity: str = "cosine",
    class_names: Sequence[str] | None = None,
    tie_atol: float = 0.0,
    T_ratio: float | None = None,
    utility_label: str = "own",
) -> dict[str, Any]:
    """RefineCLIP phase 1 on the few-shot samples (METHODS §5.1-5.5, Algorithm 1).

    ``heads`` [n, L, H, D] (stored layers ``layers``), ``rest`` [n, D], ``classifier`` [D, C]
    and ``labels`` [n] of the shots only. Zero-shot predictions come from the full embedding;
    heads of the last ``n_score_layers`` stored layers are scored; lists hold
    :func:`candidate_length` (``T``, ``T_ratio``) heads; the utility uses each shot's own label
    or the direction's y_e (``utility_label``, module docstring). Returns the JSON-serialisable
    result described in the module docstring of :mod:`clipbias.methods.refineclip` ("Table 4
    format"): selected heads, every candidate list with its values and utility curve, and the
    scores table.
    """
    _check_similarity(similarity)
    if utility_label not in UTILITY_LABELS:
        raise ValueError(f"utility_label must be one of {UTILITY_LABELS}, got {utility_label!r}")
    heads = np.asarray(heads)
    rest = np.asarray(rest)
    classifier = np.asarray(classifier, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    _check_inputs(heads, rest, classifier, labels, layers)
    layers = [int(x) for x in layers]
    n_heads = heads.shape[2]
    score_layers = _score_layers(layers, n_score_layers)
    pos = [layers.index(x) for x in score_layers]
    ids: list[HeadId] = all_heads(score_layers, n_heads)
    T_used = candidate_length(int(T), T_ratio, len(ids))
    emb = _embeddings(heads, rest)
    contrib = heads[:, pos].astype(np.float64).reshape(len(heads), -1, heads.shape[-1])
    preds = metrics.predict(emb, classifier)
    directions = error_directions(labels, preds)
    names = list(class_names) if class_names is not None else None

    def cname(c: int) -> str | None:
        return names[c] if names is not None else None

    out_dirs: list[dict[str, Any]] = []
    table4: dict[str, dict[str, list[str]]] = {}
    rows: list[dict[str, Any]] = []
    curves: list[np.ndarray] = []
    where: list[tuple[int, int]] = []
    for d in directions:
        sc = direct_effect_scores(
            emb, contrib, classifier, d.true, d.pred, d.wrong, d.correct, d.reference, similarity
        )
        skipped = {}
        if sc["B"] is None:
            skipped["B"] = f"no correct samples of the true class {d.true} (C is empty)"
        if sc["C"] is None:
            skipped["C"] = f"no correct samples of the predicted class {d.pred} (A is empty)"
        lists = []
        # eq. 10 with each shot's own label, or with the direction's y_e for every shot
        u_labels = labels if utility_label == "own" else np.full(len(labels), d.true)
        for s in SCORES:
            if sc[s] is None:
                continue
            order = candidate_order(sc[s], s, T_used)
            curve = utility_curve(emb, contrib, classifier, u_labels, order, similarity)
            curves.append(curve)
            where.append((len(out_dirs), len(lists)))
            lists.append(
                {
                    "score": s,
                    "order": SCORE_ORDER[s],
                    "heads": [head_str(ids[k]) for k in order],
                    "values": [float(sc[s][k]) for k in order],
                    "utility": [float(u) for u in curve],
                }
            )
        table4[d.key] = {item["score"]: item["heads"] for item in lists}
        out_dirs.append(
            {
                "key": d.key,
                "true_label": d.true,
                "pred_label": d.pred,
                "true_name": cname(d.true),
                "pred_name": cname(d.pred),
                "n_wrong": len(d.wrong),
                "n_correct": len(d.correct),
                "n_reference": len(d.reference),
                "utility_no_ablation": utility(emb, classifier, u_labels, similarity),
                "lists": lists,
                "skipped": skipped,
            }
        )
        for k, (layer, h) in enumerate(ids):
            row = {"direction": d.key, "head": head_str((layer, h)), "layer": layer, "index": h}
            for s in SCORES:
                row[f"DE_{s}"] = None if sc[s] is None else float(sc[s][k])
            rows.append(row)
    u0 = utility(emb, classifier, labels, similarity)
    if curves:
        li, t = select_max_utility(curves, atol=tie_atol)
        di, ci = where[li]
        chosen = out_dirs[di]["lists"][ci]
        selected = {
            "heads": chosen["heads"][:t],
            "t": int(t),
            "direction": out_dirs[di]["key"],
            "score": chosen["score"],
            "utility": chosen["utility"][t - 1],
        }
    else:
        log.warning(
            "RefineCLIP phase 1: no misclassified shot among %d; nothing to edit (S* is empty)",
            len(labels),
        )
        selected = {"heads": [], "t": 0, "direction": None, "score": None, "utility": u0}
    result = {
        "method": "refineclip_phase1",
        "selection": "utility",
        "similarity": similarity,
        "T": int(T),
        "T_ratio": None if T_ratio is None else float(T_ratio),
        "T_used": T_used,
        "utility_label": utility_label,
        "layers": layers,
        "score_layers": score_layers,
        "n_heads": int(n_heads),
        "n_scored_heads": len(ids),
        "class_names": names,
        "n_shots": int(len(labels)),
        "n_wrong": int(np.sum(preds != labels)),
        "utility_no_ablation": u0,
        "selected": selected,
        "directions": out_dirs,
        "table4": table4,
        "scores": rows,
    }
    log.info(
        "RefineCLIP phase 1: %d shots, %d errors in %d directions; S* = %s (list %s/%s, t=%d, "
        "U=%.4f vs %.4f without ablation)",
        len(labels),
        result["n_wrong"],
        len(out_dirs),
        ",".join(result["selected"]["heads"]),
        result["selected"]["direction"],
        result["selected"]["score"],
        result["selected"]["t"],
        result["selected"]["utility"],
        result["utility_no_ablation"],
    )
    return result


def selected_heads(result: Mapping[str, Any]) -> list[HeadId]:
    """S* of a phase-1 result as (layer, head) tuples, in list order."""
    return [parse_head(h) for h in result["selected"]["heads"]]


def scores_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """The scores table of a phase-1 result: direction, head, layer, index, DE_A..DE_D."""
    cols = ["direction", "head", "layer", "index"] + [f"DE_{s}" for s in SCORES]
    return pd.DataFrame(result["scores"], columns=cols)


# ---------------------------------------------------------------------------------------------
# "Ours*": validation-selected list (t by utility, or t too) (§5.5 step 6)
# ---------------------------------------------------------------------------------------------


@dataclass
class ValidationCounts:
    """Correct predictions of every Ours* candidate on a validation split, per group and
    overall, accumulated batch by batch (:func:`validation_counts`); memory O(groups ×
    candidates), independent of the number of rows.

    Candidate 0 is no ablation; then, for every candidate list in result order (directions,
    then lists), its prefixes S_1..S_T. Zero ablation e − Σ_{h∈S} c_h changes the dot logits
    by −Σ_{h∈S} c_h·W; the cosine's positive per-image factor 1/‖e'‖ leaves the argmax
    unchanged, so the dot logits decide the prediction (as in :func:`metrics.predict`).
    """

    classifier: np.ndarray  # [D, C] float64
    layers: list[int]
    positions: list[list[tuple[int, int]]]  # per list: (layer index, head) of its heads
    n: int = 0
    correct: np.ndarray | None = None  # [M] over all rows (also those without a group)
    group_n: dict[int, int] = field(default_factory=dict)
    group_correct: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [M]

    def __post_init__(self) -> None:
        self.correct = np.zeros(1 + sum(len(p) for p in self.positions), dtype=np.int64)

    def update(self, heads, rest, labels, groups) -> None:
        """Add a batch: ``heads`` [n, L, H, D] (the stored layers ``layers``), ``rest``
        [n, D], ``labels`` and ``groups`` [n] (groups < 0 count for the overall accuracy
        only)."""
        heads = np.asarray(heads)
        labels = np.asarray(labels, dtype=np.int64)
        groups = np.asarray(groups, dtype=np.int64)
        _check_inputs(heads, np.asarray(rest), self.classifier, labels, self.layers)
        if groups.shape != labels.shape:
            raise ValueError(f"groups {groups.shape} and labels {labels.shape} differ")
        base = _embeddings(heads, rest) @ self.classifier  # dot logits [n, C]
        preds = [np.argmax(base, axis=1)[:, None]]
        cache: dict[tuple[int, int], np.ndarray] = {}  # head logits of this batch
        for pos in self.positions:
            for p in pos:
                if p not in cache:
                    cache[p] = heads[:, p[0], p[1]].astype(np.float64) @ self.classifier
            head_logits = np.stack([cache[p] for p in pos], axis=1)  # [n, T, C]
            preds.append(np.argmax(base[:, None, :] - np.cumsum(head_logits, axis=1), axis=2))
        correct = np.concatenate(preds, axis=1) == labels[:, None]  # [n, M]
        self.correct += correct.sum(axis=0)
        self.n += len(labels)
        for g in np.unique(groups[groups >= 0]):
            m = groups == g
            g = int(g)
            self.group_n[g] = self.group_n.get(g, 0) + int(m.sum())
            self.group_correct[g] = self.group_correct.get(g, 0) + correct[m].sum(axis=0)

    def metrics(self, m: int, tie_break: str) -> tuple[float, float]:
        """(worst-group accuracy, tie-break metric) of candidate ``m``, equal to
        :func:`metrics.worst_group_accuracy` and :func:`metrics.avg_group_accuracy` /
        :func:`metrics.avg_overall_accuracy` of its predictions (same float operations)."""
        acc = {g: float(self.group_correct[g][m] / self.group_n[g]) for g in sorted(self.group_n)}
        wg = float(min(acc.values()))
        if tie_break == "avg_group_acc":
            return wg, float(np.mean(list(acc.values())))
        return wg, float(self.correct[m] / self.n)


def validation_counts(
    result: Mapping[str, Any],
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    classifier: np.ndarray,
    layers: Sequence[int],
) -> ValidationCounts:
    """:class:`ValidationCounts` of the candidates of a phase-1 ``result`` over ``batches``
    of (heads [n, L, H, D], rest [n, D], labels [n], groups [n]), e.g. a validation split
    streamed by :meth:`clipbias.features.FeatureSet.iter_batches`."""
    layers = [int(x) for x in layers]
    positions = [
        _positions(item["heads"], layers) for d in result["directions"] for item in d["lists"]
    ]
    counts = ValidationCounts(np.asarray(classifier, dtype=np.float64), layers, positions)
    for heads, rest, labels, groups in batches:
        counts.update(heads, rest, labels, groups)
    return counts


def select_on_validation_counts(
    result: Mapping[str, Any],
    counts: ValidationCounts,
    tie_break: str = "avg_group_acc",
    choose_t: str = "utility",
) -> dict[str, Any]:
    """Ours* ("validation"): re-select S* among the phase-1 candidates from their counts on
    a validation split (:func:`validation_counts`).

    ``choose_t="utility"`` (paper Appendix A.2, the default): each list keeps its t of largest
    utility (ties: smaller t) and the *list* with the best worst-group accuracy of that prefix
    is chosen, ties by ``tie_break`` (``avg_group_acc``, the paper's "Avg.", or ``avg_acc``),
    then list order; ``selection = "validation"``. ``choose_t="validation"``: the list and t
    with the best worst-group accuracy, ties by ``tie_break``, then smaller t, then list order;
    ``selection = "validation_t"``. Returns a copy of ``result`` with the new ``selected``
    and per-list curves ``validation_worst_group_acc`` and ``validation_<tie_break>`` over
    every t (and ``utility_t``, the list's t of largest utility).
    """
    if tie_break not in ("avg_group_acc", "avg_acc"):
        raise ValueError(f"tie_break must be 'avg_group_acc' or 'avg_acc', got {tie_break!r}")
    if choose_t not in CHOOSE_T:
        raise ValueError(f"choose_t must be one of {CHOOSE_T}, got {choose_t!r}")
    if not counts.n:
        raise ValueError("validation selection needs at least one validation row")
    if not counts.group_n:
        raise ValueError(
            "validation selection needs a group id >= 0 per sample (worst-group accuracy); "
            "pass the dataset's group column"
        )
    out = {k: v for k, v in result.items() if k not in ("directions", "selected")}
    out["directions"] = []
    wg0, tb0 = counts.metrics(0, tie_break)
    best: tuple | None = None
    m = 1
    for d in result["directions"]:
        new_lists = []
        for item in d["lists"]:
            wgs, tbs = [], []
            for _ in item["heads"]:
                wg, tb = counts.metrics(m, tie_break)
                m += 1
                wgs.append(wg)
                tbs.append(tb)
            t_u = select_max_utility([np.asarray(item["utility"])])[1]
            ts = [t_u] if choose_t == "utility" else range(1, len(wgs) + 1)
            for t in ts:
                key = (wgs[t - 1], tbs[t - 1], -t if choose_t == "validation" else 0)
                if best is None or key > best[0]:
                    best = (key, d["key"], item, t)
            new_lists.append(
                dict(
                    item,
                    utility_t=int(t_u),
                    validation_worst_group_acc=wgs,
                    **{f"validation_{tie_break}": tbs},
                )
            )
        out["directions"].append(dict(d, lists=new_lists))
    out["selection"] = "validation" if choose_t == "utility" else "validation_t"
    out["validation"] = {
        "n": int(counts.n),
        "criterion": "worst_group_acc",
        "tie_break": tie_break,
        "choose_t": choose_t,
        "no_ablation_worst_group_acc": wg0,
        f"no_ablation_{tie_break}": tb0,
    }
    if best is None:  # no candidate lists: phase 1 found no error to edit
        out["selected"] = dict(
            result["selected"], validation_worst_group_acc=wg0, **{f"validation_{tie_break}": tb0}
        )
        return out
    (wg, tb, _), key, item, t = best
    out["selected"] = {
        "heads": item["heads"][:t],
        "t": int(t),
        "direction": key,
        "score": item["score"],
        "utility": item["utility"][t - 1],
        "validation_worst_group_acc": wg,
        f"validation_{tie_break}": tb,
    }
    log.info(
        "RefineCLIP Ours* (t by %s): S* = %s (list %s/%s, t=%d), validation WG %.4f (%.4f without)",
        choose_t,
        ",".join(out["selected"]["heads"]),
        key,
        item["score"],
        t,
        wg,
        wg0,
    )
    return out


def select_on_validation(
    result: Mapping[str, Any],
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    layers: Sequence[int],
    tie_break: str = "avg_group_acc",
    choose_t: str = "utility",
) -> dict[str, Any]:
    """:func:`select_on_validation_counts` on a validation decomposition held in memory
    (one batch); stages stream the split through :func:`validation_counts` instead."""
    if tie_break not in ("avg_group_acc", "avg_acc"):
        raise ValueError(f"tie_break must be 'avg_group_acc' or 'avg_acc', got {tie_break!r}")
    counts = validation_counts(result, [(heads, rest, labels, groups)], classifier, layers)
    return select_on_validation_counts(result, counts, tie_break, choose_t)


# ---------------------------------------------------------------------------------------------
# Edit success / locality (§7.1)
# ---------------------------------------------------------------------------------------------


def _class_average(correct: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))


def edit_metrics(
    preds: np.ndarray, labels: np.ndarray, target_classes: Iterable[int]
) -> dict[str, float]:
    """Edit success (accuracy on the target classes) and locality (accuracy on the others),
    each sample-weighted and per-class averaged (METHODS §7.1). NaN for an empty side."""
    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    targets = np.asarray(list(target_classes), dtype=np.int64)
    if len(targets) == 0:
        raise ValueError("give at least one target class (the classes being edited)")
    correct = preds == labels
    is_t = np.isin(labels, targets)
    out = {}
    for name, m in (("edit_success", is_t), ("locality", ~is_t)):
        out[name] = float(correct[m].mean()) if m.any() else float("nan")
        out[f"{name}_class_avg"] = _class_average(correct[m], labels[m])
    out["n_target"] = int(is_t.sum())
    out["n_other"] = int((~is_t).sum())
    return out


def edit_metric_rows(
    method: str,
    split: str,
    preds: np.ndarray,
    labels: np.ndarray,
    target_classes: Iterable[int],
) -> list[dict[str, Any]]:
    """:func:`edit_metrics` as rows of the tidy metrics table (``metrics.TIDY_COLUMNS``)."""
    m = edit_metrics(preds, labels, target_classes)
    rows = []
    for name in ("edit_success", "edit_success_class_avg", "locality", "locality_class_avg"):
        n = m["n_target"] if name.startswith("edit") else m["n_other"]
        rows.append(
            {
                "method": method,
                "split": split,
                "metric": name,
                "value": m[name],
                "ci_low": float("nan"),
                "ci_high": float("nan"),
                "group_name": "",
                "n": n,
            }
        )
    return rows
