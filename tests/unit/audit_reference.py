"""Frozen copy of the fairness-audit stage as it was before it streamed (commit 81a8ae8):
the whole locate + test heads of the terminal layers in memory (``_load_cell``), TextSpan on
the rows, mean ablation from the D-dimensional heads. ``tests/unit/test_audit_stream.py``
checks that the streamed stage (:func:`clipbias.stages.audit.audit`) writes the same files.

Only the pieces the streaming change replaced are copied (``_load_cell``, ``_rows``, the stage
loop, ``audit_attribute``, ``LogitDeltas``, ``mean_heads``, ``stereotype_logit_scores``,
``bias_textspan``); everything they call that did not change is imported. Do not edit: this
is the reference, not code under test.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.methods import HeadId, head_position, head_str, parse_head
from clipbias.methods.audit import (
    ATTRIBUTION_COLUMNS,
    CAV,
    GREEDY_COLUMNS,
    STEREO_COLUMNS,
    bias_head_stats,
    cav_head_scores,
    delta_v_table,
    greedy_select,
    head_attribution,
    head_projections,
    outcome_summary,
    per_class_accuracy,
    prediction_transitions,
    random_control,
    select_top_k,
    stereotyped_class_map,
    stereotyped_classes,
)
from clipbias.methods.audit import augmented_pool as _augmented_pool
from clipbias.methods.audit import rank_heads as _rank_heads
from clipbias.methods.audit import with_attribute as _with_attribute
from clipbias.methods.audit.params import resolve_params
from clipbias.methods.ltc import head_means
from clipbias.methods.textspan import DEFAULT_RANK, textspan_heads
from clipbias.stages.audit import TABLE_KEYS, VARIANTS, locator_json
from clipbias.stages.common import limit_blas_threads

# Frozen with the reference when issue 25 split clipbias.methods.audit into a package: its
# defaults (now clipbias.methods.audit.params.DEFAULTS, nested), the options the stage passed
# on, and the ranking of that time (METHODS §6.6 item 2, now ranking="combined").
DEFAULTS = {
    "k": 4, "terminal_layers": 4, "cav_score": "abs_d_within", "flagged_first": True,
    "min_per_group": 10, "greedy_min_drop": 0.002, "greedy_max_acc_drop": 0.005,
    "locate_fraction": 0.5, "max_enumerate": 10_000, "n_draws": 1_000, "n_boot": 2_000,
    "top_classes": 5, "disparity": "acc_gap", "stereotype_min_lift": 1.0, "textspan_m": 60,
    "textspan_top_k": 10, "textspan_first_rank_max": 5, "textspan_share_quantile": 0.95,
    "seed": 42,
}  # fmt: skip
_PASSED = (
    "k", "terminal_layers", "cav_score", "flagged_first", "min_per_group", "greedy",
    "greedy_min_drop", "greedy_max_acc_drop", "greedy_max_k", "transductive", "max_enumerate",
    "n_draws", "n_boot", "top_classes", "disparity", "stereotype_split", "stereotype_score",
    "stereotype_min_lift", "bias_correction",
)  # fmt: skip
rank_heads = functools.partial(_rank_heads, ranking="combined")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- clipbias.methods.audit


def stereotype_logit_scores(
    heads: np.ndarray,
    layers: Sequence[int],
    classifier: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    preds: np.ndarray,
    min_lift: float = DEFAULTS["stereotype_min_lift"],
) -> pd.DataFrame:
    """Per-head stereotype-logit score (METHODS §6.4, optional; RECON).

    Over misclassified images with a valid attribute value whose prediction is a class
    stereotyped for the image's own value (:func:`stereotyped_class_map`), the mean direct
    logit of each head toward that predicted class against the true class,
    ⟨ĉ_{l,h}(x), t̂_pred − t̂_y⟩. Positive = the head pushes toward the stereotyped error.
    Columns :data:`STEREO_COLUMNS`; ``stereo_logit`` NaN when no image qualifies.
    """
    heads = np.asarray(heads)
    T = np.asarray(classifier, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    n, n_layers, n_heads, _ = heads.shape
    stereo = stereotyped_class_map(y, a, T.shape[1], min_lift)
    sel = (p != y) & (a >= 0) & (p >= 0)
    sel[sel] = stereo[p[sel], a[sel]]
    idx = np.flatnonzero(sel)
    if idx.size:
        diff = (T[:, p[idx]] - T[:, y[idx]]).T  # [n_sel, D]
        score = np.einsum("nlhd,nd->lh", heads[idx], diff.astype(heads.dtype), dtype=np.float64)
        score /= idx.size
    else:
        log.warning("stereotype-logit score: no misclassified image lands on a stereotyped class")
        score = np.full((n_layers, n_heads), np.nan)
    layers = [int(x) for x in layers]
    rows = [
        (layers[li], h, head_str((layers[li], h)), float(score[li, h]), int(idx.size))
        for li in range(n_layers)
        for h in range(n_heads)
    ]
    return pd.DataFrame(rows, columns=STEREO_COLUMNS)


def bias_textspan(
    heads: np.ndarray,
    layers: Sequence[int],
    pool_texts: Sequence[str],
    pool_emb: np.ndarray,
    bias_texts: Iterable[str],
    m: int = DEFAULTS["textspan_m"],
    rank: int | None = DEFAULT_RANK,
    energy: float = 0.999,
    select: Iterable[tuple[int, int]] | None = None,
    top_k: int = DEFAULTS["textspan_top_k"],
    first_rank_max: int = DEFAULTS["textspan_first_rank_max"],
    share_quantile: float = DEFAULTS["textspan_share_quantile"],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bias-augmented TextSpan (METHODS §3.7, §6.5): TextSpan (§3.3) per head on the augmented
    pool, then :func:`bias_head_stats`.

    ``pool_texts`` / ``pool_emb`` [M, D] are R⁺ (build the list with
    :func:`clipbias.methods.textspan.augment_pool`); every bias text must be in it. ``select``
    restricts the heads (default all stored heads; METHODS default: the last 4 layers, on the
    locate half). Returns ``(textspan table, bias statistics)``.
    """
    bias = [t.strip() for t in bias_texts]
    pool = [t.strip() for t in pool_texts]
    missing = [t for t in bias if t not in set(pool)]
    if missing:
        raise ValueError(
            f"{len(missing)} bias text(s) are not in the pool, e.g. {missing[:3]}; build the "
            "pool with clipbias.methods.textspan.augment_pool(general, bias)"
        )
    table = textspan_heads(
        heads, layers, pool_emb, pool, m=m, rank=rank, energy=energy, select=select
    )
    return table, bias_head_stats(table, bias, top_k, first_rank_max, share_quantile)


_BLOCK = 1024  # images per block when reducing over a subset of rows


def _row_index(rows: np.ndarray | None, n: int) -> np.ndarray:
    """Row indices from ``None`` (all), a bool mask [n] or integer indices."""
    if rows is None:
        return np.arange(n)
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ValueError(f"row mask of shape {r.shape} for {n} images")
        return np.flatnonzero(r)
    r = r.astype(np.int64)
    if r.size and (r.min() < 0 or r.max() >= n):
        raise ValueError(f"row indices outside 0..{n - 1}")
    return r


def mean_heads(heads: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean of every head over the images ``rows`` (mask or indices; default all): the
    ablation means [L, H, D] float32 (float64 accumulation, blockwise, no full copy);
    equals :func:`clipbias.methods.ltc.head_means` of ``heads[rows]``."""
    heads = np.asarray(heads)
    sel = _row_index(rows, heads.shape[0])
    if not len(sel):
        raise ValueError("no images to average the heads over")
    if rows is None:
        return head_means(heads)
    acc = np.zeros(heads.shape[1:], dtype=np.float64)
    for start in range(0, len(sel), _BLOCK):
        acc += heads[sel[start : start + _BLOCK]].sum(axis=0, dtype=np.float64)
    return (acc / len(sel)).astype(np.float32)


class LogitDeltas:
    """Mean ablation of any subset of a head pool by adding precomputed logit changes.

    Mean-ablating head h replaces ĉ_h(x) by the reference mean m_h, which changes the logits
    by Δ_h(x) = (m_h − ĉ_h(x))·T (METHODS §1.3, §6.7: direct path, frozen LN statistics).
    The changes of a set add up, so ``logits(S) = base + Σ_{h∈S} Δ_h``. ``base`` [N, C]
    float64, ``deltas`` [K, N, C] (``dtype``, default float32). ``rows`` (bool mask or
    indices) restricts the images without copying the whole ``heads`` array.
    """

    def __init__(
        self,
        heads: np.ndarray,
        rest: np.ndarray,
        classifier: np.ndarray,
        layers: Sequence[int],
        pool: Iterable[str | HeadId],
        means: np.ndarray,
        dtype: Any = np.float32,
        rows: np.ndarray | None = None,
    ) -> None:
        heads = np.asarray(heads)
        rest = np.asarray(rest)
        T = np.asarray(classifier, dtype=np.float64)
        means = np.asarray(means)
        if heads.ndim != 4 or means.shape != heads.shape[1:]:
            raise ValueError(
                f"heads {heads.shape} must be [N, L, H, D] and means {means.shape} [L, H, D] "
                "(see clipbias.methods.ltc.head_means)"
            )
        if rest.shape != (heads.shape[0], heads.shape[-1]):
            raise ValueError(f"rest {rest.shape} must be [N, D] for heads {heads.shape}")
        sel = slice(None) if rows is None else _row_index(rows, heads.shape[0])
        n = heads.shape[0] if rows is None else len(sel)
        self.base = np.empty((n, T.shape[1]))
        for start in range(0, n, _BLOCK):
            idx = slice(start, start + _BLOCK) if rows is None else sel[start : start + _BLOCK]
            emb = heads[idx].sum(axis=(1, 2), dtype=np.float64) + rest[idx]
            self.base[start : start + _BLOCK] = emb @ T
        self.layers = [int(x) for x in layers]
        self.pool: list[HeadId] = []
        for h in pool:
            hid = parse_head(h)
            if hid not in self.pool:
                self.pool.append(hid)
        self._index = {h: i for i, h in enumerate(self.pool)}
        self.deltas = np.empty((len(self.pool), *self.base.shape), dtype=dtype)
        for i, hid in enumerate(self.pool):
            li, hh = head_position(hid, self.layers)
            diff = means[li, hh].astype(np.float64)[None, :] - heads[sel, li, hh, :]
            self.deltas[i] = diff @ T

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    def index(self, head_set: Iterable[str | HeadId]) -> list[int]:
        idx = []
        for h in head_set:
            hid = parse_head(h)
            if hid not in self._index:
                raise ValueError(f"head {head_str(hid)} is not in the ablation pool")
            idx.append(self._index[hid])
        return idx

    def logits(self, head_set: Iterable[str | HeadId] = ()) -> np.ndarray:
        idx = self.index(head_set)
        if not idx:
            return self.base.copy()
        return self.base + self.deltas[idx].sum(axis=0, dtype=np.float64)

    def predict(self, head_set: Iterable[str | HeadId] = ()) -> np.ndarray:
        """Arg-max predictions [N] int64 after mean-ablating ``head_set``."""
        return np.argmax(self.logits(head_set), axis=1).astype(np.int64)


def audit_attribute(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    layers: Sequence[int],
    labels: np.ndarray,
    attr: np.ndarray,
    cavs: Sequence[CAV],
    value_names: Sequence[str],
    *,
    attribute: str = "attribute",
    is_locate: np.ndarray | None = None,
    proj: Mapping[str, np.ndarray] | None = None,
    proj_layers: Sequence[int] | None = None,
    bias_stats: pd.DataFrame | None = None,
    rank_cav: str | None = None,
    n_layers: int | None = None,
    class_names: Sequence[str] | None = None,
    k: int = DEFAULTS["k"],
    terminal_layers: int = DEFAULTS["terminal_layers"],
    cav_score: str = DEFAULTS["cav_score"],
    flagged_first: bool = DEFAULTS["flagged_first"],
    min_per_group: int = DEFAULTS["min_per_group"],
    greedy: bool = True,
    greedy_min_drop: float = DEFAULTS["greedy_min_drop"],
    greedy_max_acc_drop: float = DEFAULTS["greedy_max_acc_drop"],
    greedy_max_k: int | None = None,
    transductive: bool = True,
    max_enumerate: int = DEFAULTS["max_enumerate"],
    n_draws: int = DEFAULTS["n_draws"],
    n_boot: int = DEFAULTS["n_boot"],
    top_classes: int = DEFAULTS["top_classes"],
    disparity: str = DEFAULTS["disparity"],
    stereotype_split: str = "locate",
    stereotype_score: bool = True,
    stereotype_min_lift: float = DEFAULTS["stereotype_min_lift"],
    seed: int = DEFAULTS["seed"],
    bias_correction: bool = False,
) -> dict[str, Any]:
    """The mechanistic fairness audit of one protected attribute (METHODS §6.4-6.10).

    Inputs: the stored decomposition (``heads`` [N, L, H, D] of ``layers``, ``rest``,
    ``classifier`` [D, C]), true ``labels``, attribute codes ``attr`` (-1 = excluded), the
    attribute's CAVs (:func:`zero_shot_cavs`) and ``value_names`` (names of the codes
    0, 1, ..., matching the CAVs' value names). ``is_locate`` marks the locate half
    (:func:`locate_evaluate_split`, or the dataset's own split); ``None`` = single pool (locate
    and evaluate on the same images, as the paper appears to do). ``proj`` optionally gives
    precomputed head projections {cav name: [N, L', H]} over ``proj_layers`` (e.g. all 24
    layers while ``heads`` holds only the last ones; DESIGN: ``rest`` then carries the other
    heads); otherwise they are computed from ``heads``. ``bias_stats`` is the bias-augmented
    TextSpan table (:func:`bias_head_stats`) or ``None``.

    Steps: CAV scores on the locate half (every CAV); ranking by ``rank_cav`` (default the
    first CAV, the axis); top-``k`` and greedy selection (locate half, locate means);
    ablation on the evaluate half with locate means (and, with ``transductive``, means over
    the evaluate half, conditions ``*_transductive``); ΔV bootstrap; layer-matched random
    control of each selected set; most stereotyped classes from un-ablated predictions on
    the ``stereotype_split`` half; single-head / leave-one-out attribution and prediction
    transitions on the evaluate half.

    Returns a dict: ``"selection"`` (JSON: heads, parameters, split sizes), ``"cavs"`` (JSON),
    ``"random_control"`` (JSON: {set name: summary of :func:`random_control`}), and
    DataFrames, each with a leading ``attribute`` column: ``"head_scores"``
    (:data:`SCORE_COLUMNS`), ``"stereotype_logit"`` (:data:`STEREO_COLUMNS` or None),
    ``"ranking"`` (:data:`RANK_COLUMNS`), ``"greedy_trace"`` (:data:`GREEDY_COLUMNS`),
    ``"outcome"`` (:data:`OUTCOME_COLUMNS`), ``"per_class"`` (:data:`PER_CLASS_COLUMNS`),
    ``"delta_v"`` (:data:`DELTA_COLUMNS`), ``"random_draws"`` (``set`` +
    :data:`CONTROL_COLUMNS`), ``"attribution"`` (``set`` + :data:`ATTRIBUTION_COLUMNS`),
    ``"stereotyped_classes"`` (:data:`STEREOTYPED_COLUMNS`), ``"transitions"``
    (``condition`` + :data:`TRANSITION_COLUMNS` + ``stereotyped``; total rows ``class_index``
    −1 "all" and −2 "stereotyped").
    """
    heads = np.asarray(heads)
    rest = np.asarray(rest)
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got {heads.shape}")
    n, _, n_heads, _ = heads.shape
    layers = [int(x) for x in layers]
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != (n,) or a.shape != (n,) or rest.shape[0] != n:
        raise ValueError("labels, attr and rest need one entry per image of heads")
    n_classes = int(np.asarray(classifier).shape[1])
    if is_locate is None:
        loc = np.ones(n, dtype=bool)
        ev = loc
    else:
        loc = np.asarray(is_locate, dtype=bool)
        ev = ~loc
    if loc.shape != (n,) or not loc.any() or not ev.any():
        raise ValueError("is_locate must mark a non-empty locate half and evaluate half")
    single_pool = is_locate is None
    if not cavs:
        raise ValueError("no CAVs given (see zero_shot_cavs)")
    codes = {str(v): i for i, v in enumerate(value_names)}

    def code_list(names: Sequence[str], cav: CAV) -> list[int]:
        missing = [v for v in names if v not in codes]
        if missing:
            raise ValueError(
                f"CAV {cav.name}: value(s) {missing} are not among value_names {list(codes)}"
            )
        return [codes[v] for v in names]

    y_loc, a_loc, y_ev, a_ev = y[loc], a[loc], y[ev], a[ev]

    # §6.4 CAV scores on the locate half
    frames = []
    for cav in cavs:
        if proj is not None:
            if cav.name not in proj or proj_layers is None:
                raise ValueError(
                    f"proj has no projections for CAV {cav.name!r} (or no proj_layers)"
                )
            p_cav, p_layers = np.asarray(proj[cav.name])[loc], proj_layers
        else:
            p_cav, p_layers = head_projections(heads, cav.vector)[loc], layers
        frames.append(
            cav_head_scores(
                p_cav,
                p_layers,
                a_loc,
                y_loc,
                code_list(cav.positive, cav),
                code_list(cav.negative, cav),
                min_per_group,
                cav.name,
            )
        )
    scores = pd.concat(frames, ignore_index=True)
    rank_cav = cavs[0].name if rank_cav is None else rank_cav

    # §6.6 ranking and selection
    ranking = rank_heads(
        scores[scores["cav"] == rank_cav],
        bias_stats,
        layers,
        terminal_layers,
        n_layers,
        None,
        cav_score,
        flagged_first,
    )
    candidates = ranking.loc[ranking["candidate"], "head_id"].tolist()
    means_loc = mean_heads(heads, loc)
    top = select_top_k(ranking, k)
    eng_loc = LogitDeltas(heads, rest, classifier, layers, candidates, means_loc, rows=loc)
    greedy_heads: list[str] = []
    trace = pd.DataFrame(columns=GREEDY_COLUMNS)
    if greedy:
        greedy_heads, trace = greedy_select(
            ranking,
            eng_loc,
            y_loc,
            a_loc,
            greedy_min_drop,
            greedy_max_acc_drop,
            greedy_max_k,
            bias_correction,
        )
    sets = {"top_k": top}
    if greedy_heads:
        sets["greedy"] = greedy_heads

    # §6.7 ablation on the evaluate half, locate means (and transductive means)
    eng_ev = (
        eng_loc
        if single_pool
        else LogitDeltas(heads, rest, classifier, layers, candidates, means_loc, rows=ev)
    )
    preds = {"baseline": eng_ev.predict()}
    preds.update({name: eng_ev.predict(s) for name, s in sets.items()})
    if transductive and not single_pool:
        union = list(dict.fromkeys(h for s in sets.values() for h in s))
        means_ev = mean_heads(heads, ev)
        eng_tr = LogitDeltas(heads, rest, classifier, layers, union, means_ev, rows=ev)
        preds.update({f"{name}_transductive": eng_tr.predict(s) for name, s in sets.items()})
    attrs = {attribute: a_ev}
    outcome = outcome_summary(preds, y_ev, attrs, n_classes)
    per_class = per_class_accuracy(
        preds, y_ev, attrs, class_names, {attribute: [str(v) for v in value_names]}
    )
    after = {c: p for c, p in preds.items() if c != "baseline"}
    delta = delta_v_table(
        preds["baseline"], after, y_ev, attrs, n_boot, seed, 0.95, bias_correction
    )

    # §6.9 layer-matched random control of each selected set
    control: dict[str, Any] = {}
    draw_frames = []
    for name, s in sets.items():
        if name == "greedy" and set(s) == set(top):
            continue
        draws, summary = random_control(
            eng_ev, y_ev, a_ev, s, n_heads, max_enumerate, n_draws, seed, bias_correction
        )
        control[name] = summary
        draws.insert(0, "set", name)
        draw_frames.append(draws)
    random_draws = pd.concat(draw_frames, ignore_index=True)

    # §6.10 most stereotyped classes, attribution, transitions
    if stereotype_split == "locate":
        p_st, y_st, a_st = eng_loc.predict(), y_loc, a_loc
    elif stereotype_split == "evaluate":
        p_st, y_st, a_st = preds["baseline"], y_ev, a_ev
    else:
        raise ValueError(
            f"stereotype_split must be 'locate' or 'evaluate', got {stereotype_split!r}"
        )
    stereo = stereotyped_classes(
        p_st, y_st, a_st, n_classes, top_classes, disparity, min_per_group, class_names
    )
    top_cls = stereo.loc[stereo["selected"], "class_index"].astype(int).tolist()
    attribution = pd.concat(
        [
            head_attribution(eng_ev, y_ev, a_ev, s, top_cls or None, bias_correction).assign(
                set=name
            )
            for name, s in sets.items()
        ],
        ignore_index=True,
    )
    attribution = attribution[["set", *ATTRIBUTION_COLUMNS]]
    trans_frames = []
    for cond, p in after.items():
        t_all = prediction_transitions(preds["baseline"], p, y_ev, None, class_names)
        t_all["stereotyped"] = t_all["class_index"].isin(top_cls)
        parts = [t_all]
        if top_cls:
            t_st = prediction_transitions(preds["baseline"], p, y_ev, top_cls, class_names)
            tot = t_st[t_st["class_index"] == -1].copy()
            tot["class_index"], tot["class_name"], tot["stereotyped"] = -2, "stereotyped", True
            parts.append(tot)
        t = pd.concat(parts, ignore_index=True)
        t.insert(0, "condition", cond)
        trans_frames.append(t)
    transitions = pd.concat(trans_frames, ignore_index=True)

    stereo_logit = None
    if stereotype_score:
        # full-length arrays with the evaluate half masked out (attr -1): no copy of heads
        a_only_loc = np.where(loc, a, -1)
        p_loc_full = np.full(n, -1, dtype=np.int64)
        p_loc_full[loc] = eng_loc.predict()
        stereo_logit = stereotype_logit_scores(
            heads, layers, classifier, y, a_only_loc, p_loc_full, stereotype_min_lift
        )

    flagged = (
        bias_stats.loc[bias_stats["flagged"].astype(bool), "head_id"].tolist()
        if bias_stats is not None
        else []
    )
    selection = {
        "attribute": attribute,
        "rank_cav": rank_cav,
        "cav_score": cav_score,
        "k": int(k),
        "top_k": list(top),
        "greedy": list(greedy_heads),
        "greedy_k": len(greedy_heads),
        "terminal_layers": int(terminal_layers),
        "n_candidates": len(candidates),
        "textspan_flagged": flagged,
        "stereotyped_classes": top_cls,
        "split": {
            "single_pool": bool(single_pool),
            "n_locate": int(loc.sum()),
            "n_evaluate": int(ev.sum()),
        },
        "params": {
            "min_per_group": int(min_per_group),
            "flagged_first": bool(flagged_first),
            "greedy_min_drop": float(greedy_min_drop),
            "greedy_max_acc_drop": float(greedy_max_acc_drop),
            "means": "locate",
            "transductive": bool(transductive and not single_pool),
            "max_enumerate": int(max_enumerate),
            "n_draws": int(n_draws),
            "n_boot": int(n_boot),
            "top_classes": int(top_classes),
            "disparity": disparity,
            "stereotype_split": stereotype_split,
            "stereotype_min_lift": float(stereotype_min_lift),
            "seed": int(seed),
            "bias_correction": bool(bias_correction),
        },
    }
    log.info(
        "audit %s: top-%d %s, greedy %s; ΔV(top_k) = %s (p = %s)",
        attribute,
        k,
        top,
        greedy_heads,
        control["top_k"]["delta_v"],
        control["top_k"]["p_value"],
    )
    return {
        "selection": selection,
        "cavs": [c.to_dict() for c in cavs],
        "random_control": control,
        "head_scores": _with_attribute(scores, attribute),
        "stereotype_logit": None
        if stereo_logit is None
        else _with_attribute(stereo_logit, attribute),
        "ranking": _with_attribute(ranking, attribute),
        "greedy_trace": _with_attribute(trace, attribute),
        "outcome": _with_attribute(outcome, attribute),
        "per_class": _with_attribute(per_class, attribute),
        "delta_v": _with_attribute(delta, attribute),
        "random_draws": _with_attribute(random_draws, attribute),
        "attribution": _with_attribute(attribution, attribute),
        "stereotyped_classes": _with_attribute(stereo, attribute),
        "transitions": _with_attribute(transitions, attribute),
    }


# ---------------------------------------------------------------- clipbias.stages.audit


def _load_cell(fs, splits: Sequence[str], terminal: Sequence[int], cav_matrix: np.ndarray):
    """One pass over ``splits`` (in order): index, heads of the ``terminal`` layers
    [N, L_t, H, D], rest (everything else) [N, D] and the projections of every stored head
    on each CAV column [N, L, H, K] (float32; METHODS §6.4 s_{l,h}(x) = <ĉ_{l,h}(x), v>).
    Arrays are preallocated: the whole-model heads are never held at once."""
    import pandas as pd

    counts = [len(fs.index(split=s)) for s in splits]
    for s, c in zip(splits, counts, strict=True):
        if c == 0:
            raise ValueError(f"split {s!r} has no rows in {fs.folder}")
    n, layers = sum(counts), fs.layers
    t_pos = [layers.index(int(x)) for x in terminal]
    others = [i for i in range(len(layers)) if i not in t_pos]
    heads = np.empty((n, len(t_pos), fs.n_heads, fs.dim), dtype=np.float32)
    rest = np.empty((n, fs.dim), dtype=np.float32)
    proj = np.empty((n, len(layers), fs.n_heads, cav_matrix.shape[1]), dtype=np.float32)
    v = cav_matrix.astype(np.float32)
    frames, i = [], 0
    for s in splits:
        for idx, h, r in fs.iter_batches(None, s, batch_rows=256):
            m = len(idx)
            heads[i : i + m] = h[:, t_pos]
            rest[i : i + m] = r + h[:, others].sum(axis=(1, 2), dtype=np.float64)
            proj[i : i + m] = np.einsum("nlhd,dk->nlhk", h, v)
            frames.append(idx)
            i += m
    if i != n:
        raise ValueError(f"read {i} rows of {splits} from {fs.folder}, expected {n}")
    return pd.concat(frames, ignore_index=True), heads, rest, proj, counts


def _rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x[mask]`` as a view when the mask is one contiguous block (no copy of big arrays)."""
    if mask is None:
        return x
    sel = np.flatnonzero(mask)
    if len(sel) and sel[-1] - sel[0] + 1 == len(sel):
        return x[sel[0] : sel[-1] + 1]
    return x[mask]


def reference_audit(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    texts: str | os.PathLike,
    audit_texts: str | os.PathLike,
    out_dir: str | os.PathLike,
    out_heads: str | os.PathLike,
    locate_split: str,
    test_split: str,
    seed: int = 42,
    params: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """The fairness audit of one grid cell (module docstring); returns the locator dict.

    ``texts`` is the cell's ``texts.parquet`` (its ``pool`` role is the general TextSpan pool
    R_general), ``audit_texts`` its ``audit_texts.parquet``. ``params``: the config's
    ``audit:`` block (:func:`resolve_params`). ``seed`` seeds the stratified split (when
    ``locate_split == test_split``), the bootstraps and the random control. Outputs depend
    only on the inputs (wall times go to the log and the rule's benchmark file).
    """
    from clipbias.features import FeatureSet, read_classifier
    from clipbias.io import atomic_path, read_json, write_json
    from clipbias.methods import audit as au
    from clipbias.methods.texts import read_audit_texts, read_method_texts
    from clipbias.stages.locate import textspan_rank

    limit_blas_threads(threads)
    p = resolve_params(params)
    ts = p["textspan"]
    meta = read_json(dataset_meta)
    if meta.get("candidate_columns"):
        raise ValueError(
            f"{dataset_meta}: the dataset classifies each image among its own candidate "
            f"classes ({meta['candidate_columns']}); the fairness audit needs one classifier "
            "over all classes. Remove the audit methods for this dataset."
        )
    names, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    table, emb, attr_meta = read_audit_texts(audit_texts)
    ds_attrs = meta.get("attributes") or {}
    chosen = [a for a in attr_meta if a in ds_attrs]
    skipped = [a for a in attr_meta if a not in ds_attrs]
    if skipped:
        log.warning(
            "protected attribute(s) %s of the audit texts are not attributes of %s (%s): skipped",
            skipped,
            dataset_meta,
            list(ds_attrs),
        )
    if not chosen:
        raise ValueError(
            f"none of the protected attributes {list(attr_meta)} of the audit texts is an "
            f"attribute of {dataset_meta} ({list(ds_attrs)}); name them as in dataset.json "
            "in the text file's protected_attributes block"
        )

    fs = FeatureSet.open(feature_dir)
    n_layers, n_heads = int(fs.meta["n_layers"]), fs.n_heads
    terminal = au.terminal_layer_numbers(fs.layers, p["terminal_layers"], n_layers)
    cavs: dict[str, list] = {}
    for a in chosen:
        sub = table[table["attribute"] == a]
        value_emb = {}
        for v in attr_meta[a]["values"]:
            rows = ((sub["role"] == "concept") & (sub["value"] == v)).to_numpy()
            value_emb[v] = emb[sub.index.to_numpy()[rows]]
        cavs[a] = au.zero_shot_cavs(value_emb, axis=attr_meta[a]["axis"])
    columns = [(a, c.name) for a in chosen for c in cavs[a]]
    cav_matrix = np.stack([c.vector for a in chosen for c in cavs[a]], axis=1)
    splits = [locate_split] if locate_split == test_split else [locate_split, test_split]
    t0 = time.perf_counter()
    idx, heads, rest, proj, counts = _load_cell(fs, splits, terminal, cav_matrix)
    log.info(
        "loaded %s rows of %s (%d terminal layers %s) in %.1f s",
        counts,
        splits,
        len(terminal),
        terminal,
        time.perf_counter() - t0,
    )
    labels = idx["label"].to_numpy(dtype=np.int64)
    pool_texts, pool_emb = read_method_texts(texts)["pool"]
    rank = textspan_rank(fs.meta, ts["rank"])

    selections: dict[str, dict[str, Any]] = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        for a in chosen:
            col = f"attr_{a}"
            if col not in idx.columns:
                raise ValueError(f"the features have no column {col} (dataset attribute {a!r})")
            vals = list(attr_meta[a]["values"])
            codes = au.value_codes(vals, ds_attrs[a])
            attr = au.recode_attr(idx[col].to_numpy(), [codes[v] for v in vals])
            if len(splits) == 2:
                is_locate = np.arange(len(idx)) < counts[0]
            else:
                is_locate = au.locate_evaluate_split(labels, attr, p["locate_fraction"], seed)
            variants: dict[str, np.ndarray | None] = {"split": is_locate}
            if p["single_pool"]:
                variants["single_pool"] = None
            proj_a = {c: proj[..., j] for j, (aa, c) in enumerate(columns) if aa == a}
            bias = table[(table["attribute"] == a) & (table["role"] == "bias")]
            bias_texts = bias["text"].tolist()
            aug_texts, aug_emb = _augmented_pool(
                pool_texts, pool_emb, bias_texts, emb[bias.index.to_numpy()]
            )
            selections[a] = {}
            for variant, mask in variants.items():
                t1 = time.perf_counter()
                ts_table, bias_stats = None, None
                if ts["enabled"]:
                    ts_table, bias_stats = bias_textspan(
                        _rows(heads, mask),
                        terminal,
                        aug_texts,
                        aug_emb,
                        bias_texts,
                        m=min(int(ts["m"]), len(aug_texts)),
                        rank=rank,
                        top_k=ts["top_k"],
                        first_rank_max=ts["first_rank_max"],
                        share_quantile=ts["share_quantile"],
                    )
                res = audit_attribute(
                    heads,
                    rest,
                    classifier,
                    terminal,
                    labels,
                    attr,
                    cavs[a],
                    vals,
                    attribute=a,
                    is_locate=mask,
                    proj=proj_a,
                    proj_layers=fs.layers,
                    bias_stats=bias_stats,
                    n_layers=n_layers,
                    class_names=names,
                    seed=int(seed),
                    **{k: p[k] for k in _PASSED},
                )
                seconds = time.perf_counter() - t1
                folder = tmp / a / variant
                folder.mkdir(parents=True)
                for key in TABLE_KEYS:
                    if res.get(key) is not None:
                        res[key].insert(1, "variant", variant)
                        res[key].to_csv(folder / f"{key}.csv", index=False)
                if ts_table is not None:
                    for name, df in (("textspan", ts_table), ("textspan_bias", bias_stats)):
                        df = df.copy()
                        df.insert(0, "attribute", a)
                        df.insert(1, "variant", variant)
                        df.to_csv(folder / f"{name}.csv", index=False)
                sel = {**res["selection"], "values": vals}
                selections[a][variant] = sel
                write_json(
                    folder / "audit.json",
                    {
                        "attribute": a,
                        "variant": variant,
                        "values": vals,
                        "dataset_values": list(ds_attrs[a]),
                        "axis": list(attr_meta[a]["axis"]),
                        "description": attr_meta[a].get("description", ""),
                        "locate_split": locate_split,
                        "test_split": test_split,
                        "selection": res["selection"],
                        "random_control": res["random_control"],
                        "cavs": res["cavs"],
                        "textspan": {
                            **ts,
                            "rank": int(rank),
                            "pool_size": len(aug_texts),
                            "n_bias_texts": len(bias_texts),
                            "layers": [int(x) for x in terminal],
                        },
                    },
                )
                log.info("audit %s / %s: %.1f s", a, variant, seconds)
        locator = locator_json(
            selections, terminal, n_layers, n_heads, locate_split, test_split, skipped
        )
        log.info("audit of %s: %.1f s", chosen, time.perf_counter() - t0)
        write_json(
            tmp / "summary.json",
            {
                **locator,
                "variants": [v for v in VARIANTS if v == "split" or p["single_pool"]],
                "split_sizes": dict(zip(splits, counts, strict=True)),
                "stored_layers": fs.layers,
                "seed": int(seed),
                "params": p,
            },
        )
    write_json(out_heads, locator)
    return locator
