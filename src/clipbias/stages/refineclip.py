"""Rules of ``workflow/rules/refineclip.smk``: RefineCLIP phase 1 (analysis env), phase 2, the
edited checkpoint and the α/β sensitivity sweep (torch env; torch imported inside those
functions only). The report rule ``report_refineclip`` runs :func:`clipbias.stages.report.run_notebook`.

Files (``{cell}`` = ``{dataset}/{model}/seed-{seed}``, ``{method}`` = a configured method id):

* ``heads/{cell}/refineclip/{method}.json`` — phase 1 (docs/DESIGN.md, "Result tables") plus
  ``shots`` (split, n_per_class, seed, image ids, labels, groups) and ``params``;
* ``heads/{cell}/refineclip_adapter/{method}.safetensors`` (+ ``{method}_curves.csv``:
  ``step, set, metric, value``; sets ``train`` (the shots; loss terms and accuracies),
  ``test``, and with edit targets ``target`` / ``other``; metrics ``acc``, ``class_avg_acc``);
* ``models/{cell}/edited/{method}.safetensors`` (+ ``.json`` provenance): the open_clip
  checkpoint with the adapter merged into ``visual.proj``;
* ``metrics/{cell}/refineclip_sensitivity.csv``: ``sweep, alpha, beta, step, set, metric,
  value`` (``sweep`` = ``alpha`` (β = 0), ``beta`` (α = 0), ``both`` (α = β) or ``none``
  (α = β = 0, i.e. STD-FT)).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipbias.stages.common import limit_blas_threads

log = logging.getLogger(__name__)

SENSITIVITY_COLUMNS = ["sweep", "alpha", "beta", "step", "set", "metric", "value"]
#: phase-1 selection: utility (Algorithm 1), Ours* (list on validation, t by utility; paper
#: Appendix A.2), Ours* with t on validation too
SELECTIONS = ("utility", "validation", "validation_t")


def locate_refineclip(
    feature_dir: str | os.PathLike,
    out: str | os.PathLike,
    seed: int,
    n_per_class: int = 10,
    shots_split: str = "train",
    shot_sampling: str = "random",
    shot_classes: str = "all",
    T: int = 15,
    score_layers: int = 4,
    similarity: str = "cosine",
    selection: str = "utility",
    val_split: str = "val",
    T_ratio: float | None = None,
    utility_label: str = "own",
    threads: int | None = None,
    dataset_meta: str | os.PathLike | None = None,
    edit_targets: str | Sequence[str] | None = None,
    test_split: str = "test",
) -> dict[str, Any]:
    """RefineCLIP phase 1 (METHODS §5.1-5.5) on ``n_per_class`` shots per class of
    ``shots_split`` drawn with ``seed``; ``selection="validation"`` re-selects the candidate
    list (t of largest utility) by worst-group accuracy on ``val_split`` ("Ours*", paper
    Appendix A.2), ``"validation_t"`` the list and t. Lists hold ``T`` heads, or the
    ``T_ratio`` share of the scored heads (:func:`clipbias.methods.refineclip.candidate_length`);
    ``utility_label`` "own" or "y_e" (eq. 10). Only the rows of the shots (and, for
    Ours*, the validation split) and only the last ``score_layers`` stored layers are read,
    batch by batch: memory holds the shots and, for Ours*, per-group counts of correct
    predictions of every candidate set, independent of the splits' sizes.

    ``shot_classes="edit_targets"`` draws the shots from the dataset's ``edit_targets``
    classes only (METHODS §5.8); ``"worst:<k>"`` targets are the k classes with the lowest
    zero-shot accuracy on ``test_split`` (embeddings only), as the phase-2 curves use."""
    from clipbias.features import FeatureError, FeatureSet, read_classifier
    from clipbias.io import write_json
    from clipbias.methods.fewshot import shot_rows, shots_record
    from clipbias.methods.refineclip import (
        identify_then_ablate,
        select_on_validation_counts,
        validation_counts,
    )

    limit_blas_threads(threads)
    if dataset_meta is not None:
        from clipbias.io import read_json

        cols = read_json(dataset_meta).get("candidate_columns")
        if cols:
            # W/C/A, the utility and Ours*' validation counts argmax over all classes; with
            # per-image candidates (GenderBias-VL) they would describe another task
            raise ValueError(
                f"RefineCLIP phase 1 classifies among all classes, but {dataset_meta} gives "
                f"every image its own candidate classes (candidate_columns {cols}); leave the "
                "RefineCLIP methods out of this dataset's datasets[].methods"
            )
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    fs = FeatureSet.open(feature_dir)
    names, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    layers = sorted(fs.layers)[-int(score_layers) :]
    classes = _shot_classes(shot_classes, edit_targets, fs, names, classifier, test_split)
    idx, heads, rest = shot_rows(fs, shots_split, n_per_class, seed, layers, shot_sampling, classes)
    labels = idx["label"].to_numpy()
    result = identify_then_ablate(
        heads, rest, classifier, labels, layers,
        T=int(T), n_score_layers=int(score_layers), similarity=similarity, class_names=names,
        T_ratio=None if T_ratio is None else float(T_ratio), utility_label=utility_label,
    )  # fmt: skip
    if selection != "utility":
        if val_split == shots_split:
            log.warning("Ours* selects on %r, the split the shots come from", val_split)
        # streamed: per batch the predictions of every candidate S_t, kept as per-group
        # correct counts (memory O(batch + candidates), not the split's heads)
        batches = (
            (h, r, i["label"].to_numpy(), i["group"].to_numpy())
            for i, h, r in fs.iter_batches(layers, val_split)
        )
        counts = validation_counts(result, batches, classifier, layers)
        if not counts.n:
            raise FeatureError(f"no rows for split {val_split!r} in {fs.folder}")
        choose_t = "utility" if selection == "validation" else "validation"
        result = select_on_validation_counts(result, counts, choose_t=choose_t)
        result["validation"]["split"] = val_split
    result["shots"] = shots_record(
        idx, shots_split, n_per_class, seed, shot_sampling, shot_classes, classes
    )
    result["params"] = {
        "n_per_class": int(n_per_class), "shots_split": shots_split,
        "shot_sampling": shot_sampling, "shot_classes": shot_classes, "T": int(T),
        "score_layers": int(score_layers), "similarity": similarity, "selection": selection,
        "val_split": val_split if selection != "utility" else None,
        "T_ratio": None if T_ratio is None else float(T_ratio), "utility_label": utility_label,
    }  # fmt: skip
    write_json(out, result)
    return result


def _shot_classes(
    setting: str,
    edit_targets: str | Sequence[str] | None,
    fs: Any,
    names: Sequence[str],
    classifier: np.ndarray,
    test_split: str,
) -> list[int] | None:
    """Class ids the shots are drawn from: None for ``"all"``, the resolved edit targets for
    ``"edit_targets"``."""
    from clipbias import metrics
    from clipbias.methods.fewshot import edit_target_classes

    if setting == "all":
        return None
    if setting != "edit_targets":
        raise ValueError(f"shot_classes must be 'all' or 'edit_targets', got {setting!r}")
    if not edit_targets:
        raise ValueError(
            "shot_classes 'edit_targets' needs the dataset's edit_targets (datasets[]."
            "edit_targets in the config: class names or 'worst:<k>')"
        )
    labels = preds = None
    if isinstance(edit_targets, str) and edit_targets.startswith("worst:"):
        tidx, _, temb = fs.load(layers=[], split=test_split)
        labels, preds = tidx["label"].to_numpy(), metrics.predict(temb, classifier)
    return edit_target_classes(edit_targets, names, labels, preds)


# ---------------------------------------------------------------------------------- phase 2


EDIT_SETS = ("selected_direction", "all_directions")


def _phase2_inputs(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    phase1: Mapping[str, Any],
    edit_targets: str | Sequence[str] | None,
    test_split: str,
    edit_sets: str = "selected_direction",
) -> dict[str, Any]:
    """Shots (original and ablated embeddings, W and C ∪ A masks) and the test evaluation sets
    of the phase-2 curves, from a phase-1 result (numpy only). ``edit_sets``
    ``"selected_direction"``: W and C ∪ A of the error direction S* was selected for (eqs.
    11-12 name one error type (y_e, ŷ_e)); ``"all_directions"``: every misclassified shot
    (taught by the same S*) and the C ∪ A sets of every direction."""
    from clipbias import metrics
    from clipbias.features import FeatureSet, read_classifier
    from clipbias.io import read_json
    from clipbias.methods.fewshot import (
        edit_target_classes,
        load_rows,
        parse_shots,
        target_eval_sets,
    )
    from clipbias.methods.heads import parse_head
    from clipbias.methods.refineclip import phase2_masks, zero_ablate

    if edit_sets not in EDIT_SETS:
        raise ValueError(f"edit_sets must be one of {EDIT_SETS}, got {edit_sets!r}")
    meta = read_json(dataset_meta)
    fs = FeatureSet.open(feature_dir)
    names, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    s_star = list(phase1["selected"]["heads"])
    layers = sorted({parse_head(h)[0] for h in s_star})
    split, ids = parse_shots(phase1)
    idx, heads, rest = load_rows(fs, split, ids, layers)
    labels = idx["label"].to_numpy()
    emb = heads.sum(axis=(1, 2), dtype=np.float64) + rest
    preds = metrics.predict(emb, classifier)
    direction = phase1["selected"].get("direction") if edit_sets == "selected_direction" else None
    success, locality = phase2_masks(labels, preds, direction)
    tidx, _, temb = fs.load(layers=[], split=test_split)
    tlabels = tidx["label"].to_numpy()
    cols = meta.get("candidate_columns")
    cand = np.stack([tidx[c].to_numpy() for c in cols], axis=1) if cols else None
    targets = edit_target_classes(
        edit_targets, names, tlabels, metrics.predict(temb, classifier, cand)
    )
    return {
        "emb": emb,
        "labels": labels,
        "teacher": zero_ablate(heads, rest, layers, s_star),
        "success": success,
        "locality": locality,
        "classifier": classifier,
        "eval_sets": target_eval_sets(temb, tlabels, targets),
        "targets": [names[t] for t in targets],
        "s_star": s_star,
        "direction": phase1["selected"].get("direction"),
        "edit_sets": edit_sets,
    }


def _select_set(
    feature_dir: str | os.PathLike, step_split: str | None, test_split: str, shots_split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(embeddings, labels, groups) of ``step_split``, the split whose worst-group accuracy
    chooses the adapter's training step; None = keep the last step."""
    from clipbias.features import FeatureError, FeatureSet

    if not step_split:
        return None
    if step_split == test_split:
        raise ValueError(
            f"step_split {step_split!r} is the test split: the training step must be chosen "
            "without test data; name a validation split, or null to keep the last step"
        )
    if step_split == shots_split:
        log.warning("the adapter's step is chosen on %r, the split the shots come from", step_split)
    fs = FeatureSet.open(feature_dir)
    idx, _, emb = fs.load(layers=[], split=step_split)
    if not len(idx):
        raise FeatureError(f"no rows for step_split {step_split!r} in {fs.folder}")
    return emb, idx["label"].to_numpy(), idx["group"].to_numpy()


def adapter_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """train_adapter keyword arguments from a method's parameters (absent α/β = 0)."""
    return {
        "variant": params.get("variant", "diag"),
        "objective": params.get("objective", "refineclip"),
        "alpha": float(params.get("alpha", 0.0)),
        "beta": float(params.get("beta", 0.0)),
        "lr": float(params.get("lr", 1e-3)),
        "steps": int(params.get("steps", 500)),
        "rank": int(params.get("rank", 4)),
        "eval_every": int(params.get("eval_every", 10)),
    }


def adapt_refineclip(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    phase1: str | os.PathLike,
    out_adapter: str | os.PathLike,
    out_curves: str | os.PathLike,
    seed: int,
    params: Mapping[str, Any],
    edit_targets: str | Sequence[str] | None = None,
    test_split: str = "test",
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """RefineCLIP phase 2 (METHODS §5.6) of one method id: train the adapter on the shots of
    its phase-1 file (S* = the ablated teacher of the misclassified shots of its error
    direction, ``edit_sets``), track accuracy on the test split (and its target / other
    classes) every ``eval_every`` steps, write adapter and curves. The adapter of the last step
    is kept, or with ``step_split`` that of the evaluated step with the best worst-group
    accuracy on that split (never the test split). Without a misclassified shot
    there is nothing to edit: the adapter is the identity (0 steps), except for STD-FT."""
    from clipbias.io import read_json, write_csv
    from clipbias.methods.fewshot import resolve_tau
    from clipbias.methods.refineclip_adapt import save_adapter, train_adapter

    limit_blas_threads(threads)
    p1 = read_json(phase1)
    inp = _phase2_inputs(
        feature_dir, dataset_meta, p1, edit_targets, test_split,
        params.get("edit_sets", "selected_direction"),
    )  # fmt: skip
    settings = adapter_settings(params)
    shots_split = (p1.get("shots") or {}).get("split", "")
    select = _select_set(feature_dir, params.get("step_split"), test_split, shots_split)
    if not inp["success"].any() and settings["objective"] != "std_ft":
        # no misclassified shot: phase 1 found nothing to edit, so the edit is the identity
        # (training would be cross-entropy fine-tuning only, i.e. STD-FT, not RefineCLIP)
        log.warning("no misclassified shot: the %s adapter is the identity", settings["variant"])
        settings["steps"] = 0
    tau = resolve_tau(params.get("tau"), feature_dir)
    res = train_adapter(
        inp["emb"], inp["labels"], inp["classifier"], inp["teacher"], inp["success"],
        inp["locality"], tau=tau, seed=int(seed), eval_sets=inp["eval_sets"], device=device,
        select_set=select, **settings,
    )  # fmt: skip
    info = {"config": res.config, "s_star": inp["s_star"], "edit_targets": inp["targets"],
            "direction": inp["direction"], "edit_sets": inp["edit_sets"],
            "step_split": params.get("step_split")}  # fmt: skip
    save_adapter(out_adapter, res.params, {"clipbias.refineclip": json.dumps(info)})
    write_csv(res.curves, out_curves)


def sensitivity_runs(values: Sequence[float]) -> list[tuple[str, float, float]]:
    """(sweep, α, β) of the sensitivity study: α swept with β = 0, β swept with α = 0, both
    equal, and α = β = 0 (STD-FT) once."""
    runs = [("none", 0.0, 0.0)]
    for v in values:
        v = float(v)
        runs += [("alpha", v, 0.0), ("beta", 0.0, v), ("both", v, v)]
    return runs


def refineclip_sensitivity(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    phase1: str | os.PathLike,
    out: str | os.PathLike,
    seed: int,
    params: Mapping[str, Any],
    values: Sequence[float],
    edit_targets: str | Sequence[str] | None = None,
    test_split: str = "test",
    steps: int = 0,
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """α/β sensitivity (paper Appendix B, Figs. 5-8): the method's adapter (variant, τ, lr)
    retrained for every (α, β) of :func:`sensitivity_runs`, accuracy curves per step; ``steps``
    0 = the method's own."""
    from clipbias.io import read_json, write_csv
    from clipbias.methods.fewshot import resolve_tau

    limit_blas_threads(threads)
    inp = _phase2_inputs(
        feature_dir, dataset_meta, read_json(phase1), edit_targets, test_split,
        params.get("edit_sets", "selected_direction"),
    )  # fmt: skip
    settings = adapter_settings(params)
    if steps:
        settings["steps"] = int(steps)
    if not inp["success"].any():
        log.warning(
            "no misclassified shot: every sweep run is cross-entropy training (α, β unused)"
        )
    tau = resolve_tau(params.get("tau"), feature_dir)
    table = sensitivity_table(inp, settings, tau, values, int(seed), device)
    write_csv(table, out)
    log.info("sensitivity: %d runs, targets %s", len(sensitivity_runs(values)), inp["targets"])


def sensitivity_table(
    inp: Mapping[str, Any],
    settings: Mapping[str, Any],
    tau: float,
    values: Sequence[float],
    seed: int,
    device: str | None = None,
):
    """The sweep of :func:`sensitivity_runs` on prepared phase-2 inputs (``emb, labels,
    classifier, teacher, success, locality, eval_sets``): one adapter per (α, β) with the
    ``refineclip`` objective, curves of the evaluation sets (:data:`SENSITIVITY_COLUMNS`)."""
    import pandas as pd

    from clipbias.methods.refineclip_adapt import train_adapter

    settings = {**settings, "objective": "refineclip"}
    frames = []
    for sweep, a, b in sensitivity_runs(values):
        settings.update(alpha=a, beta=b)
        res = train_adapter(
            inp["emb"], inp["labels"], inp["classifier"], inp["teacher"], inp["success"],
            inp["locality"], tau=tau, seed=seed, eval_sets=inp["eval_sets"], device=device,
            **settings,
        )  # fmt: skip
        c = res.curves[res.curves["set"] != "train"].copy()
        c.insert(0, "sweep", sweep)
        c.insert(1, "alpha", a)
        c.insert(2, "beta", b)
        frames.append(c)
    return pd.concat(frames, ignore_index=True)[SENSITIVITY_COLUMNS]


def export_refineclip_model(
    model_name: str,
    pretrained: str | None,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    out_info: str | os.PathLike,
    device: str | None = None,
) -> None:
    """Merge the adapter into ``visual.proj`` of the model and write the edited open_clip
    checkpoint (verified: encode_image of the merged model = the adapted embedding), with its
    provenance JSON. Load it with ``clipbias.models.load_model(model_name, out)``."""
    from clipbias.edit import write_edited_checkpoint
    from clipbias.io import write_json
    from clipbias.methods.refineclip_adapt import load_adapter

    params = load_adapter(adapter)
    pre = pretrained if pretrained not in ("", "none") else None
    info = write_edited_checkpoint(model_name, pre, params, out, device=device)
    write_json(out_info, {**info, "adapter": os.fspath(adapter)})
