#!/usr/bin/env python
"""Time the fairness audit (METHODS §6) on ViT-L-14-sized terminal-layer rows.

Synthetic float32 arrays shaped like the last 4 stored layers of ViT-L-14 (``--rows`` images
x 4 layers x 16 heads x 768), a 42-class classifier and a binary protected attribute carried
by one final-layer head. Times, on the CPU with ``--threads`` BLAS threads:

* CAV projections and scores of the 64 heads (``head_projections`` + ``cav_head_scores``);
* ``LogitDeltas`` (per-head logit changes of the 64 candidate heads, built once);
* ``random_control`` for 4 heads in one layer (495 enumerated sets) and for 2 + 1 + 1 heads
  in three layers (20,475 sets, more than 10,000: 1,000 seeded draws): sets per second;
* ``delta_v_bootstrap`` with ``--boot`` resamples;
* ``audit_attribute`` end to end (50/50 split, top-4 and greedy, controls, class analysis).

Writes ``benchmarks/results/audit.csv`` (columns metric,value,unit,device,notes). Usage::

    .venv/bin/python benchmarks/audit.py [--rows 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from clipbias import metrics
from clipbias.methods import audit, ltc

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["metric", "value", "unit", "device", "notes"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--classes", type=int, default=42)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/audit.csv"))
    return p.parse_args(argv)


def synthetic(rows: int, n_classes: int, dim: int, seed: int = 0):
    """Terminal-layer heads [rows, 4, 16, dim] with an attribute head (layer 23, head 4)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, rows)
    p_attr = rng.uniform(0.2, 0.8, n_classes)
    attr = (rng.random(rows) < p_attr[labels]).astype(np.int64)
    classifier = rng.standard_normal((dim, n_classes)).astype(np.float32)
    classifier /= np.linalg.norm(classifier, axis=0, keepdims=True)
    u = rng.standard_normal(dim).astype(np.float32)
    u /= np.linalg.norm(u)
    heads = rng.standard_normal((rows, 4, 16, dim), dtype=np.float32) * np.float32(
        0.3 / np.sqrt(dim)
    )
    stereo = classifier[:, p_attr.argmax()] - classifier[:, p_attr.argmin()]
    sign = (2 * attr - 1).astype(np.float32)[:, None]
    heads[:, 3, 4] += sign * (0.2 * u + 0.15 * stereo)
    noise = rng.standard_normal((rows, dim)).astype(np.float32) * np.float32(2.0 / np.sqrt(dim))
    rest = 0.3 * classifier[:, labels].T + noise
    text = {"v0": rng.normal(0, 0.2, (5, dim)) - 2 * u, "v1": rng.normal(0, 0.2, (5, dim)) + 2 * u}
    return heads, rest.astype(np.float32), classifier, labels, attr, text


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = f"cpu ({args.threads} threads, load avg {os.getloadavg()[0]:.1f} at start)"
    heads, rest, classifier, labels, attr, text = synthetic(args.rows, args.classes, args.dim)
    layers = [20, 21, 22, 23]
    shape = f"{args.rows} x 4 x 16 x {args.dim} float32, {args.classes} classes"
    out = []
    with threadpool_limits(args.threads):
        cavs = audit.zero_shot_cavs(text, axis=["v1", "v0"])

        def score():
            proj = audit.head_projections(heads, cavs[0].vector)
            return audit.cav_head_scores(proj, layers, attr, labels, 1, 0)

        scores, t_score = timed(score)
        ranking = audit.rank_heads(scores, None, layers)
        means = ltc.head_means(heads)
        eng, t_eng = timed(
            audit.LogitDeltas.from_heads, heads, rest, classifier, layers, ranking["head_id"], means
        )
        top = audit.select_top_k(ranking, 4)
        one_layer = [f"L23H{h}" for h in (4, 0, 1, 2)]
        (d1, s1), t_enum = timed(audit.random_control, eng, labels, attr, one_layer, 16)
        mixed = ["L23H4", "L23H0", "L22H0", "L21H0"]
        (d2, s2), t_draw = timed(audit.random_control, eng, labels, attr, mixed, 16)
        p0, p1 = eng.predict(), eng.predict(top)
        _, t_boot = timed(metrics.delta_v_bootstrap, p0, p1, labels, attr, args.boot)
        split = audit.locate_evaluate_split(labels, attr)
        res, t_all = timed(
            audit.audit_attribute,
            heads,
            rest,
            classifier,
            layers,
            labels,
            attr,
            cavs,
            ["v0", "v1"],
            is_locate=split,
            n_boot=args.boot,
        )
    out += [
        {"metric": "cav_scores_seconds", "value": t_score, "unit": "s", "device": device,
         "notes": f"{shape}; 64 heads, d + AUC + within-class"},
        {"metric": "logit_deltas_seconds", "value": t_eng, "unit": "s", "device": device,
         "notes": f"{shape}; 64 candidate heads, built once"},
        {"metric": "random_control_enumerate_sets_per_s", "value": s1["n_sets"] / t_enum,
         "unit": "sets/s", "device": device,
         "notes": f"{shape}; {s1['n_sets']} sets ({s1['mode']}), {t_enum:.2f} s"},
        {"metric": "random_control_sample_sets_per_s", "value": s2["n_sets"] / t_draw,
         "unit": "sets/s", "device": device,
         "notes": f"{shape}; {s2['n_sets']} of {s2['n_possible']} sets ({s2['mode']}), {t_draw:.2f} s"},
        {"metric": "delta_v_bootstrap_seconds", "value": t_boot, "unit": "s", "device": device,
         "notes": f"{args.rows} images, {args.boot} paired resamples"},
        {"metric": "audit_attribute_seconds", "value": t_all, "unit": "s", "device": device,
         "notes": (f"{shape}; 50/50 split, top-4 {res['selection']['top_k']}, greedy "
                   f"{res['selection']['greedy']}, ΔV {res['random_control']['top_k']['delta_v']:.4f}, "
                   f"p {res['random_control']['top_k']['p_value']:.4f}, {args.boot} resamples")},
    ]  # fmt: skip
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for row in out:
            w.writerow({**row, "value": round(float(row["value"]), 3)})
    for row in out:
        sys.stdout.write(f"{row['metric']}: {row['value']:.3f} {row['unit']}  ({row['notes']})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
