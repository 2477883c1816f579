"""Zero-shot CAVs and the per-head CAV scores (METHODS §6.4).

* :func:`zero_shot_cavs`: φ_v per attribute value from its concept texts
  (:func:`concept_means`), the axis CAV and the one-vs-rest CAVs;
* :func:`head_projections`: s_{l,h}(x) = ⟨ĉ_{l,h}(x), v⟩;
* :func:`cav_head_scores`: standardised mean difference and AUC of the projections between
  attribute groups, over all images and within true classes; :func:`cav_score_table` runs it
  for every CAV of an attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..heads import head_str
from .params import DEFAULTS

log = logging.getLogger(__name__)


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


def cav_score_table(
    cavs: Sequence[CAV],
    proj: Mapping[str, np.ndarray],
    proj_layers: Sequence[int],
    attr: np.ndarray,
    labels: np.ndarray,
    value_names: Sequence[str],
    rows: np.ndarray,
    min_per_group: int = DEFAULTS["min_per_group"],
) -> pd.DataFrame:
    """:func:`cav_head_scores` of every CAV of one attribute over the images ``rows`` (bool
    mask [N]), concatenated (column ``cav``).

    ``proj``: {CAV name: projections [N, L, H]} over ``proj_layers``; ``attr`` [N] codes
    0, 1, ... name the values ``value_names`` (the CAVs' value names), -1 = excluded."""
    attr, labels = np.asarray(attr)[rows], np.asarray(labels)[rows]
    codes = {str(v): i for i, v in enumerate(value_names)}
    frames = []
    for cav in cavs:
        if cav.name not in proj:
            raise ValueError(f"proj has no projections for CAV {cav.name!r}")
        pos_neg = []
        for names in (cav.positive, cav.negative):
            missing = [v for v in names if v not in codes]
            if missing:
                raise ValueError(
                    f"CAV {cav.name}: value(s) {missing} are not among value_names {list(codes)}"
                )
            pos_neg.append([codes[v] for v in names])
        frames.append(
            cav_head_scores(
                np.asarray(proj[cav.name])[rows],
                proj_layers,
                attr,
                labels,
                *pos_neg,
                min_per_group,
                cav.name,
            )  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True)
