#!/usr/bin/env python
"""Check the planted benchmark's targets (issue 11 "Done when", issue 15 item 4) per seed.

For every seed of a named configuration (``default`` = the embedded default, ``multiclass``
= six shapes with colour as protected attribute):

1. generate the dataset (:func:`clipbias.synth.generate`) and train the small CLIP
   (:func:`clipbias.train.train_clip`), timing both;
2. decompose the test split, its two twin splits and the TextSpan split (``val``, the
   locate split of the pipeline) with :func:`clipbias.decompose.decompose`;
3. zero-shot ("a photo of a {}", argmax of the summed decomposition) on test: average and
   worst-group accuracy; with more than two classes also Cramér's V(predicted class,
   colour) and V(true class, colour) (``scipy.stats.contingency.association``) and a
   bootstrap 95 % interval of their difference (test images resampled);
4. the causal background effect per head (:func:`clipbias.ground_truth.causal_head_table`,
   originals vs ``twin_background``) and on the total margin, and the same for colour;
5. TextSpan (:func:`clipbias.methods.textspan.textspan_heads`) of the heads of the last 4
   layers on the planted pool (``pool:`` of the texts file), m = 20, rank = head dim + 2;
   among those heads, the 3 with the largest and the 3 with the smallest |causal background
   effect|: the fraction of their top-5 texts naming a background word (``spurious_words``).

Writes one row per seed (appending to / replacing rows of the same config and seed in)
``benchmarks/results/planted_targets.csv`` and prints it. Datasets, checkpoints and
TextSpan tables are kept under ``--work``; ``--reuse`` skips generation and training when
they exist (the analysis then runs on the existing checkpoint). Usage::

    .venv/bin/python benchmarks/planted_targets.py                         # default, 5 seeds
    .venv/bin/python benchmarks/planted_targets.py --config multiclass --seeds 42 1
    .venv/bin/python benchmarks/planted_targets.py --seeds 42 --reuse       # analysis only
    .venv/bin/python benchmarks/planted_targets.py --seeds 42 --set train.epochs=6
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from scipy.stats.contingency import association

from clipbias import ground_truth as gt
from clipbias.decompose import decompose
from clipbias.methods.textspan import default_rank, textspan_heads
from clipbias.models import load_model, register_model_configs
from clipbias.synth import BACKGROUNDS, generate
from clipbias.text import class_text_embeddings, encode_texts
from clipbias.train import load_split_images, normalise_images, train_clip

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("planted_targets")

# The configurations checked. ``default`` mirrors config/config.yaml (synth, train);
# ``multiclass`` is config/experiments/planted_multiclass.yaml.
CONFIGS = {
    "default": {
        "synth": {
            "image_size": 32,
            "n_train": 12000,
            "n_val": 6000,
            "n_test": 2000,
            "spurious_correlation": 0.95,
            "protected_correlation": 0.5,
        },
        "train": {"epochs": 7, "batch_size": 64, "lr": 0.001},
        "model": "planted-vit-tiny",
        "texts": "config/texts/planted.yaml",
    },
    "multiclass": {
        "synth": {
            "image_size": 32,
            "n_train": 24000,
            "n_val": 6000,
            "n_test": 3600,
            # with colours[c % 3] and majority background c % 2 the six classes cover all six
            # colour x background associations, and the shapes most often confused with
            # each other (circle / square, triangle / bar, cross / triangle) differ in colour
            "classes": ["circle", "ring", "square", "cross", "triangle", "bar"],
            "colours": ["red", "yellow", "purple"],
            "spurious_correlation": 0.9,
            "protected_correlation": 0.8,
            "plain_fraction": 0.4,
        },
        # as config/experiments/planted_multiclass.yaml
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.001},
        "model": "planted-vit-wide",
        "texts": "config/texts/planted_multiclass.yaml",
    },
}
TEMPLATES = ["a photo of a {}"]
LAST_LAYERS = 4
TEXTSPAN_M = 20
TOP_K_TEXTS = 5
N_HEADS_CHECKED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "clipbias_planted_targets"),
        help="datasets, models (default: a folder in the system's temporary directory)",
    )
    p.add_argument("--reuse", action="store_true", help="reuse existing dataset and checkpoint")
    p.add_argument("--tag", default="", help="label of this run (column 'tag')")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a synth/train setting or the model, e.g. train.epochs=6 (YAML value)",
    )
    p.add_argument("--textspan-split", default="val")
    p.add_argument("--model-config-dir", default=None, help="extra open_clip model configs")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/planted_targets.csv"))
    return p.parse_args(argv)


def resolve_config(name: str, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(CONFIGS[name])
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if key == "model":
            cfg["model"] = value
            continue
        if section not in ("synth", "train") or not field:
            raise SystemExit(
                f"--set expects synth.KEY=VALUE, train.KEY=VALUE or model=NAME: {item!r}"
            )
        cfg[section][field] = yaml.safe_load(value)
    return cfg


# ------------------------------------------------------------------------------ analysis


def decompose_split(model, root: Path, index: pd.DataFrame, split: str, batch: int = 500):
    """Rows of ``split`` (index order), heads [N, L, H, D] and embeddings [N, D] (numpy)."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    rows, imgs = load_split_images(root, split, size, index=index)
    heads, emb = [], []
    for s in range(0, len(rows), batch):
        dec = decompose(model, normalise_images(model, imgs[s : s + batch]))
        heads.append(dec.heads.numpy())
        emb.append(dec.embedding.numpy())
    return rows, np.concatenate(heads), np.concatenate(emb)


def cramers_v(rows: np.ndarray, cols: np.ndarray) -> float:
    """Cramér's V of the contingency table of two label arrays (empty rows/cols dropped)."""
    table = pd.crosstab(rows, cols).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    return float(association(table, method="cramer"))


def v_difference(pred, true, attr, n_boot: int, seed: int) -> dict:
    """V(pred, attr) - V(true, attr) with a 95 % bootstrap interval (images resampled)."""
    v_pred, v_true = cramers_v(pred, attr), cramers_v(true, attr)
    rng = np.random.default_rng(seed)
    n = len(pred)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        i = rng.integers(0, n, n)
        diffs[b] = cramers_v(pred[i], attr[i]) - cramers_v(true[i], attr[i])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "v_pred_colour": v_pred,
        "v_true_colour": v_true,
        "dv_colour": v_pred - v_true,
        "dv_ci_low": float(lo),
        "dv_ci_high": float(hi),
    }


def background_fraction(table: pd.DataFrame, head_ids: list[str], words: set[str]) -> float:
    """Share of the top-k TextSpan texts of ``head_ids`` that contain a word of ``words``."""
    hits, total = 0, 0
    for hid in head_ids:
        texts = table[table["head_id"] == hid].sort_values("rank")["text"].head(TOP_K_TEXTS)
        for t in texts:
            total += 1
            hits += bool(set(t.lower().replace(",", " ").split()) & words)
    return hits / total if total else float("nan")


def r2_by(x: np.ndarray, factor: np.ndarray) -> float:
    """Share of the variance of the rows of ``x`` [N, D] explained by the means of ``factor``."""
    xc = x - x.mean(0)
    total = float((xc**2).sum())
    explained = sum(
        (factor == v).sum() * float(((x[factor == v].mean(0) - x.mean(0)) ** 2).sum())
        for v in np.unique(factor)
    )
    return explained / total if total > 0 else float("nan")


def run_seed(cfg: dict, seed: int, args: argparse.Namespace) -> dict:
    work = Path(args.work) / args.config / (args.tag or "base") / f"seed_{seed}"
    ds, ckpt, train_log = work / "data", work / "model.safetensors", work / "train_log.json"
    row: dict = {"config": args.config, "tag": args.tag, "seed": seed}
    if not (args.reuse and (ds / "dataset.json").exists()):
        t0 = time.perf_counter()
        generate(ds, seed=seed, **cfg["synth"])
        row["generate_seconds"] = time.perf_counter() - t0
    if not (args.reuse and ckpt.exists()):
        train_clip(
            ds,
            ckpt,
            train_log,
            model_name=cfg["model"],
            seed=seed,
            device="cpu",
            num_threads=args.threads,
            **cfg["train"],
        )
    tlog = json.loads(train_log.read_text())
    row["train_seconds"] = tlog["wall_seconds"]
    row["train_cpu_seconds"] = tlog.get("cpu_seconds", float("nan"))
    row["train_epochs"] = len(tlog["epochs"])
    row["final_loss"] = tlog["epochs"][-1]["loss"]

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    meta = json.loads((ds / "dataset.json").read_text())
    index = pd.read_parquet(ds / "index.parquet")
    loaded = load_model(cfg["model"], pretrained=str(ckpt), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    classes = meta["classes"]
    clf = class_text_embeddings(model, tok, classes, TEMPLATES, convention="ltc")
    clf = clf.numpy().T  # [D, C]
    dec = {s: decompose_split(model, ds, index, s) for s in
           ("test", "twin_background", "twin_protected", args.textspan_split)}  # fmt: skip

    # zero-shot on test
    rows, _, emb = dec["test"]
    y = rows["label"].to_numpy()
    pred = (emb @ clf).argmax(1)
    correct = pred == y
    groups = rows["group"].to_numpy()
    group_acc = {int(g): float(correct[groups == g].mean()) for g in np.unique(groups)}
    row["zs_avg_acc"] = float(correct.mean())
    row["zs_worst_group_acc"] = min(group_acc.values())
    row["zs_gap"] = row["zs_avg_acc"] - row["zs_worst_group_acc"]
    row["zs_group_acc"] = json.dumps({meta["group_names"][g]: round(a, 4) for g, a in
                                      group_acc.items()})  # fmt: skip
    if len(classes) > 2:
        colour = rows["attr_colour"].to_numpy()
        row.update(v_difference(pred, y, colour, args.n_boot, seed))

    # causal effects from the twins
    full = pd.concat([rows, dec["twin_background"][0], dec["twin_protected"][0]], ignore_index=True)
    heads_all = np.concatenate(
        [dec["test"][1], dec["twin_background"][1], dec["twin_protected"][1]]
    )
    emb_all = np.concatenate([emb, dec["twin_background"][2], dec["twin_protected"][2]])
    layers = list(range(heads_all.shape[1]))
    assoc_bg = [BACKGROUNDS.index(meta["majority_background"][c]) for c in classes]
    colours = meta["attributes"]["colour"]
    assoc_col = [colours.index(meta["associated_colour"][c]) for c in classes]
    causal = {}
    for kind, attr, assoc in (("background", "background", assoc_bg),
                              ("protected", "colour", assoc_col)):  # fmt: skip
        o_pos, t_pos = gt.twin_pairs(full, kind)
        labels = full["label"].to_numpy()[o_pos]
        orient = gt.twin_orientation(
            full[f"attr_{attr}"].to_numpy()[o_pos],
            full[f"attr_{attr}"].to_numpy()[t_pos],
            labels,
            assoc,
        )
        table = gt.causal_head_table(heads_all[o_pos], heads_all[t_pos], layers, clf, labels,
                                     orient, attribute=attr, n_boot=args.n_boot, seed=seed)  # fmt: skip
        total = gt.causal_total_effect(emb_all[o_pos], emb_all[t_pos], clf, labels, orient,
                                       attribute=attr, n_boot=args.n_boot, seed=seed)  # fmt: skip
        causal[kind] = table
        row[f"causal_{attr}_total"] = float(total["effect"].iloc[0])
        row[f"causal_{attr}_total_ci"] = (
            f"[{total['ci_low'].iloc[0]:.4f}, {total['ci_high'].iloc[0]:.4f}]"
        )
        row[f"causal_{attr}_top3"] = ";".join(table.sort_values("rank")["head_id"].head(3))
        table.to_csv(work / f"causal_{attr}.csv", index=False)

    # TextSpan on the last layers, planted pool
    spec = yaml.safe_load((REPO / cfg["texts"]).read_text())
    pool = list(spec["pool"])
    pool_emb = encode_texts(model, tok, pool).numpy()
    pool_emb /= np.linalg.norm(pool_emb, axis=1, keepdims=True)
    n_layers = heads_all.shape[1]
    keep = list(range(n_layers - LAST_LAYERS, n_layers))
    ts_heads = dec[args.textspan_split][1][:, keep]
    head_dim = model.visual.transformer.resblocks[0].attn.head_dim
    ts = textspan_heads(ts_heads, keep, pool_emb, pool, m=TEXTSPAN_M, rank=default_rank(head_dim))
    ts.to_csv(work / "textspan.csv", index=False)
    bg = causal["background"]
    bg = bg[bg["layer"].isin(keep)].sort_values("abs_effect", ascending=False)
    top, bottom = (
        bg["head_id"].head(N_HEADS_CHECKED).tolist(),
        bg["head_id"].tail(N_HEADS_CHECKED).tolist(),
    )
    words = set(spec["spurious_words"])
    row["ts_top3_heads"] = ";".join(top)
    row["ts_bottom3_heads"] = ";".join(bottom)
    row["ts_top3_bg_frac"] = background_fraction(ts, top, words)
    row["ts_bottom3_bg_frac"] = background_fraction(ts, bottom, words)
    # diagnostics: what the checked heads carry on test (share of a head's variance explained
    # by the place / the class), and the same check with heads ranked by the causal change of
    # their whole output (mean |c(x') - c(x)| over background pairs) instead of the margin
    test_heads = dec["test"][1]
    factors = {"place": rows["attr_place"].to_numpy(), "class": y}
    for name, ids in (("top3", top), ("bottom3", bottom)):
        for fname, f in factors.items():
            row[f"{name}_{fname}_r2"] = float(
                np.mean(
                    [
                        r2_by(test_heads[:, int(h[1:].split("H")[0]), int(h.split("H")[1])], f)
                        for h in ids
                    ]
                )  # fmt: skip
            )
    o_pos, t_pos = gt.twin_pairs(full, "background")
    change = np.linalg.norm(heads_all[t_pos] - heads_all[o_pos], axis=-1).mean(0)  # [L, H]
    out_rank = sorted(bg["head_id"], key=lambda h: -change[int(h[1:].split("H")[0]),
                                                          int(h.split("H")[1])])  # fmt: skip
    row["ts_top3_bg_frac_output"] = background_fraction(ts, out_rank[:N_HEADS_CHECKED], words)
    row["ts_bottom3_bg_frac_output"] = background_fraction(ts, out_rank[-N_HEADS_CHECKED:], words)
    row["ts_pool_bg_frac"] = float(np.mean([bool(set(t.split()) & words) for t in pool]))
    row["analysis_seconds"] = time.perf_counter() - t0
    return row


def targets(row: dict) -> str:
    """Which targets of issue 11 this row misses ("" = all met)."""
    miss = []
    if row["config"] == "default":
        if row["zs_avg_acc"] < 0.85:
            miss.append("avg<85")
        if row["zs_worst_group_acc"] > row["zs_avg_acc"] - 0.10:
            miss.append("wg>avg-10")
        if row["ts_top3_bg_frac"] < 0.60:
            miss.append("top3<60%")
        if row["ts_bottom3_bg_frac"] >= 0.30:
            miss.append("bottom3>=30%")
    else:
        if row["zs_avg_acc"] < 0.70:
            miss.append("avg<70")
        if row["dv_colour"] < 0.05:
            miss.append("dV<0.05")
        if row["dv_ci_low"] <= 0:
            miss.append("dV CI includes 0")
    return ";".join(miss)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    cfg = resolve_config(args.config, args.set)
    if args.model_config_dir:
        register_model_configs(args.model_config_dir)
    log.info("config %s: %s", args.config, json.dumps(cfg))
    out = Path(args.out)
    for seed in args.seeds:
        row = run_seed(cfg, seed, args)
        row["settings"] = json.dumps({"synth": cfg["synth"], "train": cfg["train"]})
        row["missed_targets"] = targets(row)
        new = pd.DataFrame([row])
        if out.exists():
            old = pd.read_csv(out, keep_default_na=False)
            same = (
                (old["config"] == args.config)
                & (old["tag"].astype(str) == args.tag)
                & (old["seed"] == seed)
            )
            new = pd.concat([old[~same], new], ignore_index=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        new.to_csv(out, index=False, float_format="%.4f")
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            show = [c for c in new.columns if not c.startswith(("zs_group", "settings"))]
            print(new[show].round(3).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
