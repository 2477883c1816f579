#!/usr/bin/env python
"""RefineCLIP over few-shot sampling seeds on one finished feature store (no Snakemake).

The grid's seeds also redraw a planted dataset and retrain its model; this script holds the
features fixed and varies only the shots, as the paper's stability study does. For every
sampling seed it runs, through the pipeline's own stage functions, phase 1 (utility and
validation selection), phase 2 (diag adapter, RefineCLIP objective; and STD-FT) and
Tip-Adapter, predicts the test split and compares each with zero-shot on the same images:

* per seed and method: average-group and worst-group accuracy, the worst-group difference
  from zero-shot with its paired, group-stratified bootstrap 95 % interval, wall time;
* over seeds: mean ± sd, and a t-based 95 % interval of the mean worst-group difference.

Writes ``benchmarks/results/refineclip_seeds.csv`` (per seed) and
``refineclip_seeds_summary.csv``. Usage::

    .venv/bin/python benchmarks/refineclip_seeds.py \\
        --features results/planted/features/planted/planted-vit-tiny/seed-42 \\
        --meta results/planted/data/planted/seed-42/dataset.json --shots-split val
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from clipbias import metrics
from clipbias.methods import registry
from clipbias.stages import predict as predict_stage
from clipbias.stages import refineclip as rc_stage

REPO = Path(__file__).resolve().parents[1]
METHODS = ("zero_shot", "tip_adapter", "refineclip", "refineclip_star", "refineclip_star_t",
           "refineclip_adapt", "refineclip_std_ft")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--features", required=True, help="feature folder (manifest.json, classifier)")
    p.add_argument("--meta", required=True, help="dataset.json of the dataset")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--shots-split", default="train")
    p.add_argument(
        "--shot-sampling",
        default="random",
        choices=["random", "group_balanced"],
        help="random (the paper) or group_balanced (the default config's choice)",
    )
    p.add_argument("--val-split", default="val")
    p.add_argument(
        "--T-ratio",
        type=float,
        default=None,
        help="candidate lists of min(15, round(ratio x scored heads)); the default config's "
        "0.234375 = 15/64 (default: none, T = 15)",
    )
    p.add_argument(
        "--step-split",
        default=None,
        help="the adapters keep the step of best worst-group accuracy on this split "
        "(default: none, the last step)",
    )
    p.add_argument("--test-split", default="test")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/refineclip_seeds.csv"))
    return p.parse_args(argv)


def run_method(args, method: str, seed: int, work: Path) -> tuple[Path, float]:
    """One method on one sampling seed through the stages; (predictions file, seconds)."""
    spec = registry.get(method)
    overrides = {"n_per_class": args.n_per_class, "shots_split": args.shots_split,
                 "shot_sampling": args.shot_sampling, "T_ratio": args.T_ratio,
                 "step_split": args.step_split}  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if k in spec.params and v is not None}
    params = spec.resolve_params(overrides if spec.shots else {})
    if "val_split" in params:
        params["val_split"] = args.val_split
    located = {}
    t0 = time.perf_counter()
    if "refineclip" in spec.locators:
        located["refineclip"] = work / f"{method}.json"
        p1 = {k: v for k, v in params.items() if k in registry.REFINECLIP_PHASE1_PARAMS}
        rc_stage.locate_refineclip(args.features, located["refineclip"], seed, **p1)
    if "refineclip_adapter" in spec.locators:
        located["refineclip_adapter"] = work / f"{method}.safetensors"
        rc_stage.adapt_refineclip(args.features, args.meta, located["refineclip"],
                                  located["refineclip_adapter"], work / f"{method}_curves.csv",
                                  seed, params, test_split=args.test_split)  # fmt: skip
    out = work / f"{method}.parquet"
    predict_stage.predict(method, params, args.features, args.meta, out, args.val_split,
                          args.test_split, seed=seed, located=located)  # fmt: skip
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            preds = {}
            for method in args.methods:
                path, secs = run_method(args, method, seed, Path(tmp))
                df, _, info = predict_stage.read_predictions(path)
                preds[method] = (df["pred"].to_numpy(), secs, info["meta"])
            y, g = df["label"].to_numpy(), df["group"].to_numpy()
            base = preds["zero_shot"][0]
            for method, (p, secs, meta) in preds.items():
                diff = metrics.paired_bootstrap_difference(p, base, y, g, n_boot=args.n_boot,
                                                           seed=seed).set_index("metric")  # fmt: skip
                wg = diff.loc["worst_group_acc"]
                rows.append({
                    "seed": seed, "method": method,
                    "avg_group_acc": metrics.avg_group_accuracy(p, y, g),
                    "worst_group_acc": metrics.worst_group_accuracy(p, y, g),
                    "wg_diff": float(wg["diff"]), "wg_diff_ci_low": float(wg["ci_low"]),
                    "wg_diff_ci_high": float(wg["ci_high"]),
                    "heads": ";".join((meta.get("phase1") or meta).get("heads", []) or []),
                    "seconds": secs,
                })  # fmt: skip
            print(pd.DataFrame(rows[-len(preds) :]).round(4).to_string(index=False), flush=True)  # noqa: T201
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    summary = []
    for method, sub in table.groupby("method", sort=False):
        d = sub["wg_diff"].to_numpy()
        half = (
            stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            if len(d) > 1
            else np.nan
        )
        summary.append({
            "method": method, "n_seeds": len(sub),
            "avg_group_mean": sub["avg_group_acc"].mean(), "avg_group_sd": sub["avg_group_acc"].std(),
            "wg_mean": sub["worst_group_acc"].mean(), "wg_sd": sub["worst_group_acc"].std(),
            "wg_diff_mean": d.mean(), "wg_diff_t95_low": d.mean() - half,
            "wg_diff_t95_high": d.mean() + half, "seconds_mean": sub["seconds"].mean(),
        })  # fmt: skip
    summary = pd.DataFrame(summary)
    summary.to_csv(out.with_name(out.stem + "_summary.csv"), index=False)
    print(summary.round(4).to_string(index=False))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
