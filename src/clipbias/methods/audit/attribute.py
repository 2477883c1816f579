"""The audit of one protected attribute (METHODS §6.4-6.10), from the statistics of
:mod:`.stream` (:func:`audit_attribute_stats`) or from in-memory heads
(:func:`audit_attribute`): CAV scores, ranking and selection, ablation on the evaluate half,
outcome tables, the layer-matched control and the class-level analysis, in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .ablation import HeadLogits, LogitDeltas, mean_heads
from .cav import CAV, cav_score_table, head_projections
from .classes import attribution_table, stereotyped_classes, transition_table
from .control import control_tables
from .outcome import outcome_tables
from .params import DEFAULT_SEED, DEFAULTS, attribute_options
from .ranking import GREEDY_COLUMNS, greedy_select, rank_heads, select_top_k
from .split import halves
from .stereotype import stereotype_logit_table, stereotype_sums

log = logging.getLogger(__name__)

#: The options recorded in the selection's ``params`` (JSON), in this order.
RECORDED = (
    "min_per_group", "flagged_first", "greedy_min_drop", "greedy_max_acc_drop", "means",
    "transductive", "max_enumerate", "n_draws", "n_boot", "top_classes", "disparity",
    "stereotype_split", "stereotype_min_lift", "seed", "bias_correction",
)  # fmt: skip
#: The sensitivity row of the default ranking: the combined ranking's top-k (METHODS §6.6).
SENSITIVITY = "top_k_combined"


def audit_attribute(
    heads: np.ndarray, rest: np.ndarray, classifier: np.ndarray, layers: Sequence[int],
    labels: np.ndarray, attr: np.ndarray, cavs: Sequence[CAV], value_names: Sequence[str], *,
    is_locate: np.ndarray | None = None, proj: Mapping[str, np.ndarray] | None = None,
    proj_layers: Sequence[int] | None = None, **options: Any,
) -> dict[str, Any]:  # fmt: skip
    """:func:`audit_attribute_stats` on an in-memory decomposition: ``heads`` [N, L, H, D] of
    ``layers``, ``rest`` [N, D], ``classifier`` [D, C]. Computes the statistics it needs
    (class logits, ablation means, CAV projections unless ``proj`` / ``proj_layers`` give
    them, stereotype-logit sums) as the streamed stage accumulates them batch by batch
    (:class:`~clipbias.methods.audit.stream.AuditAccumulator`); ``options`` are its keyword
    arguments (``attribute``, ``bias_stats``, ``k``, ``seed``, ...)."""
    heads, rest = np.asarray(heads), np.asarray(rest)
    if heads.ndim != 4:
        raise ValueError(f"heads must be [N, L, H, D], got {heads.shape}")
    n = heads.shape[0]
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != (n,) or a.shape != (n,) or rest.shape[0] != n:
        raise ValueError("labels, attr and rest need one entry per image of heads")
    loc, ev = halves(is_locate, n)
    logits = HeadLogits.from_heads(heads, rest, classifier, layers)
    means = {"locate": mean_heads(heads, loc)}
    if options.get("transductive", DEFAULTS["transductive"]) and is_locate is not None:
        means["evaluate"] = mean_heads(heads, ev)
    if proj is None:
        proj = {c.name: head_projections(heads, c.vector) for c in cavs}
        proj_layers = layers
    elif proj_layers is None:
        raise ValueError("proj needs proj_layers")
    stereotype = None
    if options.get("stereotype_score", DEFAULTS["stereotype_score"]):
        lift = options.get("stereotype_min_lift", DEFAULTS["stereotype_min_lift"])
        pred = np.argmax(logits.base, axis=1)
        stereotype = stereotype_sums(heads, classifier, y, np.where(loc, a, -1), pred, lift)
    return audit_attribute_stats(
        logits, y, a, cavs, value_names, means=means, proj=proj, proj_layers=proj_layers,
        stereotype=stereotype, is_locate=is_locate, **options,
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
    seed: int = DEFAULT_SEED,
    **options: Any,
) -> dict[str, Any]:
    """The mechanistic fairness audit of one protected attribute (METHODS §6.4-6.10) from
    statistics of the heads instead of the heads (:class:`~.stream.AuditStats`).

    Inputs: ``logits`` (:class:`~.ablation.HeadLogits` of the candidate layers, every
    image), true ``labels``, attribute codes ``attr`` (-1 = excluded), the attribute's CAVs
    (:func:`~.cav.zero_shot_cavs`) and ``value_names`` (names of the codes 0, 1, ...).
    ``is_locate`` marks the locate half (:func:`~.split.locate_evaluate_split`, or the
    dataset's own split); ``None`` = single pool (locate and evaluate on the same images).
    ``means``: ablation means [L, H, D] of the heads of ``logits`` over the locate half
    (``"locate"``; every image for the single pool) and, for the transductive conditions,
    the evaluate half (``"evaluate"``). ``proj``: head projections {CAV name: [N, L', H]}
    over ``proj_layers``. ``stereotype``: the stereotype-logit sums and count of the locate
    half (:mod:`.stereotype`), needed with ``stereotype_score``. ``bias_stats``: the
    bias-augmented TextSpan statistics (:func:`~.textspan_bias.bias_head_stats`) or
    ``None``. ``options``: the audit options (:data:`~.params.DEFAULTS`: ``ranking``,
    ``k``, ``greedy``, ``n_boot``, ...).

    Steps: CAV scores of every CAV on the locate half; the ranking by ``rank_cav`` (default
    the first CAV, the axis) and ``ranking``; top-``k`` and greedy sets (locate half, locate
    means); ablation on the evaluate half with locate means (with ``transductive`` also
    evaluate means, conditions ``*_transductive``); ΔV bootstrap; the layer-matched control
    of each set; most stereotyped classes on the ``stereotype_split`` half; attribution and
    prediction transitions on the evaluate half. With ``ranking="cav"`` and TextSpan
    statistics, the combined ranking's top-k is evaluated beside it as the sensitivity
    condition :data:`SENSITIVITY` (outcome, ΔV, control; not used for attribution).

    Returns ``"selection"`` (JSON: ranking, heads, parameters, split sizes), ``"cavs"``,
    ``"random_control"`` ({set: :func:`~.control.random_control` summary}) and DataFrames
    with a leading ``attribute`` column: ``head_scores`` (:data:`~.cav.SCORE_COLUMNS`),
    ``stereotype_logit`` (or None), ``ranking``, ``greedy_trace``, ``outcome``,
    ``per_class``, ``delta_v`` (:mod:`.outcome`), ``random_draws`` (``set`` + control
    columns), ``attribution``, ``stereotyped_classes``, ``transitions`` (:mod:`.classes`).
    """
    o = attribute_options(options)
    n, n_classes = logits.n, logits.n_classes
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != (n,) or a.shape != (n,):
        raise ValueError("labels and attr need one entry per image of the logits")
    loc, ev = halves(is_locate, n)
    single_pool = is_locate is None
    if o["stereotype_score"] and stereotype is None:
        raise ValueError("stereotype_score needs the summed stereotype logits (stereotype=)")
    if not cavs:
        raise ValueError("no CAVs given (see zero_shot_cavs)")
    y_loc, a_loc, y_ev, a_ev = y[loc], a[loc], y[ev], a[ev]
    scores = cav_score_table(cavs, proj, proj_layers, a, y, value_names, loc, o["min_per_group"])
    rank_cav = cavs[0].name if rank_cav is None else rank_cav

    # §6.6 ranking and selection on the locate half
    by_cav = scores[scores["cav"] == rank_cav]
    rank_args = (by_cav, bias_stats, logits.layers, o["terminal_layers"], n_layers, None)
    rank_kw = {"cav_score": o["cav_score"], "flagged_first": o["flagged_first"]}
    ranking = rank_heads(*rank_args, ranking=o["ranking"], **rank_kw)
    candidates = ranking.loc[ranking["candidate"], "head_id"].tolist()
    mean_loc = logits.mean_logits(means["locate"])
    eng_loc = LogitDeltas(logits, candidates, mean_loc, rows=loc)
    sets = {"top_k": select_top_k(ranking, o["k"])}
    greedy_heads, trace = [], pd.DataFrame(columns=GREEDY_COLUMNS)
    if o["greedy"]:
        greedy_heads, trace = greedy_select(
            ranking, eng_loc, y_loc, a_loc, o["greedy_min_drop"], o["greedy_max_acc_drop"],
            o["greedy_max_k"], o["bias_correction"],
        )  # fmt: skip
    if greedy_heads:
        sets["greedy"] = greedy_heads
    extra = {}
    if o["ranking"] == "cav" and bias_stats is not None:
        extra[SENSITIVITY] = select_top_k(rank_heads(*rank_args, ranking="combined", **rank_kw),
                                          o["k"])  # fmt: skip

    # §6.7 ablation on the evaluate half with locate means (and transductive means)
    eng_ev = eng_loc if single_pool else LogitDeltas(logits, candidates, mean_loc, rows=ev)
    preds = {"baseline": eng_ev.predict()}
    preds.update({name: eng_ev.predict(s) for name, s in sets.items()})
    transductive = o["transductive"] and not single_pool
    if transductive:
        if "evaluate" not in means:
            raise ValueError("the transductive conditions need means['evaluate']")
        union = list(dict.fromkeys(h for s in sets.values() for h in s))
        mean_ev = logits.mean_logits(means["evaluate"])
        eng_tr = LogitDeltas(logits, union, mean_ev, rows=ev)
        preds.update({f"{name}_transductive": eng_tr.predict(s) for name, s in sets.items()})
    preds.update({name: eng_ev.predict(s) for name, s in extra.items()})
    outcome, per_class, delta = outcome_tables(
        preds, y_ev, attribute, a_ev, value_names, n_classes, class_names, o["n_boot"], seed,
        o["bias_correction"],
    )  # fmt: skip
    control, random_draws = control_tables(
        eng_ev, y_ev, a_ev, {**sets, **extra}, logits.n_heads, o["max_enumerate"],
        o["n_draws"], seed, o["bias_correction"],
    )  # fmt: skip

    # §6.10 most stereotyped classes, attribution, transitions
    if o["stereotype_split"] not in ("locate", "evaluate"):
        raise ValueError(
            f"stereotype_split must be 'locate' or 'evaluate', got {o['stereotype_split']!r}"
        )
    on_loc = o["stereotype_split"] == "locate"
    stereo = stereotyped_classes(
        eng_loc.predict() if on_loc else preds["baseline"], y_loc if on_loc else y_ev,
        a_loc if on_loc else a_ev, n_classes, o["top_classes"], o["disparity"],
        o["min_per_group"], class_names,
    )  # fmt: skip
    top_cls = stereo.loc[stereo["selected"], "class_index"].astype(int).tolist()
    attribution = attribution_table(eng_ev, y_ev, a_ev, sets, top_cls or None, o["bias_correction"])
    after = {c: p for c, p in preds.items() if c != "baseline"}
    transitions = transition_table(preds["baseline"], after, y_ev, top_cls, class_names)
    stereo_logit = (
        stereotype_logit_table(*stereotype, logits.layers) if o["stereotype_score"] else None
    )

    selection = {
        "attribute": attribute,
        "ranking": o["ranking"],
        "rank_cav": rank_cav,
        "cav_score": o["cav_score"],
        "k": int(o["k"]),
        "top_k": list(sets["top_k"]),
        "greedy": list(greedy_heads),
        "greedy_k": len(greedy_heads),
        **{name: list(s) for name, s in extra.items()},
        "terminal_layers": int(o["terminal_layers"]),
        "n_candidates": len(candidates),
        "textspan_flagged": [] if bias_stats is None else flagged_heads(bias_stats),
        "stereotyped_classes": top_cls,
        "split": {
            "single_pool": single_pool,
            "n_locate": int(loc.sum()),
            "n_evaluate": int(ev.sum()),
        },
        "params": recorded_params({**o, "seed": seed, "transductive": transductive}),
    }
    log.info(
        "audit %s (%s ranking): top-%d %s, greedy %s; ΔV(top_k) = %s (p = %s)",
        attribute, o["ranking"], o["k"], sets["top_k"], greedy_heads,
        control["top_k"]["delta_v"], control["top_k"]["p_value"],
    )  # fmt: skip
    tables = {
        "head_scores": scores, "stereotype_logit": stereo_logit, "ranking": ranking,
        "greedy_trace": trace, "outcome": outcome, "per_class": per_class, "delta_v": delta,
        "random_draws": random_draws, "attribution": attribution,
        "stereotyped_classes": stereo, "transitions": transitions,
    }  # fmt: skip
    return {
        "selection": selection,
        "cavs": [c.to_dict() for c in cavs],
        "random_control": control,
        **{k: None if df is None else with_attribute(df, attribute) for k, df in tables.items()},
    }


def flagged_heads(bias_stats: pd.DataFrame) -> list[str]:
    """The TextSpan-flagged heads of a bias statistics table, in its order."""
    return bias_stats.loc[bias_stats["flagged"].astype(bool), "head_id"].tolist()


def recorded_params(options: Mapping[str, Any]) -> dict[str, Any]:
    """The selection's ``params``: :data:`RECORDED` of ``options`` as plain JSON values (the
    type of each default; ``means`` is always ``"locate"``)."""
    plain = {"means": "locate", "seed": int(options["seed"])}
    return {k: plain[k] if k in plain else type(DEFAULTS[k])(options[k]) for k in RECORDED}


def with_attribute(df: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """``df`` with a leading ``attribute`` column."""
    df = df.drop(columns="attribute", errors="ignore")
    df.insert(0, "attribute", attribute)
    return df
