"""Write tests/data/report_fixture/: a tiny, made-up experiment in the result-table formats of
docs/DESIGN.md ("Result tables (what the report notebooks read)").

The fixture mirrors ``results/{experiment}/`` for one grid cell of the planted benchmark
(dataset ``planted``, model ``planted-vit-tiny``: 4 layers x 4 heads) and three seeds (the
first one complete, the others with metric tables only, for the over-seeds report). The numbers are simulated, not computed by
a model: per-group accuracies are drawn per method and passed through
``clipbias.metrics.evaluate_predictions`` (so the tidy metric tables have exactly the
evaluate stage's columns); the LTC frequency maps go through
``clipbias.methods.ltc.contrastive_selection``; the dataset folder is a small
``clipbias.synth.generate`` run. The output is committed; rerun after a format change:

    .venv/bin/python tests/data/make_report_fixture.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from clipbias.ground_truth import GT_COLUMNS, score_locators
from clipbias.io import read_json
from clipbias.methods.ltc import contrastive_selection
from clipbias.methods.ltc_random import random_control_summary, random_metric_rows
from clipbias.metrics import evaluate_predictions
from clipbias.stages.evaluate import paired_rows, summarize_seeds
from clipbias.synth import generate

OUT = Path(__file__).resolve().parent / "report_fixture"
DATASET = "planted"
MODEL = "planted-vit-tiny"
LAYERS = [0, 1, 2, 3]
N_HEADS = 4
SEED = 20240611
SEEDS = [42, 1, 2]
N_PER_GROUP = 400  # test split: balanced over class x background
N_BOOT = 200

# Per-group accuracies (groups: circle/land, circle/water, triangle/land, triangle/water).
GROUP_ACC = {
    "zero_shot": [0.97, 0.58, 0.62, 0.96],
    "ortho_cali": [0.95, 0.66, 0.68, 0.94],
    "roboshot": [0.93, 0.70, 0.71, 0.92],
    "roboshot_accept": [0.96, 0.61, 0.64, 0.95],
    "textspan_ablation": [0.94, 0.72, 0.74, 0.93],
    "ltc": [0.92, 0.84, 0.85, 0.91],
    "ltc_transductive": [0.92, 0.85, 0.85, 0.91],
    "ltc_scale_preserving": [0.91, 0.83, 0.84, 0.91],
    "ablate": [0.93, 0.79, 0.80, 0.92],
    "ltc_no_ablate": [0.96, 0.63, 0.66, 0.95],
    "ltc_full": [0.92, 0.81, 0.83, 0.91],
}


def head_id(l: int, h: int) -> str:
    return f"L{l}H{h}"


def simulate_predictions(rng, accs, n_per_group):
    groups = np.repeat(np.arange(len(accs)), n_per_group)
    labels = groups // 2
    correct = rng.random(len(groups)) < np.asarray(accs)[groups]
    preds = np.where(correct, labels, 1 - labels)
    return preds, labels, groups


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def metrics_tables(rng, group_names, shift=0.0):
    """Tidy tables and simulated (preds, labels, groups) per method."""
    tables, sims = {}, {}
    for method, accs in GROUP_ACC.items():
        accs = np.clip(np.asarray(accs) + shift + rng.normal(0, 0.01, len(accs)), 0.05, 0.99)
        preds, labels, groups = simulate_predictions(rng, accs, N_PER_GROUP)
        sims[method] = (preds, labels, groups)
        tables[method] = evaluate_predictions(
            preds,
            labels,
            groups,
            group_names=group_names,
            method=method,
            split="test",
            n_boot=N_BOOT,
            seed=SEED,
        )
    return tables, sims


def random_draws(rng, spurious, salient, zero_shot):
    """100 LTC-random draws (columns of the correct stage's draws.csv)."""
    pool = [head_id(l, h) for l in LAYERS for h in range(N_HEADS)]
    pool_s = [h for h in pool if h not in spurious]
    pool_y = [h for h in pool if h not in salient]
    rows = []
    for k in range(100):
        rs = rng.choice(pool_s, size=len(spurious), replace=False)
        ry = rng.choice(pool_y, size=len(salient), replace=False)
        wg = float(np.clip(zero_shot["worst_group_acc"] + rng.normal(0.03, 0.05), 0.3, 0.95))
        avg = float(np.clip(zero_shot["avg_acc"] + rng.normal(0.0, 0.015), wg, 0.99))
        avg_group = float(np.clip(avg + rng.normal(0.0, 0.003), wg, 0.99))
        rows.append(
            {
                "draw": k,
                "spurious": ";".join(rs),
                "salient": ";".join(ry),
                "avg_acc": avg,
                "avg_group_acc": avg_group,
                "worst_group_acc": wg,
                "gap": avg - wg,
            }
        )
    return pd.DataFrame(rows)


def ltc_json(rng, variant, planted_s, planted_y):
    """Frequency maps peaked on the planted heads -> the DESIGN ltc.json structure."""
    n = len(LAYERS) * N_HEADS
    ids = [(l, h) for l in LAYERS for h in range(N_HEADS)]
    w_c = rng.gamma(0.6, 1.0, n)
    w_w = rng.gamma(0.6, 1.0, n)
    for i, (l, h) in enumerate(ids):
        if head_id(l, h) in planted_s:
            w_w[i] += 6.0 if head_id(l, h) == planted_s[0] else 3.5
        if head_id(l, h) in planted_y:
            w_c[i] += 5.0
    w_c[[0, 1, 4]] = 0.0  # a few inactive heads, as in real runs
    w_w[[0, 1]] = 0.0
    n_correct, n_wrong = 812, 231
    c = np.round(w_c / w_c.sum() * n_correct).astype(np.int64)  # winner counts per head
    w = np.round(w_w / w_w.sum() * n_wrong).astype(np.int64)
    f_c, f_w = c / n_correct, w / n_wrong
    s_ids, y_ids, kappa, n_act = contrastive_selection(c, w)
    d = f_w - f_c

    def entry(i, score):
        l, h = ids[i]
        return {"head": head_id(l, h), "layer": l, "index": h, "score": float(score)}

    return {
        "variant": variant,
        "locate_split": "val",
        "group_labels": "true",
        "attribute_accuracy": None,
        "layers": LAYERS,
        "n_heads": N_HEADS,
        "minority_groups": [1, 2] if variant == "groups" else None,
        "kappa": float(kappa),
        "n_active": int(n_act),
        "n_correct": n_correct,
        "n_wrong": n_wrong,
        "n_samples": 2000,
        "baseline_accuracy": 0.9,
        "spurious": [entry(i, d[i]) for i in s_ids],
        "salient": [entry(i, -d[i]) for i in y_ids],
        "frequencies": [
            {
                "head": head_id(l, h),
                "layer": l,
                "index": h,
                "f_correct": float(f_c[i]),
                "f_wrong": float(f_w[i]),
            }
            for i, (l, h) in enumerate(ids)
        ],
    }


BACKGROUND_TEXTS = [
    "a photo of the ocean",
    "a land background",
    "a picture of a lake",
    "a photo of a forest",
    "a water background",
    "a photo of grass",
]
SHAPE_TEXTS = [
    "a circle shape",
    "a photo of a triangle",
    "a small circle",
    "a triangle shape",
    "a picture of a circle",
]
OTHER_TEXTS = [
    "a red object",
    "a yellow object",
    "a bright picture",
    "a blurry photo",
    "a small drawing",
    "an image with noise",
    "a dark picture",
]


def textspan_table(rng, spurious, salient, m=5):
    rows = []
    for l in LAYERS:
        for h in range(N_HEADS):
            hid = head_id(l, h)
            if hid in spurious:
                pool = BACKGROUND_TEXTS
            elif hid in salient:
                pool = SHAPE_TEXTS
            else:
                pool = OTHER_TEXTS
            texts = list(rng.choice(pool, size=m, replace=False))
            ve = np.sort(rng.uniform(0.01, 0.2, m))[::-1]
            cum = np.cumsum(ve)
            for r in range(m):
                rows.append(
                    {
                        "layer": l,
                        "head": h,
                        "head_id": hid,
                        "rank": r + 1,
                        "text_index": int(rng.integers(0, 500)),
                        "text": texts[r],
                        "ve": float(ve[r]),
                        "cum_ve": float(cum[r]),
                    }
                )
    return pd.DataFrame(rows)


def ground_truth_table(rng, planted):
    rows = []
    for l in LAYERS:
        for h in range(N_HEADS):
            hid = head_id(l, h)
            effect = rng.normal(0.0, 0.02) * (1 + l)
            if hid in planted:
                effect = -(0.9 if hid == planted[0] else 0.5) + rng.normal(0, 0.03)
            half = abs(rng.normal(0.03, 0.01)) + 0.005
            rows.append(
                {
                    "layer": l,
                    "head": h,
                    "head_id": hid,
                    "effect": effect,
                    "abs_effect": abs(effect),
                    "ci_low": effect - half,
                    "ci_high": effect + half * rng.uniform(0.8, 1.2),
                }
            )
    df = pd.DataFrame(rows)
    order = np.lexsort((df["head"], df["layer"], -df["abs_effect"]))
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(1, len(df) + 1)
    df["rank"] = rank
    df["attribute"] = "background"
    df["kind"] = "causal"
    return df


def output_truth_table(rng, planted):
    """Background output sensitivity (kind ``output``, unsigned, 0..2): ``planted`` high."""
    df = ground_truth_table(rng, planted)
    df["effect"] = np.clip(df["abs_effect"] * 2 + rng.uniform(0, 0.3, len(df)), 0, 2)
    lo, hi = df["ci_low"] - df["ci_low"].min(), df["ci_high"] - df["ci_low"].min()
    df["ci_low"], df["ci_high"] = df["effect"] - 0.05 * lo, df["effect"] + 0.05 * hi
    df["abs_effect"] = df["effect"]
    order = np.lexsort((df["head"], df["layer"], -df["abs_effect"]))
    df.loc[df.index[order], "rank"] = np.arange(1, len(df) + 1)
    df["kind"] = "output"
    return df


def colour_truth_table(rng, planted):
    """Causal colour effects in the ground-truth layout (colour carried by ``planted``)."""
    df = ground_truth_table(rng, planted)
    df["attribute"] = "colour"
    return df


def train_log(rng):
    epochs = []
    loss = 4.6
    for e in range(1, 11):
        loss = loss * 0.78 + 0.12 + rng.normal(0, 0.02)
        epochs.append(
            {
                "epoch": e,
                "loss": float(loss),
                "seconds": float(rng.uniform(30, 34)),
                "logit_scale": float(14.3 + 3.0 * e),
            }
        )
    return {
        "epochs": epochs,
        "wall_seconds": float(sum(x["seconds"] for x in epochs) + 4.0),
        "seed": 42,
        "n_images": 12000,
        "steps": 470,
        "config": {"epochs": 10, "batch_size": 256, "lr": 0.001},
        "device": "cpu",
        "num_threads": 2,
        "torch_version": "fixture",
        "open_clip_version": "fixture",
    }


# ------------------------------------------------------------------------ fairness audit
AUDIT_D = 8  # dims 0-1 class directions, 2 the colour direction u, 3-7 noise
AUDIT_CARRIERS = {(3, 1): 1.0, (2, 3): 0.45}  # heads carrying colour (and a push to circle)
AUDIT_POOL = BACKGROUND_TEXTS + SHAPE_TEXTS + OTHER_TEXTS
AUDIT_CONCEPTS = {
    "red": ["a red circle", "a red triangle", "a photo of a red circle",
            "a photo of a red triangle", "a red shape"],
    "yellow": ["a yellow circle", "a yellow triangle", "a photo of a yellow circle",
               "a photo of a yellow triangle", "a yellow shape"],
}  # fmt: skip
AUDIT_BIAS = {
    v: [f"a {v} shape", f"a {v} circle", f"a {v} triangle", f"a small {v} circle",
        f"a small {v} triangle", f"a picture of a {v} circle", f"a picture of a {v} triangle",
        f"a drawing of a {v} circle", f"a {v} icon", f"a bright {v} object"]
    for v in ("red", "yellow")
}  # fmt: skip


def audit_split(rng, n, split):
    """Simulated decomposition: colour (yellow = 1) goes with triangle in 80 % of images; the
    carrier heads add (2a - 1)(u - push e0), pushing yellow images away from circle."""
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    heads = rng.normal(0, 0.1, (n, len(LAYERS), N_HEADS, AUDIT_D)).astype(np.float32)
    sign = (2 * a - 1).astype(np.float32)
    for (layer, h), w in AUDIT_CARRIERS.items():
        heads[:, layer, h, 2] += w * sign
        heads[:, layer, h, 0] -= 0.6 * w * sign
    rest = rng.normal(0, 0.35, (n, AUDIT_D)).astype(np.float32)
    rest[np.arange(n), y] += 1.0
    index = pd.DataFrame(
        {
            "image_id": [f"{split}_{i:05d}" for i in range(n)],
            "path": [f"images/{split}/{split}_{i:06d}.png" for i in range(n)],
            "split": split,
            "label": y,
            "group": 2 * y + rng.integers(0, 2, n),
            "attr_background": rng.integers(0, 2, n),
            "attr_place": rng.integers(0, 4, n),
            "attr_colour": a,
        }
    )
    return index, heads, rest


def audit_fixture(rng, data_dir: Path, cell: str) -> None:
    """Run the audit stage (clipbias.stages.audit) on a simulated feature store: the tables
    under audit/<cell>/ and heads/<cell>/audit.json are the stage's own output."""
    import tempfile

    from clipbias.features import build_table, write_classifier, write_manifest, write_shard
    from clipbias.methods.audit import audit_texts, text_table
    from clipbias.methods.texts import write_audit_texts, write_method_texts
    from clipbias.stages.audit import audit

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parts = [audit_split(rng, 800, "val"), audit_split(rng, 600, "test")]
        index = pd.concat([p[0] for p in parts], ignore_index=True)
        heads = np.concatenate([p[1] for p in parts])
        rest = np.concatenate([p[2] for p in parts])
        emb = heads.sum((1, 2)) + rest
        meta = {"layers": LAYERS, "n_layers": len(LAYERS), "n_heads": N_HEADS,
                "dim": AUDIT_D, "head_dim": 2}  # fmt: skip
        ones = np.ones(len(index), np.float32)
        table = build_table(index, heads, rest, emb, ones, ones, ones, LAYERS, "float32", meta)
        write_shard(table, root / "shard-00000.parquet")
        write_manifest([root / "shard-00000.parquet"], root / "manifest.json")
        write_classifier(root / "classifier.parquet", ["circle", "triangle"],
                         np.eye(2, AUDIT_D, dtype=np.float32), {})  # fmt: skip
        pool = rng.normal(0, 1, (len(AUDIT_POOL), AUDIT_D))
        pool[:, 2] *= 0.05
        write_method_texts(root / "texts.parquet", {"pool": AUDIT_POOL}, pool)
        spec = {"protected_attributes": {"colour": {
            "description": "object colour (simulated)", "values": AUDIT_CONCEPTS,
            "bias_texts": AUDIT_BIAS, "axis": ["yellow", "red"]}}}  # fmt: skip
        attrs = audit_texts(spec)
        texts = text_table(attrs)
        text_emb = rng.normal(0, 0.3, (len(texts), AUDIT_D))
        sign = np.where(texts["value"] == "yellow", 1.0, -1.0)
        text_emb[:, 2] += np.where(texts["role"] == "concept", 3.0, 1.0) * sign
        text_emb[:, 0] -= np.where(texts["role"] == "bias", 0.6, 0.0) * sign
        text_emb[:, 3] += 2.0
        write_audit_texts(root / "audit_texts.parquet", texts, text_emb, attrs)
        out_dir = OUT / "audit" / cell
        audit(
            root, data_dir / "dataset.json", root / "texts.parquet", root / "audit_texts.parquet",
            out_dir, OUT / "heads" / cell / "audit.json", "val", "test", seed=SEEDS[0],
            params={"n_boot": N_BOOT, "n_draws": 200, "top_classes": 2,
                    "textspan": {"m": 4, "first_rank_max": 2}},
        )  # fmt: skip


# --------------------------------------------------------------------------- RefineCLIP
# A second cell, waterbirds / ViT-B-16 (seeds 42, 1, 2), for notebooks/report_refineclip.ipynb:
# the RefineCLIP family and its baselines with simulated group accuracies, a phase-1 file and
# phase-2 curves computed by the real algorithms on a simulated decomposition (4 stored layers
# x 12 heads, D = 32; head L11H3 carries a background direction that points to "waterbird"),
# and the α/β sensitivity table. Its own generator, so the planted cell above is unchanged.
RC_DATASET, RC_MODEL = "waterbirds", "ViT-B-16"
RC_CLASSES = ["landbird", "waterbird"]
RC_GROUPS = ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
RC_LAYERS, RC_HEADS, RC_DIM = [8, 9, 10, 11], 12, 32
RC_GROUP_ACC = {
    "zero_shot": [0.96, 0.52, 0.46, 0.94],
    "tip_adapter": [0.96, 0.55, 0.49, 0.94],
    "tip_adapter_f": [0.95, 0.58, 0.52, 0.93],
    "textspan_ablation": [0.93, 0.66, 0.60, 0.92],
    "refineclip": [0.92, 0.71, 0.66, 0.91],
    "refineclip_star": [0.91, 0.74, 0.69, 0.90],
    "refineclip_n20": [0.92, 0.73, 0.68, 0.91],
    "refineclip_adapt": [0.93, 0.69, 0.64, 0.92],
    "refineclip_std_ft": [0.90, 0.61, 0.57, 0.88],
    "refineclip_classifier": [0.90, 0.80, 0.78, 0.89],
}
RC_INFO = {
    m: {"name": "refineclip" if m == "refineclip_n20" else m,
        "n_per_class": 20 if m == "refineclip_n20" else (10 if m != "zero_shot" else None),
        "ablate": True if m == "refineclip_classifier" else None}
    for m in RC_GROUP_ACC
}  # fmt: skip
RC_TARGETS = [1]  # edit target: waterbird


def _rc_split(rng, n, corr, text, bg_dir, cls_dir):
    """Simulated decomposition [n, 4, 12, D] of a Waterbirds-like split."""
    y = rng.integers(0, 2, n)
    bg = np.where(rng.random(n) < corr, y, 1 - y)
    heads = 0.05 * rng.standard_normal((n, len(RC_LAYERS), RC_HEADS, RC_DIM))
    heads[:, 3, 3] += 0.9 * np.outer(2 * bg - 1, bg_dir)  # L11H3: background
    heads[:, 2, 5] += 0.6 * np.outer(2 * y - 1, cls_dir)  # L10H5: the bird
    rest = 0.1 * rng.standard_normal((n, RC_DIM)) + text.mean(axis=1)
    return heads, rest, y, 2 * y + bg


def refineclip_fixture() -> None:
    from clipbias.methods import refineclip as rc
    from clipbias.methods import refineclip_adapt as ra
    from clipbias.methods.fewshot import target_eval_sets
    from clipbias.stages.refineclip import sensitivity_table

    rng = np.random.default_rng(SEED + 12)
    text = rng.standard_normal((RC_DIM, 2))
    text /= np.linalg.norm(text, axis=0)
    bg_dir = text[:, 1] - text[:, 0] + 0.3 * rng.standard_normal(RC_DIM)
    bg_dir /= np.linalg.norm(bg_dir)
    cls_dir = text[:, 1] - text[:, 0]
    cls_dir /= np.linalg.norm(cls_dir)
    cell = f"{RC_DATASET}/{RC_MODEL}/seed-{SEEDS[0]}"
    meta = {"name": RC_DATASET, "classes": RC_CLASSES, "group_names": RC_GROUPS,
            "spurious_attribute": "place", "minority_groups": [1, 2]}  # fmt: skip
    write_json(meta, OUT / "data" / RC_DATASET / "dataset.json")

    # phase 1 on 10 shots per class (75 % of the backgrounds match the class)
    h, r, y, _ = _rc_split(rng, 400, 0.75, text, bg_dir, cls_dir)
    shots = rc.sample_shots(y, 10, seed=SEEDS[0])
    sh, sr, sy = h[shots], r[shots], y[shots]
    p1 = rc.identify_then_ablate(sh, sr, text, sy, RC_LAYERS, T=8, class_names=RC_CLASSES)
    p1["shots"] = {"split": "train", "n_per_class": 10, "seed": SEEDS[0],
                   "image_ids": [f"train_{i:04d}" for i in shots], "labels": sy.tolist()}  # fmt: skip
    heads_dir = OUT / "heads" / cell
    write_json(p1, heads_dir / "refineclip" / "refineclip.json")

    # phase 2 curves and the α/β sensitivity on a balanced test-like split
    th, tr, ty, _ = _rc_split(rng, 400, 0.5, text, bg_dir, cls_dir)
    semb = sh.sum((1, 2)) + sr
    success, locality = rc.phase2_masks(sy, rc.zero_shot_predictions(sh, sr, text))
    inp = {
        "emb": semb, "labels": sy, "classifier": text, "success": success,
        "locality": locality, "teacher": rc.zero_ablate(sh, sr, RC_LAYERS, p1["selected"]["heads"]),
        "eval_sets": target_eval_sets(th.sum((1, 2)) + tr, ty, RC_TARGETS),
    }  # fmt: skip
    settings = {"variant": "diag", "lr": 0.01, "steps": 100, "eval_every": 10}
    for method, objective in (("refineclip_adapt", "refineclip"), ("refineclip_std_ft", "std_ft")):
        res = ra.train_adapter(
            inp["emb"], sy, text, inp["teacher"], success, locality, objective=objective,
            tau=100.0, seed=SEEDS[0], eval_sets=inp["eval_sets"], **settings,
        )  # fmt: skip
        write_csv(res.curves, heads_dir / "refineclip_adapter" / f"{method}_curves.csv")
    metrics_dir = OUT / "metrics" / RC_DATASET / RC_MODEL
    sens = sensitivity_table(inp, settings, 100.0, [100.0, 1000.0, 10000.0], SEEDS[0], "cpu")
    write_csv(sens, metrics_dir / f"seed-{SEEDS[0]}" / "refineclip_sensitivity.csv")

    # metrics of three seeds (edit rows: target waterbird), paired tables of the first
    files = {}
    for k, seed in enumerate(SEEDS):
        tables, sims = [], {}
        for method, accs in RC_GROUP_ACC.items():
            accs = np.clip(np.asarray(accs) + rng.normal(0, 0.015, 4), 0.05, 0.99)
            preds, labels, groups = simulate_predictions(rng, accs, 300)
            sims[method] = preds
            tables.append(evaluate_predictions(preds, labels, groups, RC_GROUPS, method, "test",
                                               n_boot=N_BOOT, seed=SEED))  # fmt: skip
            tables.append(pd.DataFrame(rc.edit_metric_rows(method, "test", preds, labels,
                                                           RC_TARGETS)))  # fmt: skip
        files[seed] = metrics_dir / f"seed-{seed}" / "metrics.csv"
        write_csv(pd.concat(tables, ignore_index=True), files[seed])
        if k == 0:
            paired = pd.concat(
                [paired_rows(m, p, "zero_shot", sims["zero_shot"], labels, groups, N_BOOT, SEED)
                 for m, p in sims.items() if m != "zero_shot"],
                ignore_index=True,
            )  # fmt: skip
            write_csv(paired, metrics_dir / f"seed-{seed}" / "paired.csv")
    summarize_seeds(files, metrics_dir / "summary_over_seeds.csv", "test")


README = """# Report fixture (generated, do not edit)

A tiny, simulated experiment in the result-table formats of docs/DESIGN.md ("Result
tables"), laid out like `results/{experiment}/` for one grid cell (dataset `planted`, model
`planted-vit-tiny`, 4 layers x 4 heads; seed 42 complete, seeds 1 and 2 metrics only), and a
RefineCLIP cell (`waterbirds` / `ViT-B-16`: phase-1 file, phase-2 curves, α/β sensitivity,
metrics with edit rows) for notebooks/report_refineclip.ipynb. The report notebooks default to these files and
tests/unit/test_plots.py and tests/integration/test_notebooks.py run on them. The numbers
are made up (LTC locates L3H1 and L2H0, the planted heads). `audit/` and `heads/.../audit.json`
are the audit stage's output on a simulated feature store (colour carried by L3H1 and L2H3);
regenerate with

    .venv/bin/python tests/data/make_report_fixture.py
"""


def methods_table() -> pd.DataFrame:
    """``methods.csv`` of the fixture's methods (label use, as rule evaluate writes it)."""
    from clipbias.methods import registry

    configured = registry.configured([*GROUP_ACC, "ltc_random"])
    table = pd.DataFrame(registry.label_use_rows(configured, ltc_group_labels=True))
    table.insert(1, "label", [registry.label(m) for m in configured])
    table.insert(2, "name", list(configured))
    return table


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    rng = np.random.default_rng(SEED)
    cell = f"{DATASET}/{MODEL}/seed-{SEEDS[0]}"

    data_dir = OUT / "data" / DATASET / f"seed-{SEEDS[0]}"
    generate(data_dir, seed=7, n_train=8, n_val=8, n_test=24, image_size=32)
    meta = json.loads((data_dir / "dataset.json").read_text())
    group_names = meta["group_names"]

    planted_s, planted_y = ["L3H1", "L2H0"], ["L3H2"]
    heads_dir = OUT / "heads" / cell
    ltc = ltc_json(rng, "groups", planted_s, planted_y)
    write_json(ltc, heads_dir / "ltc.json")
    write_json(ltc_json(rng, "full", planted_s, planted_y), heads_dir / "ltc_full.json")
    spurious = [x["head"] for x in ltc["spurious"]]
    salient = [x["head"] for x in ltc["salient"]]
    write_csv(textspan_table(rng, spurious, salient), heads_dir / "textspan.csv")

    metric_files = {}
    for k, seed in enumerate(SEEDS):
        metrics_dir = OUT / "metrics" / DATASET / MODEL / f"seed-{seed}"
        tables, sims = metrics_tables(rng, group_names, shift=0.01 * k)
        zs = dict(zip(tables["zero_shot"]["metric"], tables["zero_shot"]["value"], strict=True))
        draws = random_draws(rng, spurious, salient, zs)
        draws.insert(0, "method", "ltc_random")
        random_rows = random_metric_rows(draws, "test")
        table = pd.concat([*tables.values(), random_rows], ignore_index=True)
        metric_files[seed] = metrics_dir / "metrics.csv"
        write_csv(table, metric_files[seed])
        if k:
            continue
        write_csv(draws, metrics_dir / "random_draws.csv")
        ltc_obs = dict(zip(tables["ltc"]["metric"], tables["ltc"]["value"], strict=True))
        summary = random_control_summary(draws, {m: ltc_obs[m] for m in random_rows["metric"]})
        summary.insert(0, "method", "ltc_random")
        summary.insert(1, "observed_method", "ltc")
        write_csv(summary, metrics_dir / "random_summary.csv")
        zp, labels, groups = sims["zero_shot"]
        paired = pd.concat(
            [
                paired_rows(m, sims[m][0], "zero_shot", zp, labels, groups, N_BOOT, SEED)
                for m in GROUP_ACC
                if m != "zero_shot"
            ],
            ignore_index=True,
        )
        write_csv(paired, metrics_dir / "paired.csv")
        write_csv(methods_table(), metrics_dir / "methods.csv")
    summarize_seeds(
        metric_files, OUT / "metrics" / DATASET / MODEL / "summary_over_seeds.csv", "test"
    )

    truth = pd.concat(
        [
            ground_truth_table(rng, planted_s),
            # own generator: the files written after this keep their numbers
            colour_truth_table(np.random.default_rng(SEED + 2), ["L3H1", "L2H3"]),
            output_truth_table(np.random.default_rng(SEED + 3), planted_s),
        ],
        ignore_index=True,
    )
    truth = truth[GT_COLUMNS]
    write_csv(truth, OUT / "ground_truth" / cell / "heads.csv")
    write_csv(truth.head(0), OUT / "ground_truth" / cell / "total.csv")
    write_json(train_log(rng), OUT / "models" / cell / "train_log.json")
    audit_fixture(np.random.default_rng(SEED + 1), data_dir, cell)
    refineclip_fixture()
    heads_dir = OUT / "heads" / cell
    located = {n: read_json(heads_dir / f"{n}.json") for n in ("ltc", "ltc_full", "audit")}
    write_csv(score_locators(truth, located), OUT / "ground_truth" / cell / "locator_scores.csv")
    (OUT / "README.md").write_text(README)
    print(f"wrote {OUT}")  # noqa: T201 - command-line script


if __name__ == "__main__":
    main()
