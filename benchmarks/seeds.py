#!/usr/bin/env python
"""Run the embedded default for several seeds and collect what the issues promise.

For every seed, runs the real workflow (``snakemake --cores N --config seed=S
experiment=seed_S``, i.e. config/config.yaml with only the seed and the output folder
changed), then reads the pipeline's own result tables:

* zero-shot test accuracy, worst-group accuracy and their gap (``metrics/zero_shot.csv``);
* LTC's worst-group accuracy, its gain over zero-shot, and its percentile among the
  LTC-random draws (``metrics/planted/<model>.csv``, ``random/<model>/summary.csv``);
* the located spurious heads S and their precision at |S| against the planted ground truth
  (``heads/.../ltc.json``, ``ground_truth/head_attribute.csv``);
* wall time of the whole command and of training.

Writes ``benchmarks/results/seeds.csv`` (one row per seed) and prints it. Usage::

    .venv/bin/python benchmarks/seeds.py                  # seeds 42 1 2 3, 2 cores
    .venv/bin/python benchmarks/seeds.py --seeds 5 6 --cores 8 --keep-going
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
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--configfile", default=None, help="extra config file (default: none)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/seeds.csv"))
    p.add_argument("--keep-going", action="store_true", help="continue after a failed seed")
    return p.parse_args(argv)


def value(df: pd.DataFrame, method: str, metric: str) -> float:
    row = df[(df["method"] == method) & (df["metric"] == metric)]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def collect(exp_dir: Path, dataset: str, model: str) -> dict:
    zs = pd.read_csv(exp_dir / "metrics/zero_shot.csv")
    table = pd.read_csv(exp_dir / f"metrics/{dataset}/{model}.csv")
    summary = pd.read_csv(exp_dir / f"metrics/{dataset}/random/{model}/summary.csv")
    ltc = json.loads((exp_dir / f"heads/{dataset}/{model}/ltc.json").read_text())
    gt = pd.read_csv(exp_dir / "ground_truth/head_attribute.csv")
    train_log = json.loads((exp_dir / f"models/{model}/train_log.json").read_text())
    s = [x["head"] for x in ltc["spurious"]]
    wg = summary.set_index("metric")
    zs_avg, zs_wg = value(zs, "zero_shot", "avg_acc"), value(zs, "zero_shot", "worst_group_acc")
    ltc_wg = value(table, "ltc", "worst_group_acc")
    return {
        "zero_shot_avg_acc": zs_avg,
        "zero_shot_worst_group_acc": zs_wg,
        "zero_shot_gap": zs_avg - zs_wg,
        "ltc_avg_acc": value(table, "ltc", "avg_acc"),
        "ltc_worst_group_acc": ltc_wg,
        "ltc_wg_gain": ltc_wg - zs_wg,
        "ltc_random_wg_p95": float(wg.loc["worst_group_acc", "p95"]),
        "ltc_wg_percentile_among_random": float(wg.loc["worst_group_acc", "percentile"]),
        "S": ";".join(s),
        "Y": ";".join(x["head"] for x in ltc["salient"]),
        "precision_at_S": precision_at_k(gt, s),
        "train_seconds": float(train_log["wall_seconds"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    if args.configfile:
        config.update(yaml.safe_load(Path(args.configfile).read_text()))
    dataset, model = config["dataset"]["name"], config["model"]["name"]
    snakemake = str(Path(sys.executable).parent / "snakemake")
    rows = []
    for seed in args.seeds:
        exp = f"seed_{seed}"
        cmd = [snakemake, "--cores", str(args.cores)]
        if args.configfile:
            cmd += ["--configfile", args.configfile]
        cmd += ["--config", f"seed={seed}", f"experiment={exp}"]
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
            if not args.keep_going:
                return res.returncode
            rows.append({"seed": seed, "status": f"failed (rc {res.returncode})"})
            continue
        rows.append(
            {
                "seed": seed,
                "status": "ok",
                "wall_seconds": wall,
                **collect(REPO / "results" / exp, dataset, model),
            }
        )
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(3).to_string(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
