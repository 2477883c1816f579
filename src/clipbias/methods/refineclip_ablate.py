"""RefineCLIP phase 1 as registered methods ``refineclip`` and ``refineclip_star`` (METHODS
§5.2-5.5): zero-ablate the selected heads S* on the test split.

S* comes from the per-method phase-1 file ``heads/{cell}/refineclip/{method}.json`` (rule
``locate_refineclip``, :func:`clipbias.stages.refineclip.locate_refineclip`): selected by the
utility on the shots (``refineclip``), the list by worst-group accuracy on ``val_split`` and
its t by the utility (``refineclip_star``, "Ours*"), or list and t on ``val_split``
(``refineclip_star_t``). No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipbias.methods.api import MethodContext, MethodOutput
from clipbias.methods.heads import parse_head
from clipbias.methods.refineclip import zero_ablate

__all__ = ["ablation_edit", "check_phase1", "predict", "selected_meta"]


def check_phase1(
    result: Mapping[str, Any],
    seed: int,
    n_per_class: int,
    shots_split: str,
    T: int,
    score_layers: int,
    similarity: str,
    selection: str,
    shot_sampling: str = "random",
    shot_classes: str = "all",
    T_ratio: float | None = None,
    utility_label: str = "own",
    **_: Any,
) -> Mapping[str, Any]:
    """``result`` if it was made with these parameters and seed; a clear error otherwise (a
    stale or foreign phase-1 file)."""
    shots = result.get("shots") or {}
    made = {
        "seed": shots.get("seed"),
        "n_per_class": shots.get("n_per_class"),
        "shots_split": shots.get("split"),
        "shot_sampling": shots.get("sampling", "random"),
        "shot_classes": shots.get("shot_classes", "all"),
        "T": result.get("T"),
        "score_layers": len(result.get("score_layers") or []),
        "similarity": result.get("similarity"),
        "selection": result.get("selection"),
        "T_ratio": result.get("T_ratio"),
        "utility_label": result.get("utility_label", "own"),
    }
    want = {
        "seed": int(seed),
        "n_per_class": int(n_per_class),
        "shots_split": shots_split,
        "shot_sampling": shot_sampling,
        "shot_classes": shot_classes,
        "T": int(T),
        "score_layers": min(int(score_layers), len(result.get("layers") or [])),
        "similarity": similarity,
        "selection": selection,
        "T_ratio": None if T_ratio is None else float(T_ratio),
        "utility_label": utility_label,
    }
    bad = {k: (made[k], v) for k, v in want.items() if made[k] != v}
    if bad:
        raise ValueError(
            "the phase-1 file was made with other settings (file vs method): "
            + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in bad.items())
            + "; rerun locate_refineclip for this method"
        )
    return result


def ablation_edit(heads_ids: list[str]):
    """(layers to read, edit function) that zero-ablates ``heads_ids`` (eq. 5); (``[]``, None)
    when S* is empty (nothing to edit: the zero-shot prediction)."""
    if not heads_ids:
        return [], None
    layers = sorted({parse_head(h)[0] for h in heads_ids})

    def edit(h, rest, idx):
        return zero_ablate(h, rest, layers, heads_ids)

    return layers, edit


def selected_meta(result: Mapping[str, Any]) -> dict[str, Any]:
    """Facts about S* recorded in a predictions file."""
    sel = result["selected"]
    keep = ("t", "direction", "score", "utility", "validation_worst_group_acc")
    # T_used: the candidate-list length (T, or the T_ratio share of the scored heads)
    return {
        "heads": list(sel["heads"]),
        "selection": result.get("selection"),
        **{k: sel[k] for k in keep if k in sel},
        "n_shots": result.get("n_shots"),
        "n_wrong": result.get("n_wrong"),
        "T_used": result.get("T_used"),
        "shots_split": (result.get("shots") or {}).get("split"),
    }


def predict(ctx: MethodContext, **params: Any) -> MethodOutput:
    """Zero-ablate S* of this method's phase-1 file on the test split."""
    result = check_phase1(ctx.located["refineclip"], ctx.seed, **params)
    heads = list(result["selected"]["heads"])
    layers, edit = ablation_edit(heads)
    return MethodOutput(ctx.predict(edit, layers=layers), selected_meta(result))
