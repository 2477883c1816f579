"""Mechanistic fairness audit on stored head decompositions (METHODS §6; arXiv 2603.11793).

The audit paper names its ingredients (projected decomposition, zero-shot CAVs, bias-augmented
TextSpan, mean ablation, Cramér's V, a layer-matched random control, single-head and
class-level analysis) but not their details; everything marked RECON in METHODS §6 is a
parameter here whose default is the METHODS value (:data:`DEFAULTS`).

Pieces, in pipeline order:

* texts: :func:`audit_texts` validates the ``protected_attributes`` text spec
  (``config/texts/facet.yaml``), :func:`text_table` flattens it for the text encoder;
* §6.4 zero-shot CAVs: :func:`zero_shot_cavs` (φ_v per value, the axis CAV, one-vs-rest);
* §6.4 per-head scores: :func:`head_projections`, :func:`cav_head_scores` (standardised mean
  difference, AUC, within-class versions), :func:`stereotype_logit_scores` (batch sums
  :func:`stereotype_logit_sums`);
* §3.7 / §6.5 bias-augmented TextSpan: :func:`bias_textspan` (rows),
  :func:`bias_textspan_from_moments` (streamed moments), :func:`bias_head_stats`;
* §6.6 ranking and selection: :func:`rank_heads`, :func:`select_top_k`, :func:`greedy_select`;
* §6.1 split: :func:`locate_evaluate_split`;
* §6.7 ablation and outcome: :class:`HeadLogits` (per-head class logits, all that mean
  ablation needs), :class:`LogitDeltas` (mean ablation as precomputed per-head logit
  changes), :func:`outcome_summary`, :func:`per_class_accuracy`, :func:`delta_v_table`;
* §6.9 layer-matched random control: :func:`layer_matched_sets`, :func:`random_control`;
* §6.10 single-head and class-level analysis: :func:`head_attribution`,
  :func:`stereotyped_classes`, :func:`prediction_transitions`;
* :func:`audit_attribute_stats` runs all of the above for one protected attribute from the
  statistics :class:`AuditAccumulator` gathers in one streamed pass (the stage);
  :func:`audit_attribute` computes them from in-memory heads first.

Array conventions as in :mod:`clipbias.methods`: ``heads [N, L, H, D]`` of the stored layers
``layers``, ``rest [N, D]``, ``classifier [D, C]``; attribute codes are int indices into the
dataset's value list, ``-1`` = unknown / excluded (left out of every attribute statistic).
Mean ablation is a direct-path intervention on the stored contributions (METHODS §1.3).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from . import HeadId, head_position, head_str, parse_head
from .ltc import head_means
from .textspan import (
    DEFAULT_M,
    DEFAULT_RANK,
    bias_textspan_stats,
    textspan_heads,
    textspan_heads_from_moments,
)

log = logging.getLogger(__name__)

#: METHODS defaults of every reconstructed (RECON / REC) choice of the audit.
DEFAULTS: dict[str, Any] = {
    "k": 4,  # §6.6 top-k heads (paper: four heads for gender)
    "terminal_layers": 4,  # §6.6 selection among the last 4 layers
    "cav_score": "abs_d_within",  # §6.6 CAV ranking statistic
    "flagged_first": True,  # §6.6 TextSpan-flagged heads first
    "min_per_group": 10,  # §6.4 within-class scores: >= 10 of each value per class
    "greedy_min_drop": 0.002,  # §6.6 greedy k: V must drop by >= 0.002 per added head
    "greedy_max_acc_drop": 0.005,  # §6.6 greedy k: accuracy may fall by <= 0.5 pp
    "locate_fraction": 0.5,  # §6.1 stratified 50/50 locate / evaluate split
    "max_enumerate": 10_000,  # §6.9 enumerate all layer-matched sets up to this count
    "n_draws": 1_000,  # §6.9 otherwise this many seeded draws
    "n_boot": 2_000,  # §7.2 bootstrap resamples
    "top_classes": 5,  # §6.10 most stereotyped classes
    "disparity": "acc_gap",  # §6.10 class disparity: |acc_a - acc_b| (or "class_v")
    "stereotype_min_lift": 1.0,  # §6.4 stereotyped class: value over-represented (lift > 1)
    "textspan_m": DEFAULT_M,  # §3.7 m = 60
    "textspan_top_k": 10,  # §3.7 bias texts among the top 10
    "textspan_first_rank_max": 5,  # §3.7 flag: first bias text within the top 5
    "textspan_share_quantile": 0.95,  # §3.7 flag: bias share above the 95th percentile
    "seed": 42,
}


def _f(x: Any) -> float | None:
    """Plain float for the JSON parts; NaN (undefined) becomes ``None`` (JSON ``null``)."""
    x = float(x)
    return None if math.isnan(x) else x


# ---------------------------------------------------------------------------------------------
# Texts (METHODS §6.4 concept texts, §3.7 bias texts)
# ---------------------------------------------------------------------------------------------

_ATTR_KEYS = ("values", "bias_texts", "axis", "description")


def _text_list(obj: Any, where: str) -> list[str]:
    if isinstance(obj, str) or not isinstance(obj, Sequence):
        raise ValueError(f"{where} must be a list of strings, got {type(obj).__name__}")
    out = []
    for i, t in enumerate(obj):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{where}[{i}] must be a non-empty string, got {t!r}")
        out.append(t.strip())
    dup = sorted({t for t in out if out.count(t) > 1})
    if dup:
        raise ValueError(f"{where} lists a text more than once: {dup}")
    return out


def audit_texts(
    spec: Mapping[str, Any], min_concept_texts: int = 5, min_bias_texts: int = 20
) -> dict[str, dict[str, Any]]:
    """Validate the audit text spec (the ``protected_attributes`` structure documented at the
    top of ``config/texts/facet.yaml``; METHODS §6.4 concept texts, §3.7 bias texts).

    Returns ``{attribute: {"values": {value: [texts]}, "bias_texts": [texts],
    "bias_texts_by_value": {value: [texts]} or None, "axis": [pos, neg],
    "description": str}}``, texts stripped. Raises ``ValueError`` naming the offending key
    when the structure is wrong, a value has fewer than ``min_concept_texts`` texts, an
    attribute has fewer than ``min_bias_texts`` bias texts, or the axis names unknown values.
    Bias texts given by value must be balanced (counts differ by at most one).
    """
    if not isinstance(spec, Mapping) or "protected_attributes" not in spec:
        raise ValueError(
            "audit text spec needs a top-level 'protected_attributes:' mapping "
            "(see the header of config/texts/facet.yaml)"
        )
    attrs = spec["protected_attributes"]
    if not isinstance(attrs, Mapping) or not attrs:
        raise ValueError("'protected_attributes' must map attribute names to their texts")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in attrs.items():
        where = f"protected_attributes.{name}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with keys {list(_ATTR_KEYS)}")
        unknown = sorted(set(entry) - set(_ATTR_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_ATTR_KEYS)}")
        for key in ("values", "bias_texts"):
            if key not in entry:
                raise ValueError(f"{where} is missing '{key}:'")
        values = entry["values"]
        if not isinstance(values, Mapping) or len(values) < 2:
            raise ValueError(f"{where}.values must map >= 2 value names to concept texts")
        vals: dict[str, list[str]] = {}
        for v, texts in values.items():
            vals[str(v)] = _text_list(texts, f"{where}.values.{v}")
            if len(vals[str(v)]) < min_concept_texts:
                raise ValueError(
                    f"{where}.values.{v} has {len(vals[str(v)])} concept texts; "
                    f"METHODS §6.4 asks for >= {min_concept_texts}"
                )
        bt = entry["bias_texts"]
        by_value = None
        if isinstance(bt, Mapping):
            extra = sorted(set(map(str, bt)) - set(vals))
            if extra:
                raise ValueError(
                    f"{where}.bias_texts names value(s) {extra} not in values {list(vals)}"
                )
            by_value = {str(v): _text_list(t, f"{where}.bias_texts.{v}") for v, t in bt.items()}
            counts = [len(t) for t in by_value.values()]
            if len(by_value) < len(vals) or max(counts) - min(counts) > 1:
                raise ValueError(
                    f"{where}.bias_texts must be balanced across values "
                    f"{list(vals)}: got counts {dict(zip(by_value, counts, strict=True))}"
                )
            bias = [t for ts in by_value.values() for t in ts]
            _text_list(bias, f"{where}.bias_texts (all values)")
        else:
            bias = _text_list(bt, f"{where}.bias_texts")
        if len(bias) < min_bias_texts:
            raise ValueError(
                f"{where}.bias_texts has {len(bias)} texts; METHODS §3.7 asks for "
                f">= {min_bias_texts}"
            )
        if "axis" in entry:
            axis = entry["axis"]
            if (
                isinstance(axis, str)
                or not isinstance(axis, Sequence)
                or len(axis) != 2
                or axis[0] == axis[1]
            ):
                raise ValueError(f"{where}.axis must be two different value names, got {axis!r}")
            axis = [str(a) for a in axis]
            missing = [a for a in axis if a not in vals]
            if missing:
                raise ValueError(f"{where}.axis names {missing}, not in values {list(vals)}")
        elif len(vals) == 2:
            axis = list(vals)
        else:
            raise ValueError(
                f"{where} has {len(vals)} values; give 'axis: [<value>, <value>]' for the CAV"
            )
        out[str(name)] = {
            "values": vals,
            "bias_texts": bias,
            "bias_texts_by_value": by_value,
            "axis": axis,
            "description": str(entry.get("description", "")).strip(),
        }
    return out


TEXT_TABLE_COLUMNS = ["attribute", "role", "value", "text"]


def text_table(texts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """All audit texts of :func:`audit_texts` output, one row per (attribute, role, value, text)
    with role ``"concept"`` or ``"bias"`` (``value`` empty for bias texts given as a list):
    the list to send through the text tower (no templates)."""
    rows = []
    for attr, entry in texts.items():
        for v, ts in entry["values"].items():
            rows += [(attr, "concept", v, t) for t in ts]
        if entry.get("bias_texts_by_value"):
            for v, ts in entry["bias_texts_by_value"].items():
                rows += [(attr, "bias", v, t) for t in ts]
        else:
            rows += [(attr, "bias", "", t) for t in entry["bias_texts"]]
    return pd.DataFrame(rows, columns=TEXT_TABLE_COLUMNS)


def value_codes(value_names: Iterable[str], dataset_values: Sequence[str]) -> dict[str, int]:
    """Map text-spec value names to the dataset's value indices (``dataset.json``
    ``attributes[<name>]`` order); raises if a name is not a dataset value."""
    ds = [str(v) for v in dataset_values]
    out = {}
    for v in value_names:
        if str(v) not in ds:
            raise ValueError(
                f"attribute value {v!r} of the audit texts is not a dataset value {ds}; "
                "rename it in the text file to match dataset.json"
            )
        out[str(v)] = ds.index(str(v))
    return out


def recode_attr(attr: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Attribute codes restricted to ``keep`` (in that order -> 0, 1, ...); other codes -> -1.

    E.g. FACET gender values ``[masc, fem, non_binary, na]`` with ``keep=[0, 1]`` leaves the
    binary analysis of METHODS §6.1 (non-binary / unknown excluded from V)."""
    a = np.asarray(attr, dtype=np.int64)
    out = np.full(a.shape, -1, dtype=np.int64)
    for new, old in enumerate(keep):
        out[a == int(old)] = new
    return out


# ---------------------------------------------------------------------------------------------
# §6.4 zero-shot CAVs
# ---------------------------------------------------------------------------------------------


def _unit(x: np.ndarray, what: str = "vector") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n <= 0):
        raise ValueError(f"cannot normalise a zero {what}")
    return x / n


def concept_means(value_embeddings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """φ_v per value: normalise each raw text embedding, average per value, renormalise
    (METHODS §6.4). ``value_embeddings`` maps value -> [n_texts, D] raw text embeddings."""
    out = {}
    for v, emb in value_embeddings.items():
        e = np.atleast_2d(np.asarray(emb, dtype=np.float64))
        if e.ndim != 2 or len(e) == 0:
            raise ValueError(f"value {v!r}: expected [n_texts, D] text embeddings, got {e.shape}")
        out[str(v)] = _unit(_unit(e, f"text embedding of {v!r}").mean(axis=0), f"φ of {v!r}")
    dims = {e.shape[-1] for e in out.values()}
    if len(dims) != 1:
        raise ValueError(f"text embeddings of different widths: {sorted(dims)}")
    return out


@dataclass
class CAV:
    """A zero-shot concept activation vector (METHODS §6.4).

    ``vector`` [D] unit norm, ``= normalise(mean φ(positive) − mean φ(negative))``; ``kind`` is
    ``"axis"`` (two values) or ``"one_vs_rest"``.
    """

    name: str
    kind: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    vector: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "positive": list(self.positive),
            "negative": list(self.negative),
            "vector": [float(x) for x in self.vector],
        }


def zero_shot_cavs(
    value_embeddings: Mapping[str, np.ndarray],
    axis: Sequence[str] | None = None,
    one_vs_rest: bool | None = None,
) -> list[CAV]:
    """Zero-shot CAVs from raw text embeddings per attribute value (METHODS §6.4).

    * axis CAV ``"{a}_vs_{b}"``: v = normalise(φ_a − φ_b) for ``axis = [a, b]`` (default: the
      two values when there are two; required otherwise), e.g. masculine–feminine,
      young–older;
    * one-vs-rest CAVs ``"{a}_vs_rest"``: v_a = normalise(φ_a − mean_{a′≠a} φ_{a′}), one per
      value; computed by default when there are >= 3 values (``one_vs_rest``), since for two
      values they equal ± the axis CAV.

    The axis CAV comes first in the returned list.
    """
    phi = concept_means(value_embeddings)
    names = list(phi)
    if len(names) < 2:
        raise ValueError("CAVs need at least two attribute values")
    if axis is None:
        if len(names) != 2:
            raise ValueError(f"{len(names)} values {names}: give the CAV axis, e.g. [young, older]")
        axis = names
    a, b = (str(x) for x in axis)
    for x in (a, b):
        if x not in phi:
            raise ValueError(f"axis value {x!r} has no concept texts (values: {names})")
    cavs = [CAV(f"{a}_vs_{b}", "axis", (a,), (b,), _unit(phi[a] - phi[b], "axis CAV"))]
    if one_vs_rest if one_vs_rest is not None else len(names) >= 3:
        for v in names:
            rest = [u for u in names if u != v]
            vec = _unit(phi[v] - np.mean([phi[u] for u in rest], axis=0), f"CAV {v}_vs_rest")
            cavs.append(CAV(f"{v}_vs_rest", "one_vs_rest", (v,), tuple(rest), vec))
    return cavs


# ---------------------------------------------------------------------------------------------
# §6.4 per-head scores
# ---------------------------------------------------------------------------------------------


def head_projections(heads: np.ndarray, cav: np.ndarray) -> np.ndarray:
    """s_{l,h}(x) = <ĉ_{l,h}(x), v> for every image and head: [N, L, H] float64 (METHODS §6.4)."""
    heads = np.asarray(heads)
    v = np.asarray(cav, dtype=np.float64).reshape(-1)
    if heads.ndim != 4 or heads.shape[-1] != v.shape[0]:
        raise ValueError(f"heads {heads.shape} and CAV {v.shape} do not match ([N, L, H, D], [D])")
    return np.einsum("nlhd,d->nlh", heads, v.astype(heads.dtype), dtype=np.float64)


def _smd(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Standardised mean difference (mean_pos − mean_neg) / pooled sd, per column."""
    n1, n2 = len(pos), len(neg)
    var = ((n1 - 1) * pos.var(axis=0, ddof=1) + (n2 - 1) * neg.var(axis=0, ddof=1)) / (n1 + n2 - 2)
    sd = np.sqrt(var)
    diff = pos.mean(axis=0) - neg.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.nan)


def _auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC = P(s_pos > s_neg) + ½ P(tie) per column, from Mann–Whitney ranks (average ties)."""
    from scipy import stats

    n1, n2 = len(pos), len(neg)
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=0), axis=0)
    u = ranks[:n1].sum(axis=0) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n2)


def _as_codes(x: int | Sequence[int]) -> list[int]:
    return [int(x)] if np.isscalar(x) else [int(v) for v in x]


SCORE_COLUMNS = [
    "cav",
    "layer",
    "head",
    "head_id",
    "n_pos",
    "n_neg",
    "d",
    "auc",
    "d_within",
    "auc_within",
    "n_classes_within",
    "n_within",
    "abs_d",
    "abs_d_within",
]


def cav_head_scores(
    proj: np.ndarray,
    layers: Sequence[int],
    attr: np.ndarray,
    labels: np.ndarray,
    positive: int | Sequence[int],
    negative: int | Sequence[int],
    min_per_group: int = DEFAULTS["min_per_group"],
    cav_name: str = "",
) -> pd.DataFrame:
    """Per-head CAV bias scores (METHODS §6.4) from projections ``proj`` [N, L, H].

    Groups: images whose attribute code is in ``positive`` vs in ``negative`` (other codes,
    including -1, are ignored). Per head:

    * ``d`` = (mean_pos s − mean_neg s) / pooled sd (pooled with ``n − 1`` weights);
    * ``auc`` = P(s_pos > s_neg) + ½ P(tie) (Mann–Whitney U / (n_pos·n_neg));
    * ``d_within``, ``auc_within``: the same inside every true class with at least
      ``min_per_group`` images of each group, averaged with weights n_class = n_pos,c + n_neg,c
      ([REC]: separates "encodes the attribute" from "encodes a class that correlates with
      it"); NaN when no class qualifies. ``n_classes_within`` / ``n_within`` count them.

    Columns :data:`SCORE_COLUMNS` (``abs_d*`` = absolute values), one row per head.
    """
    proj = np.asarray(proj, dtype=np.float64)
    if proj.ndim != 3:
        raise ValueError(f"proj must be [N, L, H] head projections, got {proj.shape}")
    if min_per_group < 2:
        raise ValueError(f"min_per_group must be >= 2 (a pooled sd needs it), got {min_per_group}")
    n, n_layers, n_heads = proj.shape
    layers = [int(x) for x in layers]
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} projected layers")
    a = np.asarray(attr, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if a.shape != (n,) or y.shape != (n,):
        raise ValueError("attr and labels need one entry per image of proj")
    pos_codes, neg_codes = _as_codes(positive), _as_codes(negative)
    if set(pos_codes) & set(neg_codes):
        raise ValueError(f"positive {pos_codes} and negative {neg_codes} overlap")
    is_pos, is_neg = np.isin(a, pos_codes), np.isin(a, neg_codes)
    if is_pos.sum() < 2 or is_neg.sum() < 2:
        raise ValueError(
            f"CAV {cav_name!r}: need >= 2 images in each group, got {int(is_pos.sum())} "
            f"positive and {int(is_neg.sum())} negative"
        )
    flat = proj.reshape(n, -1)
    d = _smd(flat[is_pos], flat[is_neg])
    auc = _auc(flat[is_pos], flat[is_neg])
    d_sum = np.zeros(flat.shape[1])
    auc_sum = np.zeros(flat.shape[1])
    w_tot, n_cls = 0, 0
    for c in np.unique(y[is_pos | is_neg]):
        pc, nc = is_pos & (y == c), is_neg & (y == c)
        if pc.sum() < min_per_group or nc.sum() < min_per_group:
            continue
        w = int(pc.sum() + nc.sum())
        d_c = _smd(flat[pc], flat[nc])
        d_sum += w * np.nan_to_num(d_c, nan=0.0)
        auc_sum += w * _auc(flat[pc], flat[nc])
        w_tot += w
        n_cls += 1
    if n_cls == 0:
        log.warning(
            "CAV %s: no class has >= %d images of each group; within-class scores are NaN",
            cav_name,
            min_per_group,
        )
        d_w = np.full(flat.shape[1], np.nan)
        auc_w = np.full(flat.shape[1], np.nan)
    else:
        d_w, auc_w = d_sum / w_tot, auc_sum / w_tot
    li, hh = np.divmod(np.arange(flat.shape[1]), n_heads)
    return pd.DataFrame(
        {
            "cav": cav_name,
            "layer": [layers[i] for i in li],
            "head": hh.astype(int),
            "head_id": [head_str((layers[i], h)) for i, h in zip(li, hh, strict=True)],
            "n_pos": int(is_pos.sum()),
            "n_neg": int(is_neg.sum()),
            "d": d,
            "auc": auc,
            "d_within": d_w,
            "auc_within": auc_w,
            "n_classes_within": n_cls,
            "n_within": w_tot,
            "abs_d": np.abs(d),
            "abs_d_within": np.abs(d_w),
        },
        columns=SCORE_COLUMNS,
    )


def stereotyped_class_map(
    labels: np.ndarray,
    attr: np.ndarray,
    n_classes: int,
    min_lift: float = DEFAULTS["stereotype_min_lift"],
) -> np.ndarray:
    """[C, V] bool: class c is *stereotyped for value v* when the share of v among its images
    exceeds ``min_lift`` × the overall share of v (true labels, ``attr >= 0``; RECON §6.4)."""
    a = np.asarray(attr, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    keep = a >= 0
    n_values = int(a[keep].max()) + 1 if keep.any() else 0
    counts = np.zeros((n_classes, n_values))
    np.add.at(counts, (y[keep], a[keep]), 1)
    overall = counts.sum(axis=0) / max(counts.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    return np.nan_to_num(share, nan=0.0) > min_lift * overall[None, :]


STEREO_COLUMNS = ["layer", "head", "head_id", "stereo_logit", "n_images"]


def stereotype_selection(
    preds: np.ndarray, labels: np.ndarray, attr: np.ndarray, stereo_map: np.ndarray
) -> np.ndarray:
    """[N] bool: the images the stereotype-logit score averages over (METHODS §6.4):
    misclassified (``preds != labels``), with a valid attribute value and a prediction
    (both >= 0), predicted as a class stereotyped for their own value (``stereo_map`` [C, V]
    of :func:`stereotyped_class_map`)."""
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    sel = (p != y) & (a >= 0) & (p >= 0)
    sel[sel] = stereo_map[p[sel], a[sel]]
    return sel


def stereotype_logit_sums(
    heads: np.ndarray, classifier: np.ndarray, labels: np.ndarray, preds: np.ndarray
) -> np.ndarray:
    """Σ over the rows of ``heads`` [n, L, H, D] of ⟨ĉ_{l,h}(x), t̂_pred − t̂_y⟩: [L, H]
    float64 (the differences t̂_pred − t̂_y in the heads' dtype, float64 accumulation). Sums of
    batches add up to the sum over their union (:func:`stereotype_logit_table`)."""
    heads = np.asarray(heads)
    T = np.asarray(classifier, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if not len(y):
        return np.zeros(heads.shape[1:3])
    diff = (T[:, p] - T[:, y]).T  # [n, D]
    return np.einsum("nlhd,nd->lh", heads, diff.astype(heads.dtype), dtype=np.float64)


def stereotype_logit_table(sums: np.ndarray, count: int, layers: Sequence[int]) -> pd.DataFrame:
    """The stereotype-logit table (:data:`STEREO_COLUMNS`) from the summed direct logits
    ``sums`` [L, H] (:func:`stereotype_logit_sums`) of ``count`` selected images."""
    sums = np.asarray(sums, dtype=np.float64)
    n_layers, n_heads = sums.shape
    if count:
        score = sums / count
    else:
        log.warning("stereotype-logit score: no misclassified image lands on a stereotyped class")
        score = np.full((n_layers, n_heads), np.nan)
    layers = [int(x) for x in layers]
    rows = [
        (layers[li], h, head_str((layers[li], h)), float(score[li, h]), int(count))
        for li in range(n_layers)
        for h in range(n_heads)
    ]
    return pd.DataFrame(rows, columns=STEREO_COLUMNS)


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
    stereotyped for the image's own value (:func:`stereotyped_class_map`,
    :func:`stereotype_selection`), the mean direct logit of each head toward that predicted
    class against the true class, ⟨ĉ_{l,h}(x), t̂_pred − t̂_y⟩. Positive = the head pushes
    toward the stereotyped error. Columns :data:`STEREO_COLUMNS`; ``stereo_logit`` NaN when
    no image qualifies. (The streamed audit adds :func:`stereotype_logit_sums` batch by
    batch instead.)
    """
    heads = np.asarray(heads)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    n_classes = np.asarray(classifier).shape[1]
    sel = stereotype_selection(p, y, attr, stereotyped_class_map(y, attr, n_classes, min_lift))
    sums = stereotype_logit_sums(heads[sel], classifier, y[sel], p[sel])
    return stereotype_logit_table(sums, int(sel.sum()), layers)


# ---------------------------------------------------------------------------------------------
# §3.7 / §6.5 bias-augmented TextSpan
# ---------------------------------------------------------------------------------------------


def bias_head_stats(
    table: pd.DataFrame,
    bias_texts: Iterable[str],
    top_k: int = DEFAULTS["textspan_top_k"],
    first_rank_max: int = DEFAULTS["textspan_first_rank_max"],
    share_quantile: float = DEFAULTS["textspan_share_quantile"],
) -> pd.DataFrame:
    """Per-head bias statistics of a TextSpan table run on the augmented pool R⁺ = R_general ∪
    B_attr (METHODS §3.7 steps 3-4): :func:`clipbias.methods.textspan.bias_textspan_stats`,
    columns ``layer, head, head_id, ve_total, bias_ve, bias_share, first_bias_rank,
    n_bias_top, flagged``."""
    bias = [t.strip() for t in bias_texts]
    if not bias:
        raise ValueError("no bias texts given")
    if table.empty:
        raise ValueError("the TextSpan table is empty; run textspan_heads first")
    found = set(table["text"].str.strip())
    if not found & set(bias):
        log.warning("none of the %d bias texts was chosen by TextSpan for any head", len(bias))
    return bias_textspan_stats(table, bias, top_k, first_rank_max, share_quantile)


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
    pool, bias = _check_augmented(pool_texts, bias_texts)
    table = textspan_heads(
        heads, layers, pool_emb, pool, m=m, rank=rank, energy=energy, select=select
    )
    return table, bias_head_stats(table, bias, top_k, first_rank_max, share_quantile)


def _check_augmented(pool_texts: Sequence[str], bias_texts: Iterable[str]) -> tuple[list, list]:
    bias = [t.strip() for t in bias_texts]
    pool = [t.strip() for t in pool_texts]
    missing = [t for t in bias if t not in set(pool)]
    if missing:
        raise ValueError(
            f"{len(missing)} bias text(s) are not in the pool, e.g. {missing[:3]}; build the "
            "pool with clipbias.methods.textspan.augment_pool(general, bias)"
        )
    return pool, bias


def bias_textspan_from_moments(
    moments: Any,
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
    """:func:`bias_textspan` from per-head moments (:class:`clipbias.streaming.HeadMoments`
    of the images, accumulated batch by batch) instead of the heads themselves: TextSpan needs
    only each head's mean and (un)centred Gram matrices
    (:func:`clipbias.methods.textspan.textspan_heads_from_moments`; equal to rounding)."""
    pool, bias = _check_augmented(pool_texts, bias_texts)
    table, _ = textspan_heads_from_moments(
        moments, pool_emb, pool, m=m, rank=rank, energy=energy, select=select
    )
    return table, bias_head_stats(table, bias, top_k, first_rank_max, share_quantile)


# ---------------------------------------------------------------------------------------------
# §6.6 ranking and selection
# ---------------------------------------------------------------------------------------------


def terminal_layer_numbers(
    layers: Sequence[int],
    terminal_layers: int = DEFAULTS["terminal_layers"],
    n_layers: int | None = None,
) -> list[int]:
    """The stored layers among the model's last ``terminal_layers`` layers (layer numbers >=
    ``n_layers − terminal_layers``; ``n_layers`` defaults to max(layers) + 1)."""
    layers = sorted(int(x) for x in layers)
    total = max(layers) + 1 if n_layers is None else int(n_layers)
    out = [lyr for lyr in layers if lyr >= total - int(terminal_layers)]
    if not out:
        raise ValueError(
            f"no stored layer among the last {terminal_layers} of {total} (stored: {layers})"
        )
    return out


RANK_COLUMNS = [
    "layer",
    "head",
    "head_id",
    "candidate",
    "cav_score",
    "bias_share",
    "flagged",
    "rank_cav",
    "rank_textspan",
    "combined_rank",
    "order",
]


def _desc_rank(x: np.ndarray) -> np.ndarray:
    """Rank 1 = largest; NaN ranks last (average ranks for ties)."""
    from scipy import stats

    x = np.where(np.isnan(x), -np.inf, x)
    return stats.rankdata(-x, method="average")


def rank_heads(
    scores: pd.DataFrame,
    bias_stats: pd.DataFrame | None,
    layers: Sequence[int],
    terminal_layers: int = DEFAULTS["terminal_layers"],
    n_layers: int | None = None,
    cav: str | None = None,
    cav_score: str = DEFAULTS["cav_score"],
    flagged_first: bool = DEFAULTS["flagged_first"],
) -> pd.DataFrame:
    """Rank heads for ablation (METHODS §6.6).

    Candidates = heads of the last ``terminal_layers`` layers (:func:`terminal_layer_numbers`).
    Among them: ``rank_cav`` by ``cav_score`` (default |within-class d|) and ``rank_textspan``
    by bias-variance share (rank 1 = largest; heads without TextSpan statistics rank last),
    ``combined_rank`` = mean of the two (= ``rank_cav`` without ``bias_stats``). ``order``
    (1 = first to ablate) sorts TextSpan-flagged heads first (``flagged_first``), then by
    combined rank, then by ``cav_score``. Scores of ``scores`` for one CAV (``cav`` picks it
    when the table holds several). Non-candidates are kept with ``order`` missing.

    Columns :data:`RANK_COLUMNS`, rows in ``order`` (candidates first).
    """
    df = scores
    if "cav" in df.columns and df["cav"].nunique() > 1:
        if cav is None:
            raise ValueError(f"scores hold several CAVs {sorted(df['cav'].unique())}; pass cav=")
        df = df[df["cav"] == cav]
    elif cav is not None and "cav" in df.columns and not (df["cav"] == cav).any():
        raise ValueError(f"no scores for CAV {cav!r}")
    if cav_score not in df.columns:
        raise ValueError(f"cav_score {cav_score!r} is not a score column ({list(df.columns)})")
    df = df[["layer", "head", "head_id", cav_score]].rename(columns={cav_score: "cav_score"})
    df = df.reset_index(drop=True)
    if bias_stats is not None:
        bs = bias_stats[["layer", "head", "bias_share", "flagged"]]
        df = df.merge(bs, on=["layer", "head"], how="left")
    else:
        df["bias_share"] = np.nan
        df["flagged"] = False
    df["flagged"] = df["flagged"].astype("boolean").fillna(False).astype(bool)
    term = set(terminal_layer_numbers(df["layer"].unique(), terminal_layers, n_layers))
    stored = {int(x) for x in layers}
    df["candidate"] = df["layer"].isin(term & stored)
    cand = df[df["candidate"]].copy()
    if cand.empty:
        raise ValueError("no candidate heads in the terminal layers")
    if cand["cav_score"].isna().all():
        raise ValueError(
            f"every candidate head has a NaN {cav_score}; with too few images per class use "
            "a smaller min_per_group or cav_score='abs_d'"
        )
    cand["rank_cav"] = _desc_rank(cand["cav_score"].to_numpy(dtype=np.float64))
    if bias_stats is not None:
        cand["rank_textspan"] = _desc_rank(cand["bias_share"].to_numpy(dtype=np.float64))
        cand["combined_rank"] = (cand["rank_cav"] + cand["rank_textspan"]) / 2.0
    else:
        cand["rank_textspan"] = np.nan
        cand["combined_rank"] = cand["rank_cav"]
    keys = (["flagged"] if flagged_first else []) + ["combined_rank", "cav_score", "layer", "head"]
    asc = ([False] if flagged_first else []) + [True, False, False, True]
    cand = cand.sort_values(keys, ascending=asc, na_position="last")
    cand["order"] = np.arange(1, len(cand) + 1)
    rest = df[~df["candidate"]].copy()
    for col in ("rank_cav", "rank_textspan", "combined_rank"):
        rest[col] = np.nan
    rest["order"] = pd.NA
    out = pd.concat([cand, rest.sort_values(["layer", "head"])], ignore_index=True)
    out["order"] = out["order"].astype("Int64")
    return out[RANK_COLUMNS]


def select_top_k(ranking: pd.DataFrame, k: int = DEFAULTS["k"]) -> list[str]:
    """The first ``k`` candidate heads of :func:`rank_heads` (METHODS §6.6 step 3)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cand = ranking[ranking["candidate"]].sort_values("order")
    if len(cand) < k:
        raise ValueError(f"k = {k} but only {len(cand)} candidate heads")
    return cand["head_id"].head(k).tolist()


# ---------------------------------------------------------------------------------------------
# §6.7 mean ablation as precomputed per-head logit changes
# ---------------------------------------------------------------------------------------------


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


class BlockMean:
    """Running mean of rows [..., shape] added in order, float64 accumulation, the result
    float32: bit-identical to :func:`mean_heads` over the same rows (each block of
    :data:`_BLOCK` rows summed row after row, then the blocks), however the rows arrive."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.acc = np.zeros(tuple(shape), dtype=np.float64)
        self._block = np.zeros(tuple(shape), dtype=np.float64)
        self._in_block = 0
        self.count = 0

    def update(self, rows: np.ndarray) -> None:
        for row in rows:
            self._block += row
            self._in_block += 1
            if self._in_block == _BLOCK:
                self.acc += self._block
                self._block[...] = 0.0
                self._in_block = 0
        self.count += len(rows)

    def mean(self) -> np.ndarray:
        if not self.count:
            raise ValueError("no images to average the heads over")
        acc = self.acc + self._block if self._in_block else self.acc
        return (acc / self.count).astype(np.float32)


@dataclass
class HeadLogits:
    """Per-image direct class logits of every head of ``layers``, and the un-ablated logits:
    all that mean ablation and the predictions need (METHODS §1.3, §6.7).

    A prediction is the arg-max over classes of ⟨e(x), t̂_c⟩ / ‖e(x)‖; the positive factor
    1/‖e‖ does not change it, and the logits are linear in the head contributions. So
    mean-ablating a set S, e′ = e − Σ_{h∈S} (ĉ_h − μ_h), gives the logits
    ``base + Σ_{h∈S} (μ_h·T − logits_h)``: the class logits ``logits_h(x) = ĉ_h(x)·T`` [C]
    stand in for the D-dimensional heads (:class:`LogitDeltas`), and the means for a head
    enter only as μ_h·T (:meth:`mean_logits`).

    ``base`` [N, C] float64 = e(x)·T with e = Σ heads + rest; ``logits`` [L, H, N, C] float64
    (float64 so that ``mean_logits − logits`` rounds like ``(μ − ĉ)·T``); ``classifier``
    [D, C] float64. Memory N·L·H·C·8 bytes: for the last 4 layers of ViT-H-14 and 42 classes
    21.5 kB per image instead of the 262 kB of the heads.
    """

    layers: list[int]
    classifier: np.ndarray
    base: np.ndarray
    logits: np.ndarray

    @classmethod
    def empty(
        cls, n: int, layers: Sequence[int], n_heads: int, classifier: np.ndarray
    ) -> HeadLogits:
        """Preallocated for ``n`` images, filled batch by batch with :meth:`fill`."""
        T = np.asarray(classifier, dtype=np.float64)
        c = T.shape[1]
        layers = [int(x) for x in layers]
        return cls(layers, T, np.empty((n, c)), np.empty((len(layers), n_heads, n, c)))

    @classmethod
    def from_heads(
        cls, heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray, layers: Sequence[int]
    ) -> HeadLogits:
        """From in-memory ``heads`` [N, L, H, D] of ``layers`` and ``rest`` [N, D]."""
        heads = np.asarray(heads)
        rest = np.asarray(rest)
        if heads.ndim != 4 or rest.shape != (heads.shape[0], heads.shape[-1]):
            raise ValueError(
                f"heads {heads.shape} must be [N, L, H, D] and rest {rest.shape} [N, D]"
            )
        if len(layers) != heads.shape[1]:
            raise ValueError(f"{len(layers)} layer numbers for {heads.shape[1]} stored layers")
        out = cls.empty(heads.shape[0], layers, heads.shape[2], classifier)
        for start in range(0, heads.shape[0], _BLOCK):
            part = slice(start, start + _BLOCK)
            out.fill(start, heads[part], rest[part])
        return out

    def fill(self, start: int, heads: np.ndarray, rest: np.ndarray) -> None:
        """Rows ``start ..`` from ``heads`` [n, L, H, D] (the heads of ``layers``) and ``rest``
        [n, D] (everything else of the embedding)."""
        n = heads.shape[0]
        part = slice(start, start + n)
        emb = heads.sum(axis=(1, 2), dtype=np.float64) + rest
        self.base[part] = emb @ self.classifier
        for li in range(len(self.layers)):
            self.logits[li, :, part] = np.swapaxes(
                heads[:, li].astype(np.float64) @ self.classifier, 0, 1
            )

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.logits.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.base.shape[1])

    def mean_logits(self, means: np.ndarray) -> np.ndarray:
        """μ_h·T [L, H, C] float64 of the ablation means ``means`` [L, H, D] (float32 from
        :func:`mean_heads` / :class:`BlockMean`, widened exactly)."""
        means = np.asarray(means)
        if means.shape[:2] != self.logits.shape[:2]:
            raise ValueError(f"means {means.shape} do not match the heads {self.logits.shape[:2]}")
        return means.astype(np.float64) @ self.classifier


class LogitDeltas:
    """Mean ablation of any subset of a head pool by adding precomputed logit changes.

    Mean-ablating head h replaces ĉ_h(x) by the reference mean m_h, which changes the logits
    by Δ_h(x) = m_h·T − ĉ_h(x)·T (METHODS §1.3, §6.7: direct path, frozen LN statistics).
    The changes of a set add up, so ``logits(S) = base + Σ_{h∈S} Δ_h``. ``base`` [N, C]
    float64, ``deltas`` [K, N, C] (``dtype``, default float32), from the per-head class
    logits ``logits`` (:class:`HeadLogits`) and the means' logits ``mean_logits`` [L, H, C]
    (:meth:`HeadLogits.mean_logits`). ``rows`` (bool mask or indices) restricts the images.
    :meth:`from_heads` builds one from in-memory heads.
    """

    def __init__(
        self,
        logits: HeadLogits,
        pool: Iterable[str | HeadId],
        mean_logits: np.ndarray,
        dtype: Any = np.float32,
        rows: np.ndarray | None = None,
    ) -> None:
        mean_logits = np.asarray(mean_logits, dtype=np.float64)
        if mean_logits.shape != (*logits.logits.shape[:2], logits.n_classes):
            raise ValueError(
                f"mean logits {mean_logits.shape} must be [L, H, C] = "
                f"{(*logits.logits.shape[:2], logits.n_classes)}"
            )
        sel = slice(None) if rows is None else _row_index(rows, logits.n)
        self.base = logits.base[sel]
        if rows is None:
            self.base = self.base.copy()
        self.layers = list(logits.layers)
        self.pool: list[HeadId] = []
        for h in pool:
            hid = parse_head(h)
            if hid not in self.pool:
                self.pool.append(hid)
        self._index = {h: i for i, h in enumerate(self.pool)}
        self.deltas = np.empty((len(self.pool), *self.base.shape), dtype=dtype)
        for i, hid in enumerate(self.pool):
            li, hh = head_position(hid, self.layers)
            self.deltas[i] = mean_logits[li, hh][None, :] - logits.logits[li, hh][sel]

    @classmethod
    def from_heads(
        cls,
        heads: np.ndarray,
        rest: np.ndarray,
        classifier: np.ndarray,
        layers: Sequence[int],
        pool: Iterable[str | HeadId],
        means: np.ndarray,
        dtype: Any = np.float32,
        rows: np.ndarray | None = None,
    ) -> LogitDeltas:
        """From in-memory ``heads`` [N, L, H, D] of ``layers``, ``rest`` [N, D], the
        ``classifier`` [D, C] and the ablation ``means`` [L, H, D] (see
        :func:`clipbias.methods.ltc.head_means`)."""
        heads = np.asarray(heads)
        means = np.asarray(means)
        if heads.ndim != 4 or means.shape != heads.shape[1:]:
            raise ValueError(
                f"heads {heads.shape} must be [N, L, H, D] and means {means.shape} [L, H, D] "
                "(see clipbias.methods.ltc.head_means)"
            )
        if np.asarray(rest).shape != (heads.shape[0], heads.shape[-1]):
            raise ValueError(
                f"rest {np.asarray(rest).shape} must be [N, D] for heads {heads.shape}"
            )
        logits = HeadLogits.from_heads(heads, rest, classifier, layers)
        return cls(logits, pool, logits.mean_logits(means), dtype, rows)

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


class _VCalc:
    """Fast V(pred, attr) for fixed attribute codes (bincount table + scipy χ²)."""

    def __init__(self, attr: np.ndarray, n_classes: int, mask: np.ndarray | None = None):
        a = np.asarray(attr, dtype=np.int64)
        keep = a >= 0
        if mask is not None:
            keep &= np.asarray(mask, dtype=bool)
        if not keep.any():
            raise ValueError("no image with a valid attribute value (attr >= 0)")
        self.keep = keep
        vals, self.code = np.unique(a[keep], return_inverse=True)
        self.n_cols = len(vals)
        self.n_rows = int(n_classes)

    def __call__(self, pred: np.ndarray, bias_correction: bool = False) -> float:
        flat = np.asarray(pred)[self.keep] * self.n_cols + self.code
        t = np.bincount(flat, minlength=self.n_rows * self.n_cols).reshape(self.n_rows, -1)
        return metrics.cramers_v_counts(t, bias_correction)


def _acc(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    ok = np.asarray(pred) == np.asarray(labels)
    return float(ok[mask].mean() if mask is not None else ok.mean())


GREEDY_COLUMNS = [
    "step",
    "head_id",
    "accepted",
    "v_before",
    "v_after",
    "v_drop",
    "acc",
    "acc_drop",
]


def greedy_select(
    ranking: pd.DataFrame,
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    min_drop: float = DEFAULTS["greedy_min_drop"],
    max_acc_drop: float = DEFAULTS["greedy_max_acc_drop"],
    max_k: int | None = None,
    bias_correction: bool = False,
) -> tuple[list[str], pd.DataFrame]:
    """Greedy forward choice of k on the locate half (METHODS §6.6 step 3, [REC]).

    Walk the candidates in ranking order; add the next head while V(pred, attr) falls by at
    least ``min_drop`` relative to the current set and accuracy is at most ``max_acc_drop``
    (a fraction: 0.005 = 0.5 pp) below the un-ablated accuracy; stop at the first head that
    fails (or after ``max_k`` heads). ``engine`` holds the locate-half images with locate
    means and every candidate in its pool. Returns (heads, trace) with trace columns
    :data:`GREEDY_COLUMNS` (one row per head tried; ``acc_drop`` vs the un-ablated accuracy).
    """
    y = np.asarray(labels, dtype=np.int64)
    vcalc = _VCalc(attr, engine.base.shape[1])
    cand = ranking[ranking["candidate"]].sort_values("order")["head_id"].tolist()
    chosen: list[str] = []
    v_cur = vcalc(engine.predict(), bias_correction)
    acc0 = _acc(engine.predict(), y)
    rows = []
    for step, hid in enumerate(cand, start=1):
        if max_k is not None and len(chosen) >= max_k:
            break
        pred = engine.predict([*chosen, hid])
        v_new = vcalc(pred, bias_correction)
        acc = _acc(pred, y)
        drop = v_cur - v_new
        ok = bool(drop >= min_drop - 1e-12 and acc0 - acc <= max_acc_drop + 1e-12)
        rows.append((step, hid, ok, v_cur, v_new, drop, acc, acc0 - acc))
        if not ok:
            break
        chosen.append(hid)
        v_cur = v_new
    return chosen, pd.DataFrame(rows, columns=GREEDY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# §6.1 locate / evaluate split
# ---------------------------------------------------------------------------------------------


def locate_evaluate_split(
    labels: np.ndarray,
    attr: np.ndarray,
    locate_fraction: float = DEFAULTS["locate_fraction"],
    seed: int = DEFAULTS["seed"],
) -> np.ndarray:
    """Stratified (true class × attribute value) locate / evaluate split (METHODS §6.1, [REC]).

    Returns ``is_locate`` [N] bool. Each cell (unknown values, -1, form their own cells) is
    shuffled with ``numpy.random.default_rng(seed)`` and its first
    floor(n·f + u) members go to the locate half (u ~ U(0, 1) per cell, so odd cells split
    at random and the expected share is exactly ``locate_fraction``). Not needed for
    datasets with their own splits (the planted benchmark: val / test).
    """
    if not 0.0 < locate_fraction < 1.0:
        raise ValueError(f"locate_fraction must be in (0, 1), got {locate_fraction}")
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != a.shape or y.ndim != 1:
        raise ValueError("labels and attr must be 1-D arrays of the same length")
    rng = np.random.default_rng(seed)
    _, cells = np.unique(np.stack([y, a], axis=1), axis=0, return_inverse=True)
    cells = cells.reshape(-1)
    out = np.zeros(len(y), dtype=bool)
    for c in range(int(cells.max()) + 1 if len(cells) else 0):
        members = rng.permutation(np.flatnonzero(cells == c))
        n_loc = int(math.floor(len(members) * locate_fraction + rng.random()))
        out[members[:n_loc]] = True
    return out


# ---------------------------------------------------------------------------------------------
# §6.7 outcome tables
# ---------------------------------------------------------------------------------------------

OUTCOME_COLUMNS = [
    "condition",
    "attribute",
    "n",
    "n_valid",
    "accuracy",
    "v",
    "v_bc",
    "v_true",
    "v_true_bc",
    "delta_v",
    "delta_v_bc",
    "delta_acc",
]


def outcome_summary(
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    n_classes: int,
    baseline: str = "baseline",
) -> pd.DataFrame:
    """Accuracy and Cramér's V per condition and attribute (METHODS §6.7-6.8).

    ``preds`` maps condition (e.g. ``"baseline"``, ``"top_k"``) -> predictions [N];
    ``attrs`` maps attribute -> codes [N]. Columns :data:`OUTCOME_COLUMNS`: ``n`` images,
    ``n_valid`` with a valid attribute value, top-1 ``accuracy`` over all ``n``, ``v`` /
    ``v_bc`` (Bergsma) = V(pred, attr), ``v_true`` / ``v_true_bc`` = V(true class, attr), and
    the changes against the ``baseline`` condition (NaN when it is absent).
    """
    y = np.asarray(labels, dtype=np.int64)
    rows = []
    for attr_name, a in attrs.items():
        base = None
        if baseline in preds:
            base = metrics.cramers_v_table(preds[baseline], y, a, n_classes)
            base_acc = _acc(preds[baseline], y)
        for cond, p in preds.items():
            t = metrics.cramers_v_table(p, y, a, n_classes)
            acc = _acc(p, y)
            rows.append(
                (
                    cond,
                    attr_name,
                    len(y),
                    t["n"],
                    acc,
                    t["v"],
                    t["v_bc"],
                    t["v_true"],
                    t["v_true_bc"],
                    t["v"] - base["v"] if base else np.nan,
                    t["v_bc"] - base["v_bc"] if base else np.nan,
                    acc - base_acc if base else np.nan,
                )
            )
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


PER_CLASS_COLUMNS = [
    "condition",
    "attribute",
    "class_index",
    "class_name",
    "value",
    "value_name",
    "n",
    "n_correct",
    "accuracy",
]


def per_class_accuracy(
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    class_names: Sequence[str] | None = None,
    value_names: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Per-class accuracy per attribute value, per condition (METHODS §6.7), long format.

    Columns :data:`PER_CLASS_COLUMNS`; one row per (condition, attribute, true class, value)
    cell with at least one image; unknown values (-1) are left out.
    """
    y = np.asarray(labels, dtype=np.int64)
    rows = []
    for attr_name, a in attrs.items():
        a = np.asarray(a, dtype=np.int64)
        keep = a >= 0
        cells = np.unique(np.stack([y[keep], a[keep]], axis=1), axis=0)
        names_v = (value_names or {}).get(attr_name)
        for cond, p in preds.items():
            ok = np.asarray(p) == y
            for c, v in cells:
                m = keep & (y == c) & (a == v)
                rows.append(
                    (
                        cond,
                        attr_name,
                        int(c),
                        str(class_names[c]) if class_names is not None else str(c),
                        int(v),
                        str(names_v[v]) if names_v is not None else str(v),
                        int(m.sum()),
                        int(ok[m].sum()),
                        float(ok[m].mean()),
                    )
                )
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


DELTA_COLUMNS = [
    "condition",
    "attribute",
    "v_before",
    "v_after",
    "delta_v",
    "ci_low",
    "ci_high",
    "p_boot",
    "n",
    "n_boot",
    "acc_before",
    "acc_after",
    "delta_acc",
    "mcnemar_p",
    "bias_correction",
]


def delta_v_table(
    pred_before: np.ndarray,
    preds_after: Mapping[str, np.ndarray],
    labels: np.ndarray,
    attrs: Mapping[str, np.ndarray],
    n_boot: int = DEFAULTS["n_boot"],
    seed: int = DEFAULTS["seed"],
    level: float = 0.95,
    bias_correction: bool = False,
) -> pd.DataFrame:
    """ΔV = V_after − V_before with paired, class × attribute stratified bootstrap intervals
    (:func:`clipbias.metrics.delta_v_bootstrap`; METHODS §6.8, §7.2), plus the accuracy
    change over all images and McNemar's exact p-value for it. Columns
    :data:`DELTA_COLUMNS`, one row per (condition, attribute)."""
    y = np.asarray(labels, dtype=np.int64)
    acc_b = _acc(pred_before, y)
    rows = []
    for attr_name, a in attrs.items():
        for cond, p in preds_after.items():
            r = metrics.delta_v_bootstrap(
                pred_before, p, y, a, n_boot, seed, level, bias_correction
            )
            acc_a = _acc(p, y)
            mc = metrics.mcnemar_exact(np.asarray(p) == y, np.asarray(pred_before) == y)
            rows.append(
                (
                    cond,
                    attr_name,
                    r["v_before"],
                    r["v_after"],
                    r["delta_v"],
                    r["ci_low"],
                    r["ci_high"],
                    r["p_boot"],
                    r["n"],
                    r["n_boot"],
                    acc_b,
                    acc_a,
                    acc_a - acc_b,
                    mc["pvalue"],
                    bool(bias_correction),
                )
            )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


# ---------------------------------------------------------------------------------------------
# §6.9 layer-matched random control
# ---------------------------------------------------------------------------------------------


def layer_matched_sets(
    selected: Iterable[str | HeadId],
    n_heads: int,
    max_enumerate: int = DEFAULTS["max_enumerate"],
    n_draws: int = DEFAULTS["n_draws"],
    seed: int = DEFAULTS["seed"],
) -> tuple[list[tuple[HeadId, ...]], dict[str, Any]]:
    """Random head sets with the same number of heads per layer as ``selected``, drawn from
    the other heads of those layers (METHODS §6.9).

    The number of such sets is Π_l C(n_heads − k_l, k_l). When it is <= ``max_enumerate``
    all are enumerated (in lexicographic order); otherwise ``n_draws`` sets are drawn
    independently (each layer without replacement; sets may repeat) with
    ``numpy.random.default_rng(seed)``. Returns (sets, info) with info ``{"mode":
    "enumerate" | "sample", "n_possible", "n_sets", "per_layer": {"L{l}": k_l}}``.
    """
    sel = [parse_head(h) for h in selected]
    if not sel:
        raise ValueError("the selected head set is empty")
    if len(set(sel)) != len(sel):
        raise ValueError("the selected head set lists a head twice")
    per_layer: dict[int, list[int]] = {}
    for layer, h in sel:
        if not 0 <= h < n_heads:
            raise ValueError(f"head {head_str((layer, h))} outside 0..{n_heads - 1}")
        per_layer.setdefault(layer, []).append(h)
    lays = sorted(per_layer)
    avail = {lyr: [h for h in range(n_heads) if h not in per_layer[lyr]] for lyr in lays}
    ks = {lyr: len(per_layer[lyr]) for lyr in lays}
    n_possible = math.prod(math.comb(len(avail[lyr]), ks[lyr]) for lyr in lays)
    info: dict[str, Any] = {
        "n_possible": int(n_possible),
        "per_layer": {f"L{lyr}": ks[lyr] for lyr in lays},
    }
    if n_possible <= max_enumerate:
        per = [
            [
                tuple((lyr, h) for h in combo)
                for combo in itertools.combinations(avail[lyr], ks[lyr])
            ]
            for lyr in lays
        ]
        sets = [tuple(h for part in prod for h in part) for prod in itertools.product(*per)]
        info["mode"] = "enumerate"
    else:
        rng = np.random.default_rng(seed)
        sets = []
        for _ in range(int(n_draws)):
            s: list[HeadId] = []
            for lyr in lays:
                pick = rng.choice(len(avail[lyr]), size=ks[lyr], replace=False)
                s += [(lyr, avail[lyr][i]) for i in sorted(pick)]
            sets.append(tuple(s))
        info["mode"] = "sample"
    info["n_sets"] = len(sets)
    if not sets:
        log.warning("no layer-matched set exists for %s", [head_str(h) for h in sel])
    return sets, info


CONTROL_COLUMNS = ["draw", "heads", "v", "accuracy", "delta_v", "delta_acc"]


def random_control(
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    selected: Sequence[str | HeadId],
    n_heads: int,
    max_enumerate: int = DEFAULTS["max_enumerate"],
    n_draws: int = DEFAULTS["n_draws"],
    seed: int = DEFAULTS["seed"],
    bias_correction: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Layer-matched random control of the selected set S (METHODS §6.9, §7.2).

    ``engine`` holds the evaluated images and means, with every head of the layers of S in
    its pool. For each set S′ of :func:`layer_matched_sets`: ΔV′ = V(S′) − V(∅) and Δacc′.
    Returns (draws, summary). Draws columns :data:`CONTROL_COLUMNS` (``heads`` ";"-joined).
    Summary (strict JSON; undefined values are ``None``): ``selected, per_layer, mode,
    n_possible, n_sets, v_before, v_selected, delta_v, acc_before, delta_acc, rank``
    (1 + #{ΔV′ < ΔV_S}: 1 = the largest reduction), ``p_value`` = (1 + #{ΔV′ <= ΔV_S}) / (R + 1) (one-sided), ``frac_beaten`` =
    #{ΔV′ > ΔV_S} / R, the random ΔV′ ``mean, sd, p05, p50, p95``, ``delta_acc_mean``,
    ``delta_acc_sd``, ``seed``, ``bias_correction``. Without any layer-matched set (a layer
    holds more than half of its heads in S) the statistics of the draws, ``rank`` and
    ``p_value`` are ``None``.
    """
    y = np.asarray(labels, dtype=np.int64)
    vcalc = _VCalc(attr, engine.base.shape[1])
    sets, info = layer_matched_sets(selected, n_heads, max_enumerate, n_draws, seed)
    p0 = engine.predict()
    v0, acc0 = vcalc(p0, bias_correction), _acc(p0, y)
    ps = engine.predict(selected)
    v_s, acc_s = vcalc(ps, bias_correction), _acc(ps, y)
    dv_s = v_s - v0
    rows = []
    for i, s in enumerate(sets):
        p = engine.predict(s)
        v, acc = vcalc(p, bias_correction), _acc(p, y)
        rows.append((i, ";".join(head_str(h) for h in s), v, acc, v - v0, acc - acc0))
    draws = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    dv = draws["delta_v"].to_numpy(dtype=np.float64)
    r = len(dv)
    tol = 1e-12
    summary: dict[str, Any] = {
        "selected": [head_str(parse_head(h)) for h in selected],
        "per_layer": info["per_layer"],
        "mode": info["mode"],
        "n_possible": info["n_possible"],
        "n_sets": r,
        "v_before": _f(v0),
        "v_selected": _f(v_s),
        "delta_v": _f(dv_s),
        "acc_before": _f(acc0),
        "delta_acc": _f(acc_s - acc0),
        # no layer-matched set (k_l > n_heads - k_l in some layer): rank and p undefined
        "rank": int(1 + np.sum(dv < dv_s - tol)) if r else None,
        "p_value": _f((1 + np.sum(dv <= dv_s + tol)) / (r + 1)) if r else None,
        "frac_beaten": _f(np.mean(dv > dv_s + tol)) if r else None,
        "mean": _f(dv.mean()) if r else None,
        "sd": _f(dv.std(ddof=1)) if r > 1 else None,
        "p05": _f(np.quantile(dv, 0.05)) if r else None,
        "p50": _f(np.quantile(dv, 0.5)) if r else None,
        "p95": _f(np.quantile(dv, 0.95)) if r else None,
        "delta_acc_mean": _f(draws["delta_acc"].mean()) if r else None,
        "delta_acc_sd": _f(draws["delta_acc"].std(ddof=1)) if r > 1 else None,
        "seed": int(seed),
        "bias_correction": bool(bias_correction),
    }
    return draws, summary


# ---------------------------------------------------------------------------------------------
# §6.10 single-head and class-level analysis
# ---------------------------------------------------------------------------------------------

ATTRIBUTION_COLUMNS = [
    "scope",
    "layer",
    "head",
    "head_id",
    "n",
    "delta_v_set",
    "delta_v_single",
    "share_single",
    "delta_v_loo",
    "share_loo",
    "delta_acc_single",
    "delta_acc_loo",
]


def head_attribution(
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    selected: Sequence[str | HeadId],
    class_subset: Sequence[int] | None = None,
    bias_correction: bool = False,
) -> pd.DataFrame:
    """Single-head and leave-one-out shares of ΔV of the selected set S (METHODS §6.10).

    For every h ∈ S: ΔV({h}) and ``share_single`` = ΔV({h}) / ΔV(S); ΔV(S ∖ {h}) and
    ``share_loo`` = (ΔV(S) − ΔV(S ∖ {h})) / ΔV(S) (the part of the set's reduction lost
    without h); Δacc of both. Scope ``"all"`` over every image of ``engine``; with
    ``class_subset`` also scope ``"stereotyped"``: V and accuracy over images whose true
    class is in the subset. Columns :data:`ATTRIBUTION_COLUMNS`.
    """
    y = np.asarray(labels, dtype=np.int64)
    sel = [head_str(parse_head(h)) for h in selected]
    scopes: list[tuple[str, np.ndarray | None]] = [("all", None)]
    if class_subset is not None:
        scopes.append(("stereotyped", np.isin(y, np.asarray(class_subset, dtype=np.int64))))
    p0, p_s = engine.predict(), engine.predict(sel)
    single = {h: engine.predict([h]) for h in sel}
    loo = {h: engine.predict([g for g in sel if g != h]) for h in sel}
    rows = []
    for scope, mask in scopes:
        m = np.ones(len(y), dtype=bool) if mask is None else mask
        vcalc = _VCalc(attr, engine.base.shape[1], m)
        v0, acc0 = vcalc(p0, bias_correction), _acc(p0, y, m)
        dv_s = vcalc(p_s, bias_correction) - v0
        for h in sel:
            dv1 = vcalc(single[h], bias_correction) - v0
            dvl = vcalc(loo[h], bias_correction) - v0
            with np.errstate(invalid="ignore", divide="ignore"):
                share1 = dv1 / dv_s if dv_s != 0 else math.nan
                sharel = (dv_s - dvl) / dv_s if dv_s != 0 else math.nan
            layer, hh = parse_head(h)
            rows.append(
                (
                    scope,
                    layer,
                    hh,
                    h,
                    int(m.sum()),
                    dv_s,
                    dv1,
                    share1,
                    dvl,
                    sharel,
                    _acc(single[h], y, m) - acc0,
                    _acc(loo[h], y, m) - acc0,
                )
            )
    return pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS)


STEREOTYPED_COLUMNS = [
    "class_index",
    "class_name",
    "n",
    "n_values_eligible",
    "acc_gap",
    "class_v",
    "disparity",
    "eligible",
    "rank",
    "selected",
]


def stereotyped_classes(
    pred: np.ndarray,
    labels: np.ndarray,
    attr: np.ndarray,
    n_classes: int,
    top: int = DEFAULTS["top_classes"],
    disparity: str = DEFAULTS["disparity"],
    min_per_group: int = DEFAULTS["min_per_group"],
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The most stereotyped classes (METHODS §6.10, RECON).

    Per true class, over images with a valid attribute value: ``acc_gap`` = max − min of the
    per-value accuracies among values with >= ``min_per_group`` images (|acc_a − acc_b| for
    two values), and ``class_v`` = V(pred, attr) among the class's images. A class is
    ``eligible`` with >= 2 such values. ``disparity`` (``"acc_gap"`` or ``"class_v"``) ranks
    the eligible classes (rank 1 = largest; NaN last); the first ``top`` are ``selected``.
    Columns :data:`STEREOTYPED_COLUMNS`, rows in rank order then class index.
    """
    if disparity not in ("acc_gap", "class_v"):
        raise ValueError(f"disparity must be 'acc_gap' or 'class_v', got {disparity!r}")
    p = np.asarray(pred, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    keep = a >= 0
    rows = []
    for c in np.unique(y[keep]):
        m = keep & (y == c)
        accs = []
        for v in np.unique(a[m]):
            mv = m & (a == v)
            if mv.sum() >= min_per_group:
                accs.append(float(np.mean(p[mv] == c)))
        n_el = len(accs)
        gap = max(accs) - min(accs) if n_el >= 2 else math.nan
        cv = metrics.cramers_v(p[m], a[m], n_classes=n_classes) if n_el >= 2 else math.nan
        name = str(class_names[c]) if class_names is not None else str(c)
        rows.append((int(c), name, int(m.sum()), n_el, gap, cv))
    df = pd.DataFrame(rows, columns=STEREOTYPED_COLUMNS[:6])
    df["disparity"] = df[disparity]
    df["eligible"] = df["n_values_eligible"] >= 2
    df = df.sort_values(["disparity", "class_index"], ascending=[False, True], na_position="last")
    ranks = np.where(df["eligible"] & df["disparity"].notna(), np.arange(1, len(df) + 1), 0)
    df["rank"] = pd.array([int(r) if r > 0 else pd.NA for r in ranks], dtype="Int64")
    df["selected"] = df["rank"].fillna(0).between(1, top)
    return df.reset_index(drop=True)[STEREOTYPED_COLUMNS]


TRANSITION_COLUMNS = [
    "class_index",
    "class_name",
    "n",
    "n_changed",
    "wrong_to_right",
    "right_to_wrong",
    "wrong_to_other_wrong",
    "right_unchanged",
    "wrong_unchanged",
    "share_changed_to_true",
]


def prediction_transitions(
    pred_before: np.ndarray,
    pred_after: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Prediction transitions after ablation per true class (METHODS §6.10).

    Counts wrong→right, right→wrong, wrong→other-wrong (changed to another wrong class), and
    the unchanged right / wrong images; ``share_changed_to_true`` = wrong→right / n_changed
    (the share of changed predictions that land on the true class; NaN without changes).
    One row per class in ``classes`` (default: every true class present) and a final total
    row over those classes with ``class_index`` −1 and ``class_name`` ``"all"``. Columns
    :data:`TRANSITION_COLUMNS`.
    """
    b = np.asarray(pred_before, dtype=np.int64)
    af = np.asarray(pred_after, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if not (b.shape == af.shape == y.shape):
        raise ValueError("pred_before, pred_after and labels must have the same length")
    cls = np.unique(y) if classes is None else np.asarray(classes, dtype=np.int64)

    def counts(m: np.ndarray) -> tuple[int, ...]:
        rb, ra = b[m] == y[m], af[m] == y[m]
        changed = b[m] != af[m]
        w2r = int(np.sum(~rb & ra))
        r2w = int(np.sum(rb & ~ra))
        w2w = int(np.sum(~rb & ~ra & changed))
        return (
            int(m.sum()),
            int(changed.sum()),
            w2r,
            r2w,
            w2w,
            int(np.sum(rb & ra)),
            int(np.sum(~rb & ~ra & ~changed)),
        )

    rows = []
    for c in cls:
        cnt = counts(y == c)
        name = str(class_names[c]) if class_names is not None else str(int(c))
        rows.append((int(c), name, *cnt))
    cnt = counts(np.isin(y, cls))
    rows.append((-1, "all", *cnt))
    df = pd.DataFrame(rows, columns=TRANSITION_COLUMNS[:-1])
    df["share_changed_to_true"] = df["wrong_to_right"] / df["n_changed"].replace(0, np.nan)
    return df[TRANSITION_COLUMNS]


# ---------------------------------------------------------------------------------------------
# One streamed pass over a cell: everything the audit needs from the heads
# ---------------------------------------------------------------------------------------------


@dataclass
class AuditStats:
    """What the audit of one cell needs from its head contributions (:class:`AuditAccumulator`).

    ``logits``: :class:`HeadLogits` of the candidate (terminal) layers, N·L_t·H·C float64;
    ``proj`` [N, L, H, K] float32: every stored head projected on each CAV column (METHODS
    §6.4 s_{l,h}(x) = ⟨ĉ_{l,h}(x), v⟩; K = the cell's CAVs, 1-4 per attribute, so N·L·H·K·4
    bytes: 20,000 images of ViT-L-14 with all 24 layers and 5 CAVs make 150 MB). Per
    registered row set (by the key its ``add_*`` call returned): ``means`` [L_t, H, D]
    float32 (:class:`BlockMean`), ``moments`` (:class:`clipbias.streaming.HeadMoments` of the
    terminal heads, L_t·H·D² float64 each), ``stereotype`` (sums [L_t, H], count) of
    :func:`stereotype_logit_sums`. None of these has both an image and a D axis.
    """

    logits: HeadLogits
    proj: np.ndarray
    means: list[np.ndarray]
    moments: list[Any]
    stereotype: list[tuple[np.ndarray, int]]


class AuditAccumulator:
    """Accumulates :class:`AuditStats` from the batches of one pass over a cell's N rows.

    ``layers``: the stored layers of each batch's heads [n, L, H, D]; ``terminal``: the
    candidate layers (a subset) whose class logits, means, moments and stereotype sums are
    kept; ``classifier`` [D, C]; ``cav_matrix`` [D, K] (one column per CAV). Before the
    first :meth:`update`, register the row sets (bool masks [N]; ``None`` = every row) whose
    ablation means (:meth:`add_means`), TextSpan moments (:meth:`add_moments`) and
    stereotype-logit sums (:meth:`add_stereotype`) are wanted; equal masks share one
    accumulator. Then :meth:`update` with every batch, in row order, and :meth:`finish`.

    The terminal rows of a batch give: the un-ablated logits (the embedding = the terminal
    heads + rest, rest = everything else, as the in-memory stage summed it), the per-head
    class logits, the mean sums (row after row in blocks, bit-identical to
    :func:`mean_heads`), the stereotype sums (over the batch's images that
    :func:`stereotype_selection` picks from its un-ablated predictions) and the moments
    (through a buffer of ``moment_rows`` rows, so that each Gram update is a matrix product
    of a useful size even when batches of all stored layers are small). When the moments of
    every row and of some mask M are both wanted, M and its complement are accumulated and
    merged at the end (each row is added once).
    """

    def __init__(
        self,
        n_rows: int,
        layers: Sequence[int],
        terminal: Sequence[int],
        n_heads: int,
        dim: int,
        classifier: np.ndarray,
        cav_matrix: np.ndarray,
        moment_rows: int = 256,
    ) -> None:
        self.n = int(n_rows)
        self.layers = [int(x) for x in layers]
        self.terminal = [int(x) for x in terminal]
        missing = sorted(set(self.terminal) - set(self.layers))
        if missing:
            raise ValueError(f"terminal layers {missing} are not among the stored {self.layers}")
        self._t_pos = [self.layers.index(x) for x in self.terminal]
        self._others = [i for i in range(len(self.layers)) if i not in self._t_pos]
        self.n_heads, self.dim = int(n_heads), int(dim)
        self.classifier = np.asarray(classifier, dtype=np.float64)
        self._v = np.asarray(cav_matrix).astype(np.float32)
        self.logits = HeadLogits.empty(self.n, self.terminal, self.n_heads, self.classifier)
        self.proj = np.empty((self.n, len(self.layers), self.n_heads, self._v.shape[1]), np.float32)
        self._mean_masks: list[np.ndarray] = []
        self._moment_masks: list[np.ndarray] = []
        self._stereo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._moment_rows = int(moment_rows)
        self._row = 0
        self._started = False

    def _mask(self, rows: np.ndarray | None) -> np.ndarray:
        if rows is None:
            return np.ones(self.n, dtype=bool)
        m = np.asarray(rows, dtype=bool)
        if m.shape != (self.n,):
            raise ValueError(f"row mask of shape {m.shape} for {self.n} rows")
        return m

    def _register(self, masks: list[np.ndarray], rows: np.ndarray | None) -> int:
        if self._started:
            raise RuntimeError("register row sets before the first update")
        m = self._mask(rows)
        for i, other in enumerate(masks):
            if np.array_equal(m, other):
                return i
        masks.append(m)
        return len(masks) - 1

    def add_means(self, rows: np.ndarray | None) -> int:
        """Ablation means of the terminal heads over ``rows``; returns the key."""
        return self._register(self._mean_masks, rows)

    def add_moments(self, rows: np.ndarray | None) -> int:
        """TextSpan moments of the terminal heads over ``rows``; returns the key."""
        return self._register(self._moment_masks, rows)

    def add_stereotype(self, labels: np.ndarray, attr: np.ndarray, stereo_map: np.ndarray) -> int:
        """Stereotype-logit sums over the rows :func:`stereotype_selection` picks with
        ``labels``, ``attr`` [N] (-1 outside the locate half) and ``stereo_map`` [C, V];
        returns the key."""
        if self._started:
            raise RuntimeError("register row sets before the first update")
        y = np.asarray(labels, dtype=np.int64)
        a = np.asarray(attr, dtype=np.int64)
        if y.shape != (self.n,) or a.shape != (self.n,):
            raise ValueError(f"labels and attr need {self.n} entries")
        self._stereo.append((y, a, np.asarray(stereo_map, dtype=bool)))
        return len(self._stereo) - 1

    def _start(self) -> None:
        from clipbias.streaming import HeadMoments

        self._started = True
        shape = (len(self.terminal), self.n_heads, self.dim)
        self._means = [BlockMean(shape) for _ in self._mean_masks]
        self._stereo_sums = [np.zeros(shape[:2]) for _ in self._stereo]
        self._stereo_counts = [0 for _ in self._stereo]
        # moments: accumulate each mask, except "every row" next to another mask M, which
        # becomes M's complement here and M ∪ complement in finish()
        self._acc_masks = list(self._moment_masks)
        self._merge: tuple[int, int] | None = None
        full = [bool(m.all()) for m in self._moment_masks]
        if any(full) and not all(full):
            k_all, k_base = full.index(True), full.index(False)
            self._acc_masks[k_all] = ~self._moment_masks[k_base]
            self._merge = (k_all, k_base)
        self._moments = [
            HeadMoments(self.terminal, self.n_heads, self.dim) for _ in self._acc_masks
        ]
        if self._moments:
            self._buf = np.empty((self._moment_rows, *shape), dtype=np.float32)
            self._buf_rows = np.empty(self._moment_rows, dtype=np.int64)
            self._buf_n = 0

    def update(self, heads: np.ndarray, rest: np.ndarray) -> None:
        """Add the next batch: ``heads`` [n, L, H, D] of ``layers`` and ``rest`` [n, D]
        (embedding minus those heads), float32."""
        if not self._started:
            self._start()
        heads = np.asarray(heads)
        n = heads.shape[0]
        if heads.shape[1:] != (len(self.layers), self.n_heads, self.dim):
            raise ValueError(f"batch heads {heads.shape[1:]} for layers {self.layers}")
        start = self._row
        if start + n > self.n:
            raise ValueError(f"more than the {self.n} registered rows")
        part = slice(start, start + n)
        ht = heads[:, self._t_pos]  # [n, L_t, H, D] copy
        rest_t = (rest + heads[:, self._others].sum(axis=(1, 2), dtype=np.float64)).astype(
            np.float32
        )
        self.logits.fill(start, ht, rest_t)
        self.proj[part] = np.einsum("nlhd,dk->nlhk", heads, self._v)
        for mask, bm in zip(self._mean_masks, self._means, strict=True):
            m = mask[part]
            bm.update(ht if m.all() else ht[m])
        if self._stereo:
            pred = np.argmax(self.logits.base[part], axis=1)
            for k, (y, a, smap) in enumerate(self._stereo):
                sel = stereotype_selection(pred, y[part], a[part], smap)
                if sel.any():
                    self._stereo_sums[k] += stereotype_logit_sums(
                        ht[sel], self.classifier, y[part][sel], pred[sel]
                    )
                    self._stereo_counts[k] += int(sel.sum())
        if self._moments:
            pos = 0
            while pos < n:
                take = min(self._moment_rows - self._buf_n, n - pos)
                self._buf[self._buf_n : self._buf_n + take] = ht[pos : pos + take]
                self._buf_rows[self._buf_n : self._buf_n + take] = np.arange(take) + start + pos
                self._buf_n += take
                pos += take
                if self._buf_n == self._moment_rows:
                    self._flush()
        self._row += n

    def _flush(self) -> None:
        rows, x = self._buf_rows[: self._buf_n], self._buf[: self._buf_n]
        for mask, mom in zip(self._acc_masks, self._moments, strict=True):
            m = mask[rows]
            if m.all():
                mom.update(x)
            elif m.any():
                mom.update(x[m])
        self._buf_n = 0

    def finish(self) -> AuditStats:
        """The statistics, after every row was added."""
        if not self._started:
            self._start()
        if self._row != self.n:
            raise ValueError(f"{self._row} rows were added, expected {self.n}")
        if self._moments:
            self._flush()
            del self._buf, self._buf_rows
            if self._merge is not None:
                k_all, k_base = self._merge
                self._moments[k_all].add(self._moments[k_base])
        return AuditStats(
            self.logits,
            self.proj,
            [bm.mean() for bm in self._means],
            self._moments,
            list(zip(self._stereo_sums, self._stereo_counts, strict=True)),
        )


# ---------------------------------------------------------------------------------------------
# The whole audit for one protected attribute
# ---------------------------------------------------------------------------------------------


def _with_attribute(df: pd.DataFrame, attribute: str) -> pd.DataFrame:
    df = df.copy()
    if "attribute" in df.columns:
        df = df.drop(columns="attribute")
    df.insert(0, "attribute", attribute)
    return df


def _halves(is_locate: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(locate, evaluate) masks [n]; both all-True for the single pool (``None``)."""
    if is_locate is None:
        loc = np.ones(n, dtype=bool)
        return loc, loc
    loc = np.asarray(is_locate, dtype=bool)
    ev = ~loc
    if loc.shape != (n,) or not loc.any() or not ev.any():
        raise ValueError("is_locate must mark a non-empty locate half and evaluate half")
    return loc, ev


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
    is_locate: np.ndarray | None = None,
    proj: Mapping[str, np.ndarray] | None = None,
    proj_layers: Sequence[int] | None = None,
    transductive: bool = True,
    stereotype_score: bool = True,
    stereotype_min_lift: float = DEFAULTS["stereotype_min_lift"],
    **options: Any,
) -> dict[str, Any]:
    """The mechanistic fairness audit of one protected attribute (METHODS §6.4-6.10) on an
    in-memory decomposition: ``heads`` [N, L, H, D] of ``layers``, ``rest`` [N, D],
    ``classifier`` [D, C]. Computes the statistics :func:`audit_attribute_stats` needs (class
    logits, ablation means, CAV projections unless ``proj`` / ``proj_layers`` give them,
    stereotype-logit sums) and runs it; ``options`` are its remaining keyword arguments
    (``attribute``, ``bias_stats``, ``k``, ``seed``, ...). The streamed stage accumulates
    the same statistics batch by batch (:class:`AuditAccumulator`).
    """
    heads = np.asarray(heads)
    rest = np.asarray(rest)
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got {heads.shape}")
    n = heads.shape[0]
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != (n,) or a.shape != (n,) or rest.shape[0] != n:
        raise ValueError("labels, attr and rest need one entry per image of heads")
    loc, ev = _halves(is_locate, n)
    logits = HeadLogits.from_heads(heads, rest, classifier, layers)
    means = {"locate": mean_heads(heads, loc)}
    if transductive and is_locate is not None:
        means["evaluate"] = mean_heads(heads, ev)
    if proj is None:
        proj = {c.name: head_projections(heads, c.vector) for c in cavs}
        proj_layers = layers
    elif proj_layers is None:
        raise ValueError("proj needs proj_layers")
    stereotype = None
    if stereotype_score:
        a_only_loc = np.where(loc, a, -1)  # the evaluate half masked out
        stereo_map = stereotyped_class_map(y, a_only_loc, logits.n_classes, stereotype_min_lift)
        pred = np.argmax(logits.base, axis=1)
        sel = stereotype_selection(pred, y, a_only_loc, stereo_map)
        sums = stereotype_logit_sums(heads[sel], classifier, y[sel], pred[sel])
        stereotype = (sums, int(sel.sum()))
    return audit_attribute_stats(
        logits, y, a, cavs, value_names, means=means, proj=proj, proj_layers=proj_layers,
        stereotype=stereotype, is_locate=is_locate, transductive=transductive,
        stereotype_score=stereotype_score, stereotype_min_lift=stereotype_min_lift, **options,
    )  # fmt: skip


def audit_attribute_stats(
    logits: HeadLogits,
    labels: np.ndarray,
    attr: np.ndarray,
    cavs: Sequence[CAV],
    value_names: Sequence[str],
    *,
    means: Mapping[str, np.ndarray],
    proj: Mapping[str, np.ndarray],
    proj_layers: Sequence[int],
    stereotype: tuple[np.ndarray, int] | None = None,
    attribute: str = "attribute",
    is_locate: np.ndarray | None = None,
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
    """The mechanistic fairness audit of one protected attribute (METHODS §6.4-6.10) from
    statistics of the heads instead of the heads: what the streamed stage accumulates
    (:class:`AuditAccumulator`); :func:`audit_attribute` computes them from in-memory heads.

    Inputs: ``logits`` (:class:`HeadLogits`: un-ablated and per-head class logits of the
    candidate layers, every image), true ``labels``, attribute codes ``attr`` (-1 =
    excluded), the attribute's CAVs (:func:`zero_shot_cavs`) and ``value_names`` (names of
    the codes 0, 1, ..., matching the CAVs' value names). ``is_locate`` marks the locate half
    (:func:`locate_evaluate_split`, or the dataset's own split); ``None`` = single pool (locate
    and evaluate on the same images, as the paper appears to do). ``means``: the ablation
    means [L, H, D] float32 (:func:`mean_heads`) of the heads of ``logits`` over the locate
    half (``"locate"``; every image for the single pool) and, for the transductive
    conditions, over the evaluate half (``"evaluate"``). ``proj``: head projections
    {cav name: [N, L', H]} over ``proj_layers`` (e.g. all 24 layers while ``logits`` holds
    only the last ones). ``stereotype``: (Σ ⟨ĉ_{l,h}, t̂_pred − t̂_y⟩ [L, H], count) over the
    images :func:`stereotype_selection` picks with the un-ablated predictions, ``attr``
    restricted to the locate half and :func:`stereotyped_class_map` of it
    (:func:`stereotype_logit_sums`); needed with ``stereotype_score``. ``bias_stats`` is the
    bias-augmented TextSpan table (:func:`bias_head_stats`) or ``None``.

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
    n, n_heads = logits.n, logits.n_heads
    layers = list(logits.layers)
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != (n,) or a.shape != (n,):
        raise ValueError("labels and attr need one entry per image of the logits")
    n_classes = logits.n_classes
    loc, ev = _halves(is_locate, n)
    single_pool = is_locate is None
    if stereotype_score and stereotype is None:
        raise ValueError("stereotype_score needs the summed stereotype logits (stereotype=)")
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
        if cav.name not in proj:
            raise ValueError(f"proj has no projections for CAV {cav.name!r}")
        p_cav, p_layers = np.asarray(proj[cav.name])[loc], proj_layers
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
    mean_loc = logits.mean_logits(means["locate"])
    top = select_top_k(ranking, k)
    eng_loc = LogitDeltas(logits, candidates, mean_loc, rows=loc)
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
    eng_ev = eng_loc if single_pool else LogitDeltas(logits, candidates, mean_loc, rows=ev)
    preds = {"baseline": eng_ev.predict()}
    preds.update({name: eng_ev.predict(s) for name, s in sets.items()})
    if transductive and not single_pool:
        union = list(dict.fromkeys(h for s in sets.values() for h in s))
        if "evaluate" not in means:
            raise ValueError("the transductive conditions need means['evaluate']")
        mean_ev = logits.mean_logits(means["evaluate"])
        eng_tr = LogitDeltas(logits, union, mean_ev, rows=ev)
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
        stereo_logit = stereotype_logit_table(*stereotype, layers)

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


def combine_audits(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge :func:`audit_attribute` results of several protected attributes: DataFrames are
    concatenated (they all lead with ``attribute``), the JSON parts are keyed by attribute:
    ``{"selection": {attr: ...}, "cavs": {attr: [...]}, "random_control": {attr: {...}}}``."""
    if not results:
        raise ValueError("no audit results to combine")
    out: dict[str, Any] = {}
    json_keys = ("selection", "cavs", "random_control")
    for key in json_keys:
        out[key] = {r["selection"]["attribute"]: r[key] for r in results}
    for key in results[0]:
        if key in json_keys:
            continue
        frames = [r[key] for r in results if r.get(key) is not None]
        out[key] = pd.concat(frames, ignore_index=True) if frames else None
    return out
