"""Rules of ``workflow/rules/evaluate.smk``: metrics of every method with bootstrap intervals,
paired comparisons with zero-shot, random-control summaries, the planted ground truth, the
summary over seeds and the experiment's grid table (stored tables only; no torch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipbias.stages.common import limit_blas_threads
from clipbias.tables import LOWER_IS_BETTER, SEED_METRICS

log = logging.getLogger(__name__)

#: Metrics compared with zero-shot in ``paired.csv``.
PAIRED_METRICS = ("worst_group_acc", "avg_acc")
#: Baselines of ``paired.csv`` (its ``baseline`` column), when configured: zero-shot for every
#: method, LTC for every other method but zero-shot (the peers' comparison, METHODS §10.8).
PAIRED_BASELINES = ("zero_shot", "ltc")
PAIRED_COLUMNS = [
    "method",
    "baseline",
    "metric",
    "value",
    "baseline_value",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "test",
    "n",
    "n_boot",
]


def _write_csv(df, out: str | os.PathLike) -> None:
    from clipbias.io import write_csv

    write_csv(df, out)


def paired_rows(
    method: str,
    pred: np.ndarray,
    baseline: str,
    pred_base: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
):
    """Rows of ``paired.csv`` for ``method`` vs ``baseline`` on the same test images.

    ``diff`` = value − baseline value with a paired, group-stratified bootstrap 95 % interval
    (METHODS §7.2). ``p_value``: McNemar's exact test for the average accuracy; for the
    worst-group accuracy (a minimum over groups, not a per-sample statistic) the two-sided
    paired-bootstrap p-value (``test`` says which), which moves in steps of 2 / ``n_boot``
    (the column ``n_boot``, so a report can print a 0 as "< 2/n_boot").
    """
    import pandas as pd

    from clipbias.metrics import mcnemar_exact, paired_bootstrap_difference

    diff = paired_bootstrap_difference(
        pred, pred_base, labels, groups, n_boot=n_boot, seed=seed
    ).set_index("metric")
    mc = mcnemar_exact(pred == labels, pred_base == labels)
    rows = []
    for metric in PAIRED_METRICS:
        if metric not in diff.index:
            continue
        r = diff.loc[metric]
        mcnemar = metric == "avg_acc"
        rows.append(
            {
                "method": method,
                "baseline": baseline,
                "metric": metric,
                "value": float(r["value_a"]),
                "baseline_value": float(r["value_b"]),
                "diff": float(r["diff"]),
                "ci_low": float(r["ci_low"]),
                "ci_high": float(r["ci_high"]),
                "p_value": float(mc["pvalue"] if mcnemar else r["p_boot"]),
                "test": "mcnemar_exact" if mcnemar else "paired_bootstrap",
                "n": len(labels),
                "n_boot": int(n_boot),
            }
        )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def evaluate(
    predictions: Mapping[str, str | os.PathLike],
    dataset_meta: str | os.PathLike,
    out_metrics: str | os.PathLike,
    out_paired: str | os.PathLike,
    out_draws: str | os.PathLike,
    out_random_summary: str | os.PathLike,
    n_boot: int = 1000,
    seed: int = 42,
    threads: int | None = None,
    protocol: str = "none",
    edit_targets: str | Sequence[str] | None = None,
    out_methods: str | os.PathLike | None = None,
    ltc_group_labels: bool = True,
) -> None:
    """Tidy metrics of every method on every evaluation split (95 % stratified bootstrap
    intervals), paired differences with zero-shot and with LTC (:data:`PAIRED_BASELINES`,
    when configured), the random-control draws and summary (on the test split), and the
    dataset's protocol metrics (:func:`protocol_rows`). With ``edit_targets`` (the dataset's,
    :func:`clipbias.methods.fewshot.edit_target_classes`), every method also gets
    edit-success and locality rows on each evaluation split (METHODS §7.1).

    ``out_methods`` (``methods.csv``): per method id its display label, registry name,
    level, block of the comparison protocol and label use (METHODS §10.7-10.8,
    :func:`clipbias.methods.registry.label_use_rows`; ``ltc_group_labels`` =
    ``locate.ltc.use_group_labels``)."""
    import pandas as pd

    from clipbias.io import read_json
    from clipbias.methods import registry
    from clipbias.methods.ltc_random import (
        draws_table,
        random_control_summary,
        random_metric_rows,
    )
    from clipbias.metrics import evaluate_predictions
    from clipbias.stages.predict import read_predictions

    limit_blas_threads(threads)
    meta = read_json(dataset_meta)
    tables, preds, draws_all, summaries, controls = [], {}, [], [], []
    point: dict[str, dict[str, float]] = {}
    scores: dict[str, np.ndarray] = {}
    index = None
    configured = {}
    for method, path in predictions.items():
        df, draws, info = read_predictions(path)
        name = info.get("method_name", method)
        configured[method] = registry.Configured(method, name, info.get("params") or {})
        if index is None:
            index = df
        elif not df["image_id"].equals(index["image_id"]):
            raise ValueError(f"{path}: test rows differ from the other methods' predictions")
        test = info["split"]
        if "pred" in df:
            preds[method] = df["pred"].to_numpy()
            for split, part in df.groupby("split", sort=False):
                res = evaluate_predictions(
                    part["pred"].to_numpy(), part["label"].to_numpy(), part["group"].to_numpy(),
                    meta.get("group_names"), method, split, n_boot=n_boot, seed=seed,
                )  # fmt: skip
                tables.append(res)
                if split == test:
                    point[method] = dict(zip(res["metric"], res["value"], strict=True))
            if "scores" in info:
                scores[method] = info["scores"]
        if draws is not None:
            on_test = (df["split"] == test).to_numpy()
            sets = [(d["spurious"], d["salient"]) for d in info["draw_meta"]]
            table = draws_table(
                draws[:, on_test], sets, df.loc[on_test, "label"].to_numpy(),
                df.loc[on_test, "group"].to_numpy(),
            )  # fmt: skip
            table = table.rename(columns={"S": "spurious", "Y": "salient"})
            table.insert(0, "method", method)
            draws_all.append(table)
            tables.append(random_metric_rows(table, test, method))
            name = info.get("method_name", method)
            controls.append((method, registry.get(name).control_of, table))
    for method, observed_method, table in controls:
        if observed_method not in point:
            continue
        observed = point[observed_method]
        s = random_control_summary(table, {k: observed[k] for k in SEED_METRICS if k in observed})
        s.insert(0, "method", method)
        s.insert(1, "observed_method", observed_method)
        summaries.append(s)
    tables += protocol_rows(protocol, index, preds, scores, meta)
    if edit_targets and preds:
        for split, part in index.groupby("split", sort=False):
            rows = part.index.to_numpy()
            sub = {m: p[rows] for m, p in preds.items()}
            tables.append(_edit_rows(edit_targets, meta, sub, part.reset_index(drop=True), split))
    tables += _protected_rows(meta, preds, index, n_boot, seed)
    metrics = pd.concat(tables, ignore_index=True)
    _write_csv(metrics, out_metrics)

    paired = []
    for ref in PAIRED_BASELINES:
        if ref not in preds:
            continue
        for split, part in index.groupby("split", sort=False):
            rows = part.index.to_numpy()
            for m, p in preds.items():
                if m == ref or (
                    ref != registry.REFERENCE_METHOD and m == registry.REFERENCE_METHOD
                ):
                    continue
                pr = paired_rows(
                    m, p[rows], ref, preds[ref][rows], part["label"].to_numpy(),
                    part["group"].to_numpy(), n_boot, seed,
                )  # fmt: skip
                pr.insert(2, "split", split)
                paired.append(pr)
    ref = registry.REFERENCE_METHOD
    paired_df = (
        pd.concat(paired, ignore_index=True)
        if paired
        else pd.DataFrame(columns=[*PAIRED_COLUMNS[:2], "split", *PAIRED_COLUMNS[2:]])
    )
    _write_csv(paired_df, out_paired)
    draws_df = pd.concat(draws_all, ignore_index=True) if draws_all else pd.DataFrame()
    _write_csv(draws_df, out_draws)
    summary_df = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    _write_csv(summary_df, out_random_summary)
    if out_methods is not None:
        table = pd.DataFrame(registry.label_use_rows(configured, ltc_group_labels))
        table.insert(1, "label", [registry.label(m, c.name) for m, c in configured.items()])
        table.insert(2, "name", [c.name for c in configured.values()])
        _write_csv(table, out_methods)
    shown = metrics[metrics["metric"].isin(["avg_acc", "worst_group_acc", "gap"])]
    pivot = shown.pivot_table(index="method", columns=["split", "metric"], values="value")
    log.info("evaluation:\n%s", pivot.round(4).to_string())
    if len(paired_df):
        log.info("paired with %s:\n%s", ref, paired_df.round(4).to_string(index=False))


PROTOCOLS = ("none", "genderbias", "counteranimal", "fairface")


def protocol_rows(protocol, index, preds, scores, meta) -> list:
    """The dataset's own metrics (METHODS §4.11) for every method, as tidy rows
    (``method, split, metric, value, group_name, n``; no bootstrap interval):

    * ``genderbias``: overall and top-10 bias (|acc_female − acc_male| per occupation; the
      top-10 occupations fixed from zero-shot) on every evaluation split;
    * ``counteranimal``: common and counter accuracy, their gap, worst-10-class accuracy (the
      classes with the largest zero-shot drop); needs both splits among the evaluation splits;
    * ``fairface``: MaxSkew@1000 of the retrieval prompts' scores, uniform and empirical
      prior (on a split of fewer than 1,000 images with a known gender the rows are NaN and
      their ``note`` says so; k is never lowered silently).

    Every method with predictions gets every row (a method that uses no texts still gets the
    retrieval scores: the predict stage reads the texts file of a dataset with retrieval
    prompts for every method).
    """

    from clipbias import protocols
    from clipbias.methods.registry import REFERENCE_METHOD

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    if protocol == "none" or not preds:
        return []
    label = index["label"].to_numpy()
    dlabel = index["dataset_label"].to_numpy() if "dataset_label" in index else label
    split = index["split"].to_numpy()
    out = []

    def tidy(df, method, sp):
        df = df.copy()
        df.insert(0, "method", method)
        df.insert(1, "split", sp)
        return df

    if protocol == "genderbias":
        gender = index[f"attr_{meta.get('protected_attribute') or 'gender'}"].to_numpy()
        for sp in dict.fromkeys(split):
            m = split == sp
            top = protocols.genderbias_top_occupations(
                preds[REFERENCE_METHOD][m] == label[m], dlabel[m], gender[m]
            )
            for method, p in preds.items():
                rows = protocols.genderbias_bias(
                    p[m] == label[m], dlabel[m], gender[m], top, meta.get("classes")
                )
                out.append(tidy(rows, method, sp).assign(n=int(m.sum())))
    elif protocol == "counteranimal":
        common, counter = split == "common", split == "counter"
        if not common.any() or not counter.any():
            raise ValueError(
                "protocol counteranimal needs the common and counter splits among the "
                "evaluation splits (datasets[].test_split: counter, eval_splits: [common])"
            )
        z = preds[REFERENCE_METHOD] == label
        worst = protocols.counteranimal_worst_classes(
            z[common], dlabel[common], z[counter], dlabel[counter]
        )
        for method, p in preds.items():
            c = p == label
            rows = protocols.counteranimal_metrics(
                c[common], dlabel[common], c[counter], dlabel[counter], worst
            )
            out.append(tidy(rows, method, "counter").assign(n=int(counter.sum())))
    elif protocol == "fairface":
        if not scores:
            raise ValueError(
                "protocol fairface needs retrieval prompts in the dataset's texts file "
                "(retrieval: {template, concepts}) so predictions carry their scores"
            )
        gender = index["attr_gender"].to_numpy()
        k, n_known = protocols.MAXSKEW_K, int((gender >= 0).sum())
        missing = sorted(set(preds) - set(scores))
        if missing:
            raise ValueError(f"protocol fairface: methods {missing} have no retrieval scores")
        for method, sc in scores.items():
            for fn in (protocols.maxskew_uniform, protocols.maxskew_empirical):
                if n_known >= k:
                    rows = fn(sc, gender, n_values=2, k=k)
                else:
                    name = fn.__name__
                    why = f"{n_known} images with a known gender < k = {k}"
                    rows = protocols.tidy_rows([(f"{name}@{k}", float("nan"), "mean", why)])
                out.append(tidy(rows, method, str(split[0])).assign(n=min(k, n_known)))
    cols = ["method", "split", "metric", "value", "ci_low", "ci_high", "group_name", "n", "note"]
    for df in out:
        df["ci_low"] = float("nan")
        df["ci_high"] = float("nan")
    return [df[cols] for df in out]


def _protected_rows(meta, preds, index, n_boot: int, seed: int) -> list:
    """V(pred, protected attribute) and its excess over V(true class, attribute) with a
    paired bootstrap interval, per method and split, when ``dataset.json`` names a
    ``protected_attribute`` that the predictions carry (``attr_<name>``)."""
    import pandas as pd

    from clipbias.metrics import protected_v_rows

    name = meta.get("protected_attribute")
    if not name or not preds or f"attr_{name}" not in index.columns:
        return []
    out = []
    for split, part in index.groupby("split", sort=False):
        rows = part.index.to_numpy()
        labels, attr = part["label"].to_numpy(), part[f"attr_{name}"].to_numpy()
        if not (attr >= 0).any():
            continue
        out.append(
            pd.DataFrame(
                [
                    r
                    for m, p in preds.items()
                    for r in protected_v_rows(m, split, p[rows], labels, attr, name, n_boot, seed)
                ]
            )
        )
    return out


def _edit_rows(spec, meta, preds, index, split):
    """Edit success / locality rows of every method with predictions (RefineCLIP §5.8)."""
    import pandas as pd

    from clipbias.methods.fewshot import edit_target_classes
    from clipbias.methods.refineclip import edit_metric_rows
    from clipbias.methods.registry import REFERENCE_METHOD

    labels = index["label"].to_numpy()
    targets = edit_target_classes(spec, meta["classes"], labels, preds.get(REFERENCE_METHOD))
    log.info("edit targets %s: %s", spec, [meta["classes"][t] for t in targets])
    rows = [r for m, p in preds.items() for r in edit_metric_rows(m, split, p, labels, targets)]
    return pd.DataFrame(rows)


def planted_ground_truth(
    feature_dir: str | os.PathLike,
    dataset_meta: str | os.PathLike,
    out_heads: str | os.PathLike,
    out_total: str | os.PathLike,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 42,
) -> None:
    """The planted ground truth (docs/DESIGN.md): per head the causal effect of the
    background and of the protected colour (originals of ``split`` vs their counterfactual
    twins) and the associative statistic of both on ``split``; ``out_heads`` (``heads.csv``)
    and the causal total-margin rows ``out_total`` (``total.csv``). Streamed: only the
    per-row true-class margins [N, L, H] of ``split`` and its twins are kept."""
    import pandas as pd

    from clipbias.features import FeatureSet, read_classifier
    from clipbias.ground_truth import (
        TWIN_ATTRIBUTE_KEYS,
        margin_directions,
        planted_tables_from_margins,
        true_class_margins,
    )
    from clipbias.io import read_json
    from clipbias.streaming import map_batches

    meta = read_json(dataset_meta)
    _, classifier, _ = read_classifier(Path(feature_dir) / "classifier.parquet")
    fs = FeatureSet.open(feature_dir)
    dirs = margin_directions(classifier)

    def per_batch(idx, heads, rest):
        labels = idx["label"].to_numpy()
        total = np.sum((heads.sum((1, 2)) + rest) * dirs[:, labels].T, axis=1)
        return true_class_margins(heads, classifier, labels), total

    present = set(fs.splits)
    parts = []
    for s in [split, "twin_background", "twin_protected"]:
        if s not in present:
            if s == split:
                raise ValueError(f"no rows of split {split!r} in {feature_dir}")
            log.warning("no %s rows in the features: no causal table for them", s)
            continue
        parts.append(map_batches(fs, per_batch, split=s))
    index = pd.concat([p[0] for p in parts], ignore_index=True)
    margins = np.concatenate([p[1][0] for p in parts])
    total = np.concatenate([p[1][1] for p in parts])
    kinds = [
        kind
        for kind in TWIN_ATTRIBUTE_KEYS
        if meta.get(TWIN_ATTRIBUTE_KEYS[kind][0]) is not None and f"twin_{kind}" in present
    ]
    output = _output_sensitivity(fs, meta, split, kinds, n_boot, seed)
    heads, totals = planted_tables_from_margins(
        index, margins, total, fs.layers, meta, split=split, n_boot=n_boot, seed=seed,
        extra=output,
    )  # fmt: skip
    _write_csv(heads, out_heads)
    _write_csv(totals, out_total)
    for (kind, attr), g in heads.groupby(["kind", "attribute"], sort=False):
        log.info("%s %s ground truth, top heads:\n%s", kind, attr, g.head(5).to_string(index=False))
    if len(totals):
        log.info("causal total effects:\n%s", totals.to_string(index=False))


def _rows_in_step(batches):
    """``take(m)`` -> (image ids [m], heads [m, ...]) of the next m rows of ``batches``
    (``iter_batches`` output), whatever the batch boundaries; fewer at the end."""
    buf_ids, buf_h = [], []

    def take(m: int):
        have = sum(len(x) for x in buf_ids)
        while have < m:
            nxt = next(batches, None)
            if nxt is None:
                break
            buf_ids.append(nxt[0]["image_id"].astype(str).to_numpy())
            buf_h.append(nxt[1])
            have += len(buf_ids[-1])
        if not buf_ids:
            return np.array([], dtype=str), None
        ids, h = np.concatenate(buf_ids), np.concatenate(buf_h)
        buf_ids[:] = [ids[m:]] if len(ids) > m else []
        buf_h[:] = [h[m:]] if len(ids) > m else []
        return ids[:m], h[:m]

    return take


def _output_sensitivity(fs, meta, split: str, kinds, n_boot: int, seed: int) -> list:
    """Output-sensitivity tables (kind ``output``,
    :func:`clipbias.ground_truth.output_sensitivity_table`) of the ``kinds`` twins: one pass
    over ``split`` with every ``twin_{kind}`` split in lockstep (the generator writes the twin
    of row i as row i of the twin split, ``"<id>|<kind>"``); keeps only per-pair [L, H]
    squared changes and the originals' per-head sums (shared by all kinds)."""
    from clipbias.ground_truth import associated_values, head_spread, output_sensitivity_table

    if not kinds:
        return []
    shape = (len(fs.layers), fs.n_heads)
    s1, s2, n = np.zeros((*shape, fs.dim)), np.zeros(shape), 0
    twins = {k: _rows_in_step(fs.iter_batches(None, f"twin_{k}", rest=False)) for k in kinds}
    pair_sq = {k: [] for k in kinds}
    for idx, h, _ in fs.iter_batches(None, split, rest=False):
        h64 = h.astype(np.float64)
        s1 += h64.sum(0)
        s2 += np.einsum("nlhd,nlhd->lh", h64, h64)
        n += len(h)
        ids = idx["image_id"].astype(str)
        for kind, take in twins.items():
            tids, th = take(len(idx))
            want = (ids + f"|{kind}").to_numpy()
            if len(tids) != len(want) or (tids != want).any():
                raise ValueError(
                    f"rows of twin_{kind} are not aligned with {split} in {fs.folder}: "
                    "regenerate the planted dataset and its features (twins are written in "
                    "the order of their originals)"
                )
            pair_sq[kind].append(np.sum((th.astype(np.float64) - h64) ** 2, axis=-1))
    spread = head_spread(s1, s2, n)
    tables = []
    for kind, take in twins.items():
        if len(take(1)[0]):
            raise ValueError(f"twin_{kind} has more rows than {split} in {fs.folder}")
        tables.append(
            output_sensitivity_table(
                np.concatenate(pair_sq[kind]),
                spread,
                fs.layers,
                attribute=associated_values(meta, kind)[0],
                n_boot=n_boot,
                seed=seed,
            )  # fmt: skip
        )
    return tables


def score_locators(
    ground_truth: str | os.PathLike,
    located: Mapping[str, str | os.PathLike],
    dataset_meta: str | os.PathLike,
    out: str | os.PathLike,
) -> None:
    """``locator_scores.csv``: every located-heads file of the cell ({name: path}) scored
    against the planted ground truth (precision@|S|, top-1 head, Spearman;
    :func:`clipbias.ground_truth.score_locators`)."""

    from clipbias.ground_truth import score_locators as score
    from clipbias.io import read_csv, read_json

    meta = read_json(dataset_meta)
    truth = read_csv(ground_truth)
    specs = {name: read_json(path) for name, path in located.items()}
    table = score(truth, specs, spurious_attribute=meta.get("spurious_attribute", "background"))
    _write_csv(table, out)
    log.info("locators vs ground truth:\n%s", table.to_string(index=False))


def summarize_seeds(
    metrics: Mapping[int, str | os.PathLike],
    out: str | os.PathLike,
    split: str,
    metric_names: Sequence[str] = SEED_METRICS,
) -> None:
    """``summary_over_seeds.csv``: per method and metric the mean, sd (ddof 1), min and max
    over seeds, the number of seeds, on how many seeds the method beat zero-shot (higher is
    better, except :data:`LOWER_IS_BETTER`), the gain over zero-shot paired by seed
    (``gain_mean``, t-based 95 % interval over seeds ``gain_ci_low``/``gain_ci_high``,
    METHODS §7.2), and a ``note`` when a metric could not be computed (its rows' note). Only
    the dataset-level rows of the evaluation split ``split`` count
    (:func:`clipbias.protocols.table_rows`; a dataset with several evaluation splits has one
    row per split and metric in metrics.csv)."""
    import pandas as pd

    from clipbias.io import read_csv
    from clipbias.methods.registry import REFERENCE_METHOD
    from clipbias.protocols import table_rows

    frames = []
    for seed, path in metrics.items():
        df = table_rows(read_csv(path), split, metric_names)
        keep = ["method", "metric", "value", *(["note"] if "note" in df else [])]
        df = df[keep].copy()
        df["seed"] = int(seed)
        frames.append(df)
    allv = pd.concat(frames, ignore_index=True)
    ref = allv[allv["method"] == REFERENCE_METHOD].set_index(["seed", "metric"])["value"]
    rows = []
    for (method, metric), g in allv.groupby(["method", "metric"], sort=False):
        v = g["value"].to_numpy(dtype=np.float64)
        base = np.array([ref.get((s, metric), np.nan) for s in g["seed"]])
        better = v < base if metric in LOWER_IS_BETTER else v > base
        notes = g["note"].fillna("").astype(str) if "note" in g else pd.Series([], dtype=str)
        finite = v[np.isfinite(v)]
        gain = (v - base)[~np.isnan(base)]
        low, high = _t_interval(gain)
        rows.append(
            {
                "method": method,
                "metric": metric,
                "mean": float(finite.mean()) if len(finite) else float("nan"),
                "sd": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
                "min": float(finite.min()) if len(finite) else float("nan"),
                "max": float(finite.max()) if len(finite) else float("nan"),
                "n_seeds": len(finite),
                "n_better_than_zero_shot": int(np.sum(better & ~np.isnan(base))),
                "note": next((n for n in notes if n), ""),
                "gain_mean": float(gain.mean()) if len(gain) else float("nan"),
                "gain_ci_low": low,
                "gain_ci_high": high,
            }
        )
    _write_csv(pd.DataFrame(rows), out)


def _t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """t-based interval of the mean of ``x`` over seeds (METHODS §7.2); NaN below 2 values."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def grid_table(
    summaries: Sequence[Mapping[str, Any]],
    out_stem: str | os.PathLike,
) -> None:
    """The experiment's table: one row per method, one column per (dataset, model, metric)
    with the mean over seeds (± sd when there are several), written as CSV/Markdown/LaTeX.

    ``summaries``: ``{"dataset", "model", "path", "metrics"}`` of each cell: its
    ``summary_over_seeds.csv`` and the metrics its paper table reports
    (:func:`clipbias.protocols.table_metrics`: MaxSkew for FairFace, the bias for
    GenderBias-VL, the common/counter gap for CounterAnimal, Cramér's V for an audited
    attribute, edit success and locality for the edit tasks).
    """
    from clipbias.report import GRID_CAPTION, grid_main_table, write_table

    table = grid_main_table(summaries)
    write_table(table, out_stem, caption=GRID_CAPTION, label="tab:grid")


class IncompleteTablesError(RuntimeError):
    """A configured method lacks a metric that its cell's paper table reports."""


def table_completeness(cells: Sequence[Mapping[str, Any]], out: str | os.PathLike) -> None:
    """``completeness.csv``: for every cell, configured method and metric its paper table
    reports (:func:`clipbias.tables.table_metrics`), whether ``metrics.csv`` has it on the
    evaluation split (``ok``; ``not computable`` when the row says why it is NaN, e.g.
    MaxSkew@1000 on fewer than 1,000 images, with that ``note``; ``not applicable`` for the
    group metrics of a dataset without groups, e.g. ImageNet-A's edit task; ``missing``).
    Random controls (``controls``) are checked for the seed metrics they summarise only.

    ``cells``: ``{"dataset", "model", "seed", "path", "meta", "split", "methods", "controls",
    "metrics"}`` (``meta``: the cell's dataset.json). Raises :class:`IncompleteTablesError`
    naming every missing (cell, method, metric) after logging them: a run that leaves out a
    table's number fails loudly."""
    import pandas as pd

    from clipbias.io import read_csv, read_json
    from clipbias.protocols import missing_table_metrics, table_rows
    from clipbias.tables import GROUP_METRICS

    rows = []
    for cell in cells:
        metrics = read_csv(cell["path"])
        names = list(cell["metrics"])
        if not read_json(cell["meta"]).get("group_names"):
            for name in [n for n in names if n in GROUP_METRICS]:
                names.remove(name)
                rows += [
                    {
                        "dataset": cell["dataset"],
                        "model": cell["model"],
                        "seed": cell["seed"],
                        "split": cell["split"],
                        "method": m,
                        "metric": name,
                        "status": "not applicable",
                        "note": "the dataset has no groups",
                    }  # fmt: skip
                    for m in cell["methods"]
                ]
        checks = [(m, names) for m in cell["methods"]]
        checks += [(m, [n for n in names if n in SEED_METRICS]) for m in cell.get("controls", [])]
        present = table_rows(metrics, cell["split"], names)
        for method, wanted in checks:
            missing = {
                (mm, k): why
                for mm, k, why in missing_table_metrics(metrics, cell["split"], [method], wanted)
            }
            for name in wanted:
                got = present[(present["method"] == method) & (present["metric"] == name)]
                note = ""
                if "note" in got and len(got):
                    note = str(got["note"].fillna("").iloc[0])
                if (method, name) in missing:
                    status, note = "missing", missing[(method, name)]
                elif got["value"].isna().all():
                    status = "not computable"
                else:
                    status = "ok"
                rows.append(
                    {
                        "dataset": cell["dataset"], "model": cell["model"], "seed": cell["seed"],
                        "split": cell["split"], "method": method, "metric": name,
                        "status": status, "note": note,
                    }
                )  # fmt: skip
    table = pd.DataFrame(
        rows, columns=["dataset", "model", "seed", "split", "method", "metric", "status", "note"]
    )
    bad = table[table["status"] == "missing"]
    counts = table["status"].value_counts().to_dict()
    log.info("table completeness: %s", counts)
    if len(bad):
        raise IncompleteTablesError(
            f"{len(bad)} table metric(s) missing (method, metric, cell):\n"
            + bad.to_string(index=False)
            + "\nEvery configured method must report every metric of its paper table "
            "(clipbias.tables.TABLE_METRICS); see the evaluate job of each cell."
        )
    from clipbias.io import write_csv

    write_csv(table, out, comments=["Paper-table metrics per configured method and cell"])
