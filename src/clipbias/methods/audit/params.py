"""Parameters of the fairness audit (METHODS §6): the one place their defaults are written.

:data:`DEFAULTS` is the config's ``audit:`` block with every key at its default (the METHODS
value of each reconstructed choice). The stage (:func:`resolve_params`) and the keyword
defaults of every audit function read it; the schema (``workflow/schemas/config.schema.yaml``)
repeats the values because JSON Schema needs them for validation and ``config/README.md``, and
``tests/unit/test_audit_params.py`` checks that the schema, this module, the functions and
the shipped configs agree.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: Head rankings (METHODS §6.6): ``cav`` = |within-class CAV d| alone (item 5, the default);
#: ``combined`` = mean of the CAV rank and the bias-share rank, TextSpan-flagged heads first
#: (item 2; with ``cav`` it is reported as a sensitivity row).
RANKINGS = ("cav", "combined")

#: The ``audit:`` config block's defaults (METHODS §3.7, §6).
DEFAULTS: dict[str, Any] = {
    "ranking": "cav",  # §6.6 item 5
    "k": 4,  # §6.6 top-k heads (paper: four heads for gender)
    "terminal_layers": 4,  # §6.6 selection among the last 4 layers
    "cav_score": "abs_d_within",  # §6.4 / §6.6 CAV ranking statistic
    "flagged_first": True,  # §6.6 item 2 (combined ranking): TextSpan-flagged heads first
    "min_per_group": 10,  # §6.4 within-class scores: >= 10 of each value per class
    "greedy": True,  # §6.6 step 3 [REC]: also choose k greedily on the locate half
    "greedy_min_drop": 0.002,  # greedy k: V must drop by >= 0.002 per added head
    "greedy_max_acc_drop": 0.005,  # greedy k: accuracy may fall by <= 0.5 pp
    "greedy_max_k": None,  # greedy k: no upper bound
    "transductive": True,  # §6.7: also means over the evaluated images
    "single_pool": True,  # §6.1: also select and evaluate on locate ∪ test
    "locate_fraction": 0.5,  # §6.1 stratified 50/50 locate / evaluate split
    "max_enumerate": 10_000,  # §6.9 enumerate all layer-matched sets up to this count
    "n_draws": 1_000,  # §6.9 otherwise this many seeded draws
    "n_boot": 2_000,  # §7.2 bootstrap resamples
    "top_classes": 5,  # §6.10 most stereotyped classes
    "disparity": "acc_gap",  # §6.10 class disparity: |acc_a - acc_b| (or "class_v")
    "stereotype_split": "locate",  # §6.10 half on which the stereotyped classes are chosen
    "stereotype_score": True,  # §6.4 per-head stereotype-logit score (optional)
    "stereotype_min_lift": 1.0,  # §6.4 stereotyped class: value over-represented (lift > 1)
    "bias_correction": False,  # §6.8 selection and control on V, not Bergsma's V
    "min_concept_texts": 5,  # §6.4 concept texts per attribute value
    "min_bias_texts": 20,  # §3.7 bias texts per attribute
    "textspan": {  # §3.7 / §6.5 bias-augmented TextSpan
        "enabled": True,
        "m": 60,  # texts per head
        "rank": None,  # head subspace rank; None = head dim + 2
        "top_k": 10,  # bias texts among the top 10
        "first_rank_max": 5,  # flag: first bias text within the top 5
        "share_quantile": 0.95,  # flag: bias share above the 95th percentile
    },
}
#: The grid's default seed (``seeds`` in config/config.yaml): split, bootstraps, controls.
DEFAULT_SEED = 42

#: Keys read only by rule ``encode_audit_texts`` (validation of the text file).
TEXT_KEYS = ("min_concept_texts", "min_bias_texts")
#: Keys the stage uses itself; the others are keyword arguments of
#: :func:`clipbias.methods.audit.attribute.audit_attribute_stats` (:func:`attribute_options`).
STAGE_KEYS = ("single_pool", "locate_fraction", "textspan")


def resolve_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The analysis parameters: :data:`DEFAULTS` without :data:`TEXT_KEYS`, updated by
    ``params`` (the config's ``audit:`` block; its text keys are ignored here). Unknown keys
    and an unknown ``ranking`` are errors."""
    out = {k: copy.deepcopy(v) for k, v in DEFAULTS.items() if k not in TEXT_KEYS}
    for key, value in (params or {}).items():
        if key in TEXT_KEYS:
            continue
        if key not in out:
            raise ValueError(f"audit: unknown parameter {key!r}; known: {sorted(out)}")
        if key == "textspan":
            bad = sorted(set(value or {}) - set(out["textspan"]))
            if bad:
                raise ValueError(
                    f"audit.textspan: unknown key(s) {bad}; known: {sorted(out['textspan'])}"
                )
            out["textspan"].update(value or {})
        else:
            out[key] = value
    check_ranking(out["ranking"])
    return out


def check_ranking(ranking: str) -> None:
    if ranking not in RANKINGS:
        raise ValueError(f"audit.ranking must be one of {list(RANKINGS)}, got {ranking!r}")


def attribute_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The options of one attribute's audit among ``params`` (every key but the stage's and
    the text keys), defaults filled in: the keyword arguments ``audit_attribute_stats`` takes.
    Unknown keys are errors."""
    known = {k: v for k, v in DEFAULTS.items() if k not in STAGE_KEYS and k not in TEXT_KEYS}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown audit option(s) {unknown}; known: {sorted(known)}")
    out = {**known, **{k: params[k] for k in known if k in params}}
    check_ranking(out["ranking"])
    return out
