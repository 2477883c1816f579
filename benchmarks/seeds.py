#!/usr/bin/env python
"""The per-seed table of a finished multi-seed experiment (default: planted_seeds).

Runs ``snakemake --configfile config/experiments/planted_seeds.yaml tables`` (all result
tables of the grid's seeds; skipped with ``--no-run``) and writes one row per (dataset,
model, seed) with what the issues ask for:

* zero-shot average and worst-group accuracy and their gap;
* worst-group and average accuracy of every configured method;
* LTC's located S and Y, precision@|S| against the planted ground truth, and LTC's
  percentile among the LTC-random draws;
* the small CLIP's training time.

Writes ``benchmarks/results/seeds.csv`` and prints it with the wall time of the run. The
mean/sd over seeds is the pipeline's own ``summary_over_seeds.csv``. Usage::

    .venv/bin/python benchmarks/seeds.py [--configfile config/experiments/planted_seeds.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from clipbias.report import precision_at_k

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configfile", default="config/experiments/planted_seeds.yaml")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--no-run", action="store_true", help="only collect an existing run")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/seeds.csv"))
    return p.parse_args(argv)


def experiment_config(configfile: str) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(yaml.safe_load((REPO / configfile).read_text()))
    return config


def cell_row(root: Path, dataset: str, model: str, seed: int) -> dict:
    cell = f"{dataset}/{model}/seed-{seed}"
    table = pd.read_csv(root / "metrics" / cell / "metrics.csv")
    v = table.set_index(["method", "metric"])["value"]
    row = {"dataset": dataset, "model": model, "seed": seed}
    row["zero_shot_gap"] = v[("zero_shot", "avg_acc")] - v[("zero_shot", "worst_group_acc")]
    for method in dict.fromkeys(table["method"]):
        for metric in ("avg_acc", "worst_group_acc"):
            row[f"{method}_{metric}"] = v.get((method, metric), float("nan"))
    ltc_file = root / "heads" / cell / "ltc.json"
    if ltc_file.is_file():
        ltc = json.loads(ltc_file.read_text())
        s = [x["head"] for x in ltc["spurious"]]
        row["S"] = ";".join(s)
        row["Y"] = ";".join(x["head"] for x in ltc["salient"])
        gt = root / "ground_truth" / cell / "head_attribute.csv"
        if gt.is_file():
            row["precision_at_S"] = precision_at_k(pd.read_csv(gt), s)
    summary = root / "metrics" / cell / "random_summary.csv"
    if summary.stat().st_size > 1:
        s = pd.read_csv(summary).set_index("metric")
        row["ltc_wg_percentile_among_random"] = float(s.loc["worst_group_acc", "percentile"])
    log = root / "models" / cell / "train_log.json"
    if log.is_file():
        row["train_seconds"] = float(json.loads(log.read_text())["wall_seconds"])
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = experiment_config(args.configfile)
    wall = float("nan")
    if not args.no_run:
        snakemake = str(Path(sys.executable).parent / "snakemake")
        cmd = [snakemake, "--cores", str(args.cores), "--configfile", args.configfile, "tables"]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            return res.returncode
    root = REPO / "results" / config["experiment"]
    rows = [
        cell_row(root, d["name"], m.get("id") or m["name"], seed)
        for d in config["datasets"]
        for m in config["models"]
        for seed in config["seeds"]
    ]
    df = pd.DataFrame(rows)
    df["run_wall_seconds"] = wall
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    cols = [c for c in df.columns if c.endswith("worst_group_acc") or c in ("seed", "S")]
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(df[cols].round(3).to_string(index=False))
    print(f"wrote {out}; run wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
