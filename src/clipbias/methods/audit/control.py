"""The layer-matched random control (METHODS §6.9, §7.2): random head sets with the same number
of heads per layer as the selected set (:func:`layer_matched_sets`; enumerated when few, else
seeded draws), their ΔV and Δaccuracy, and the rank and one-sided p-value of the selected set
(:func:`random_control`).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..heads import HeadId, head_str, parse_head
from .ablation import LogitDeltas, VCalc, accuracy
from .params import DEFAULT_SEED, DEFAULTS

log = logging.getLogger(__name__)


def json_float(x: Any) -> float | None:
    """Plain float for the JSON parts; NaN (undefined) becomes ``None`` (JSON ``null``)."""
    x = float(x)
    return None if math.isnan(x) else x


def layer_matched_sets(
    selected: Iterable[str | HeadId],
    n_heads: int,
    max_enumerate: int = DEFAULTS["max_enumerate"],
    n_draws: int = DEFAULTS["n_draws"],
    seed: int = DEFAULT_SEED,
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
    seed: int = DEFAULT_SEED,
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
    vcalc = VCalc(attr, engine.base.shape[1])
    sets, info = layer_matched_sets(selected, n_heads, max_enumerate, n_draws, seed)
    p0 = engine.predict()
    v0, acc0 = vcalc(p0, bias_correction), accuracy(p0, y)
    ps = engine.predict(selected)
    v_s, acc_s = vcalc(ps, bias_correction), accuracy(ps, y)
    dv_s = v_s - v0
    rows = []
    for i, s in enumerate(sets):
        p = engine.predict(s)
        v, acc = vcalc(p, bias_correction), accuracy(p, y)
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
        "v_before": json_float(v0),
        "v_selected": json_float(v_s),
        "delta_v": json_float(dv_s),
        "acc_before": json_float(acc0),
        "delta_acc": json_float(acc_s - acc0),
        # no layer-matched set (k_l > n_heads - k_l in some layer): rank and p undefined
        "rank": int(1 + np.sum(dv < dv_s - tol)) if r else None,
        "p_value": json_float((1 + np.sum(dv <= dv_s + tol)) / (r + 1)) if r else None,
        "frac_beaten": json_float(np.mean(dv > dv_s + tol)) if r else None,
        "mean": json_float(dv.mean()) if r else None,
        "sd": json_float(dv.std(ddof=1)) if r > 1 else None,
        "p05": json_float(np.quantile(dv, 0.05)) if r else None,
        "p50": json_float(np.quantile(dv, 0.5)) if r else None,
        "p95": json_float(np.quantile(dv, 0.95)) if r else None,
        "delta_acc_mean": json_float(draws["delta_acc"].mean()) if r else None,
        "delta_acc_sd": json_float(draws["delta_acc"].std(ddof=1)) if r > 1 else None,
        "seed": int(seed),
        "bias_correction": bool(bias_correction),
    }
    return draws, summary


def control_tables(
    engine: LogitDeltas,
    labels: np.ndarray,
    attr: np.ndarray,
    sets: dict[str, Sequence[str | HeadId]],
    n_heads: int,
    max_enumerate: int = DEFAULTS["max_enumerate"],
    n_draws: int = DEFAULTS["n_draws"],
    seed: int = DEFAULT_SEED,
    bias_correction: bool = DEFAULTS["bias_correction"],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`random_control` of every named head set: ({name: summary}, the draws with a
    leading ``set`` column). A ``greedy`` set equal to the ``top_k`` set is not run again."""
    summaries: dict[str, Any] = {}
    frames = []
    for name, heads in sets.items():
        if name == "greedy" and set(heads) == set(sets["top_k"]):
            continue
        draws, summaries[name] = random_control(
            engine, labels, attr, heads, n_heads, max_enumerate, n_draws, seed, bias_correction
        )
        frames.append(draws.assign(set=name)[["set", *CONTROL_COLUMNS]])
    return summaries, pd.concat(frames, ignore_index=True)
