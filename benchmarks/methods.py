#!/usr/bin/env python
"""Time LTC locate and correct (and what runs with them) on ViT-B-16-sized feature rows.

Synthetic arrays shaped like stored ViT-B-16 features (``--rows`` images x 12 layers x 12
heads x 512, float32, about 2.9 GB for 10,000 rows) with a planted spurious head, two
classes and four groups. Times, on the CPU with ``--threads`` BLAS threads:

* ``locate_ltc`` (groups variant; margins of all 144 heads, top-1 counts, selection);
* ``ltc_correct`` (mean ablation of S + accept projection of Y);
* ``ltc_random`` with ``--draws`` draws (the LTC-random control, vectorised over draws via
  per-head logit changes), and the same draws one at a time (re-summing the corrected
  embedding per draw, the implementation it replaced); the two must give identical tables;
* ``evaluate_predictions`` with ``--boot`` stratified bootstrap resamples (one method);
* ``locate_plus_correct``: the first two together (issue target: < 30 s for 10,000 rows).

If a default run exists (``logs/<experiment>/benchmarks/locate_ltc/...tsv`` written by
Snakemake's ``benchmark:`` directive), its per-rule wall times are added. Writes
``benchmarks/results/methods.csv`` (columns metric,value,unit,device,notes). Usage::

    .venv/bin/python benchmarks/methods.py [--rows 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from clipbias import metrics
from clipbias.methods import ltc
from clipbias.methods.heads import all_heads
from clipbias.methods.ltc_random import draw_head_sets, draws_table, ltc_random
from clipbias.metrics import evaluate_predictions

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["metric", "value", "unit", "device", "notes"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--experiment", default="planted", help="default run to read timings from")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/methods.csv"))
    return p.parse_args(argv)


def synthetic(rows: int, n_layers: int, n_heads: int, dim: int, seed: int = 0):
    """Features with a planted spurious head (last layer, head 3) and a salient head."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    attr = np.where(rng.random(rows) < 0.9, labels, 1 - labels)  # spurious attribute
    groups = 2 * labels + attr
    classifier = rng.standard_normal((dim, 2)).astype(np.float32)
    classifier /= np.linalg.norm(classifier, axis=0, keepdims=True)
    direction = classifier[:, 1] - classifier[:, 0]
    heads = rng.standard_normal((rows, n_layers, n_heads, dim), dtype=np.float32)
    heads *= np.float32(0.02 / np.sqrt(dim))
    heads[:, -1, 3] += np.outer(2 * attr - 1, direction).astype(np.float32) * 0.05
    heads[:, -1, 5] += np.outer(2 * labels - 1, direction).astype(np.float32) * 0.03
    rest = rng.standard_normal((rows, dim)).astype(np.float32) * 0.02
    q = np.linalg.qr(rng.standard_normal((dim, 4)))[0]
    return heads, rest, classifier, labels, groups, q


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def one_draw_at_a_time(heads, rest, layers, classifier, labels, groups, s, y, q, means, n, pool):
    """The LTC-random draws computed as before vectorisation: per draw, re-sum the corrected
    embedding (``ltc.corrected_embeddings``) and classify it."""
    sets = draw_head_sets(all_heads(pool, heads.shape[2]), s, y, n, seed=42)
    base = heads.sum(axis=(1, 2), dtype=np.float64) + rest
    preds = np.stack(
        [
            metrics.predict(
                ltc.corrected_embeddings(heads, layers, base, rs, ry, q, means), classifier
            )
            for rs, ry in sets
        ]
    )
    return draws_table(preds, sets, labels, groups)


def snakemake_timings(experiment: str, repo: Path = REPO) -> list[dict]:
    """Wall times of a run's jobs from the rules' ``benchmark:`` files, which the workflow
    writes to ``logs/<experiment>/benchmarks/<rule>/``."""
    rows = []
    for rule in ("locate_ltc", "predict", "evaluate", "textspan"):
        for tsv in sorted((repo / "logs" / experiment / "benchmarks" / rule).rglob("*.tsv")):
            lines = tsv.read_text().splitlines()
            if len(lines) >= 2:
                seconds = float(lines[1].split("\t")[0])
                rows.append(
                    {
                        "metric": f"default_run_{rule}_seconds",
                        "value": round(seconds, 2),
                        "unit": "s",
                        "device": "cpu",
                        "notes": f"whole job incl. Python start-up and Parquet reads ({tsv.relative_to(repo)})",
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = f"cpu ({args.threads} threads)"
    shape = f"{args.rows} x {args.layers} x {args.heads} x {args.dim} float32"
    heads, rest, classifier, labels, groups, q = synthetic(
        args.rows, args.layers, args.heads, args.dim
    )
    layers = list(range(args.layers))
    out = []
    with threadpool_limits(args.threads):
        located, t_locate = timed(
            ltc.locate_ltc, heads, rest, classifier, labels, layers, groups, (1, 2), "groups"
        )
        s = [x["head"] for x in located["S"]]
        y = [x["head"] for x in located["Y"]]
        means = ltc.head_means(heads)
        emb, t_correct = timed(ltc.ltc_correct, heads, rest, layers, s, y, q, means)
        preds = (emb @ classifier).argmax(1)
        pool = layers[-4:]
        draws, t_random = timed(
            ltc_random,
            heads,
            rest,
            layers,
            classifier,
            labels,
            groups,
            s,
            y,
            q,
            means,
            n_draws=args.draws,
            pool_layers=pool,
        )
        reference, t_loop = timed(
            one_draw_at_a_time, heads, rest, layers, classifier, labels, groups, s, y, q, means,
            args.draws, pool,
        )  # fmt: skip
        identical = bool(draws.equals(reference))
        _, t_eval = timed(evaluate_predictions, preds, labels, groups, n_boot=args.boot)
    note = f"{shape}; S={s} Y={y}"
    out += [
        {"metric": "locate_ltc_seconds", "value": t_locate, "unit": "s", "device": device,
         "notes": f"{note}; all {args.layers * args.heads} heads are top-1 candidates"},
        {"metric": "ltc_correct_seconds", "value": t_correct, "unit": "s", "device": device,
         "notes": note},
        {"metric": "locate_plus_correct_seconds", "value": t_locate + t_correct, "unit": "s",
         "device": device, "notes": f"{shape}; target < 30 s"},
        {"metric": "ltc_random_seconds", "value": t_random, "unit": "s", "device": device,
         "notes": f"{args.draws} draws from the last 4 layers, vectorised; target < 3 s"},
        {"metric": "ltc_random_one_at_a_time_seconds", "value": t_loop, "unit": "s",
         "device": device, "notes": f"the same {args.draws} draws, one corrected embedding each"},
        {"metric": "ltc_random_identical", "value": str(identical), "unit": "", "device": device,
         "notes": "vectorised draws table == one-at-a-time draws table (heads and metrics)"},
        {"metric": "evaluate_bootstrap_seconds", "value": t_eval, "unit": "s", "device": device,
         "notes": f"one method, {args.boot} stratified resamples, {args.rows} rows"},
    ]  # fmt: skip
    out += snakemake_timings(args.experiment)
    out.append(
        {
            "metric": "environment",
            "value": "",
            "unit": "",
            "device": device,
            "notes": f"numpy {np.__version__}, python {platform.python_version()}, {platform.node()}",
        }
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for row in out:
            if isinstance(row["value"], float):
                row["value"] = f"{row['value']:.3f}"
            w.writerow(row)
    for row in out:
        print(f"{row['metric']:40s} {row['value']!s:>10} {row['unit']:3s} {row['notes']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
