"""Where LTC's accuracy goes on a multi-class dataset: the loss by step, head and class.

Reads a finished run's stored features, located heads and encoded texts (no model, no
rerun) and recomputes, on the test split:

* the steps alone: ablate S, accept-project Y (one global pair list), both, and the
  scale-preserving accept (each head keeps its norm);
* every S head ablated alone and every Y head accept-projected alone;
* how much of each projected head lies along each insight direction q_k (the reference's
  update makes the first one dominate) and LTC with each pair put first;
* the reference's multi-class path (``insight: per_class``: the pseudo-class's Y heads and
  the texts of the class and its most-confused class).

Each row gives average and worst-group accuracy, the accuracy per class and the share of
test images predicted as each class.

    .venv/bin/python benchmarks/ltc_multiclass.py                   # planted_multiclass, seed 42
    .venv/bin/python benchmarks/ltc_multiclass.py --results results/planted_multiclass \\
        --cell planted_multiclass/planted-vit-wide/seed-42 --locate-split val

Writes ``benchmarks/results/ltc_multiclass.csv`` (``metric,value,unit,device,notes``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from clipbias import metrics  # noqa: E402
from clipbias.features import FeatureSet, read_classifier  # noqa: E402
from clipbias.methods import ltc  # noqa: E402
from clipbias.methods.texts import class_insight_pairs, read_method_texts, read_spec  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results/planted_multiclass")
    ap.add_argument("--cell", default="planted_multiclass/planted-vit-wide/seed-42")
    ap.add_argument("--texts", default="config/texts/planted_multiclass.yaml")
    ap.add_argument("--locate-split", default="val")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/ltc_multiclass.csv"))
    args = ap.parse_args(argv)

    res = Path(args.results)
    fd = res / "features" / args.cell
    fs = FeatureSet.open(fd)
    names, w, _ = read_classifier(fd / "classifier.parquet")
    w = w.astype(np.float64)
    texts = read_method_texts(fd / "texts.parquet")
    located = {k: json.loads((res / "heads" / args.cell / f"{k}.json").read_text())
               for k in ("ltc", "ltc_full")}  # fmt: skip
    means = fs.head_means(split=args.locate_split)
    idx, heads, rest = fs.load(split=args.test_split)
    y, g = idx["label"].to_numpy(), idx["group"].to_numpy()
    layers = fs.layers
    q = ltc.insight_basis(texts["accept_pos"][1], texts["accept_neg"][1])
    rows: list[tuple[str, float, str, str]] = []

    def record(emb: np.ndarray, name: str, note: str) -> None:
        p = np.argmax(np.asarray(emb, np.float64) @ w, axis=1)
        acc = 100 * metrics.avg_overall_accuracy(p, y)
        wg = 100 * metrics.worst_group_accuracy(p, y, g)
        per_class = [100 * np.mean(p[y == c] == c) for c in range(len(names))]
        share = 100 * np.bincount(p, minlength=len(names)) / len(p)
        rows.append((f"{name}:avg_acc", acc, "%", note))
        rows.append((f"{name}:worst_group_acc", wg, "%", note))
        for c, n in enumerate(names):
            rows.append((f"{name}:acc_{n}", per_class[c], "%", "accuracy on the class"))
            rows.append((f"{name}:pred_share_{n}", share[c], "%", "share of predictions"))
        print(f"{name:38s} avg {acc:5.1f} wg {wg:5.1f} | acc/class "
              + " ".join(f"{x:5.1f}" for x in per_class)
              + " | predicted " + " ".join(f"{x:4.1f}" for x in share))  # fmt: skip

    def run(s, yy, name, note, basis=q, scale=False):
        emb = ltc.ltc_correct(heads, rest, layers, s, yy, basis if yy else None, means,
                              scale_preserving=scale)  # fmt: skip
        record(emb, name, note)

    print("classes:", names)
    for k, loc in located.items():
        print(
            k, "S", [x["head"] for x in loc["spurious"]], "Y", [x["head"] for x in loc["salient"]]
        )
    s, yh = ltc.heads_of(located["ltc"])
    sf, yf = ltc.heads_of(located["ltc_full"])
    record(heads.sum((1, 2), dtype=np.float64) + rest, "zero_shot", "no edit")
    run(s, [], "ablate", "mean-ablate S (locate-split means)")
    run([], yh, "accept_global", "accept-project Y, one pair list for every image")
    run(s, yh, "ltc_global", "ablate S + accept Y, one pair list")
    run([], yh, "accept_global_scale_preserving", "accept Y, each head keeps its norm", scale=True)
    run(sf, yf, "ltc_full_global", "LTC-full, one pair list")
    for h in s:
        run([h], [], f"ablate_{h}", "this S head alone")
    for h in yh:
        run([], [h], f"accept_global_{h}", "this Y head alone")

    print("after the accept update, mean |<v, q_k>| per insight direction k:")
    for h in yh:
        li, hh = ltc.head_position(ltc.parse_head(h), layers)
        v = ltc.accept_update(heads[:, li, hh].astype(np.float64), q)
        share = np.abs(v @ q).mean(axis=0)
        print(f"  {h}: " + " ".join(f"{x:.2f}" for x in share))
        for k, x in enumerate(share):
            rows.append((f"accept_global_{h}:abs_q{k + 1}", float(x), "",
                         "mean |<v, q_k>| of the projected head (unit norm)"))  # fmt: skip
    pos, neg = texts["accept_pos"][1], texts["accept_neg"][1]
    n_pairs = len(pos)
    for k in range(n_pairs):
        order = [(k + j) % n_pairs for j in range(n_pairs)]
        run(s, yh, f"ltc_global_first_pair_{k + 1}",
            f"pair list rotated to start with {texts['accept_pos'][0][k]!r} / "
            f"{texts['accept_neg'][0][k]!r}", basis=ltc.insight_basis(pos[order], neg[order]))  # fmt: skip

    pairs = class_insight_pairs(read_spec(args.texts))
    if pairs and "by_class" in located["ltc"]:
        bases = ltc.class_bases(pairs, texts["class_accept_pos"][1], texts["class_accept_neg"][1])
        pseudo = np.argmax((heads.sum((1, 2), dtype=np.float64) + rest) @ w, axis=1)
        for key, sv, yv, label in (("ltc", s, yh, ""), ("ltc_full", sf, yf, "_full")):
            plan = ltc.per_class_plan(located[key]["by_class"], names, bases, yv)
            for ablate, name in ((False, "accept"), (True, "ltc")):
                emb = ltc.ltc_correct_per_class(heads, rest, layers, sv if ablate else [],
                                                pseudo, plan, means)  # fmt: skip
                record(emb, f"{name}{label}_per_class", "the reference's multi-class path")
        print("partners:", {c["class"]: c["partner"] for c in located["ltc"]["by_class"]})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["metric", "value", "unit", "device", "notes"])
        for metric, value, unit, note in rows:
            wr.writerow([metric, f"{value:.4f}", unit, "cpu", note])
    print(f"wrote {out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
