"""Mechanistic fairness audit on stored head decompositions (METHODS §6; arXiv 2603.11793).

The audit paper names its ingredients (projected decomposition, zero-shot CAVs, bias-augmented
TextSpan, mean ablation, Cramér's V, a layer-matched random control, single-head and
class-level analysis) but not their details; everything marked RECON in METHODS §6 is a
parameter whose default is the METHODS value (:data:`.params.DEFAULTS`, the only place the
defaults are written).

One module per step, in pipeline order:

| module | step |
|---|---|
| :mod:`.params` | the ``audit:`` parameters and their defaults |
| :mod:`.texts` | concept and bias texts (§6.4, §3.7), attribute value codes |
| :mod:`.split` | locate / evaluate halves (§6.1) |
| :mod:`.cav` | zero-shot CAVs and the per-head CAV scores (§6.4) |
| :mod:`.stereotype` | the per-head stereotype-logit score (§6.4, optional) |
| :mod:`.textspan_bias` | bias-augmented TextSpan statistics (§3.7, §6.5) |
| :mod:`.ranking` | ranking (``cav`` or ``combined``), top-k and greedy selection (§6.6) |
| :mod:`.ablation` | mean ablation in logit space, Cramér's V of the predictions (§6.7-6.8) |
| :mod:`.outcome` | outcome tables: V, accuracy, ΔV bootstrap, per-class accuracy (§6.7-6.8) |
| :mod:`.control` | the layer-matched random control (§6.9) |
| :mod:`.classes` | single-head attribution, stereotyped classes, transitions (§6.10) |
| :mod:`.stream` | the statistics of one streamed pass over a cell (``AuditAccumulator``) |
| :mod:`.attribute` | the audit of one protected attribute (``audit_attribute_stats``) |

Array conventions as in :mod:`clipbias.methods`: ``heads [N, L, H, D]`` of the stored layers
``layers``, ``rest [N, D]``, ``classifier [D, C]``; attribute codes are int indices into the
dataset's value list, ``-1`` = unknown / excluded (left out of every attribute statistic).
Mean ablation is a direct-path intervention on the stored contributions (METHODS §1.3). The
stage that runs the audit of a grid cell is :mod:`clipbias.stages.audit`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The public names of the submodules, importable from the package (loaded on first use, so
#: that ``clipbias.methods.audit.params`` stays light for the workflow).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "ablation": (
        "BlockMean",
        "HeadLogits",
        "LogitDeltas",
        "VCalc",
        "accuracy",
        "mean_heads",
    ),
    "attribute": (
        "SENSITIVITY",
        "audit_attribute",
        "audit_attribute_stats",
        "with_attribute",
    ),
    "textspan_bias": (
        "augmented_pool",
        "bias_head_stats",
        "bias_textspan",
        "bias_textspan_from_moments",
    ),
    "cav": (
        "CAV",
        "SCORE_COLUMNS",
        "cav_head_scores",
        "cav_score_table",
        "concept_means",
        "head_projections",
        "zero_shot_cavs",
    ),
    "classes": (
        "ATTRIBUTION_COLUMNS",
        "STEREOTYPED_COLUMNS",
        "TRANSITION_COLUMNS",
        "attribution_table",
        "head_attribution",
        "prediction_transitions",
        "stereotyped_classes",
        "transition_table",
    ),
    "control": (
        "CONTROL_COLUMNS",
        "control_tables",
        "layer_matched_sets",
        "random_control",
    ),
    "outcome": (
        "DELTA_COLUMNS",
        "OUTCOME_COLUMNS",
        "PER_CLASS_COLUMNS",
        "delta_v_table",
        "outcome_summary",
        "outcome_tables",
        "per_class_accuracy",
    ),
    "params": (
        "DEFAULT_SEED",
        "DEFAULTS",
        "RANKINGS",
        "attribute_options",
        "resolve_params",
    ),
    "ranking": (
        "GREEDY_COLUMNS",
        "RANK_COLUMNS",
        "greedy_select",
        "rank_heads",
        "select_top_k",
        "terminal_layer_numbers",
    ),
    "split": (
        "halves",
        "locate_evaluate_split",
    ),
    "stereotype": (
        "STEREO_COLUMNS",
        "stereotype_logit_sums",
        "stereotype_logit_table",
        "stereotype_selection",
        "stereotype_sums",
        "stereotyped_class_map",
    ),
    "stream": (
        "AuditAccumulator",
        "AuditStats",
    ),
    "texts": (
        "TEXT_TABLE_COLUMNS",
        "audit_texts",
        "recode_attr",
        "text_table",
        "value_codes",
    ),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _MODULE:
        return getattr(importlib.import_module(f".{_MODULE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_MODULE)
