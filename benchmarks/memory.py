#!/usr/bin/env python
"""Peak memory and throughput of the stages that read features, on ViT-H-14-sized shards.

Writes synthetic feature shards shaped like ViT-H-14's last 4 layers (16 heads, D = 1024,
float16; layers 28-31 of 32) through ``clipbias.features`` (``build_table`` +
``write_shard`` + ``write_manifest``): a locate split ``val`` and a test split ``test`` of
``--rows`` rows each (default 20,000), two classes, four groups, a planted spurious head
(L31H3) and a class head (L30H5), plus ``classifier.parquet``, ``texts.parquet`` (a 3,498-text
pool like TextSpan's, insight pairs, attribute prompts), ``audit_texts.parquet`` (concept and
bias texts of the ``place`` attribute, as ``encode_audit_texts`` writes them) and
``dataset.json``.

Then it calls each stage function the way its rule script does, each in a fresh Python
process (``--stage``), and records that process's peak RSS (including the
interpreter and imports: ``VmHWM``) and the stage's rows per second (after imports):

==================  =================================================  ==================
stage               call                                               rows
==================  =================================================  ==================
imports             nothing (the floor: Python + numpy/pandas/pyarrow)  --
locate_ltc          ``stages.locate.locate_ltc`` (both variants)       locate split
textspan            ``stages.locate.textspan`` (m=20, rank = d_h + 2)  locate split
predict_zero_shot   ``stages.predict.predict("zero_shot")``            test split
predict_ltc         ``stages.predict.predict("ltc")`` (means + test)   locate + test split
evaluate            ``stages.evaluate.evaluate`` (zero_shot, ltc)      test split
ground_truth        ``stages.evaluate.planted_ground_truth``           test split
audit               ``stages.audit.audit`` (default ``audit:`` block)  locate + test split
locate_refineclip   ``stages.refineclip.locate_refineclip`` (phase 1)  shots of locate split
locate_refineclip_  the same with ``selection="validation"`` (Ours*)   locate split
star
==================  =================================================  ==================

Before each stage the shards of the splits it reads are read once into the page cache
(``--cold`` skips this), so rows per second measure the stage's work rather than the disk;
the parent records the disk's read rate of that warm-up. Wall time still depends on the
disk when the cache cannot hold the shards (or the host evicts idle cache), CPU seconds do
not. Targets (issue 15): peak RSS <= 3 GB per stage; locate
>= 2,000 rows/s on 2 cores.
Writes ``benchmarks/results/memory.csv`` (columns metric,value,unit,device,notes). Usage::

    .venv/bin/python benchmarks/memory.py                      # 20,000 + 20,000 rows
    .venv/bin/python benchmarks/memory.py --rows 2000 --keep   # small; keep the shards

The shards go to ``--workdir`` (default ``benchmarks/memory_data``, git-ignored; about
132 KiB per row) and are deleted afterwards unless ``--keep``; an existing set with the
same shape is reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["metric", "value", "unit", "device", "notes"]
STAGES = (
    "imports",
    "locate_ltc",
    "textspan",
    "predict_zero_shot",
    "predict_ltc",
    "evaluate",
    "ground_truth",
    "audit",
)
# ViT-H-14 (open_clip): 32 layers, width 1280, 16 heads of 80, output dim 1024
N_LAYERS, N_HEADS, WIDTH, DIM = 32, 16, 1280, 1024
LAYERS = [28, 29, 30, 31]
SPURIOUS, SALIENT = (31, 3), (30, 5)
POOL_TEXTS = 3498
DATA_VERSION = 2  # 2: audit_texts.parquet
# RefineCLIP phase 1 (issue 15; run_refineclip): stage -> configured method whose phase-1
# parameters it uses (the default config's shots: group_balanced on val)
RC_STAGES = {"locate_refineclip": "refineclip", "locate_refineclip_star": "refineclip_star"}
STAGES += tuple(RC_STAGES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="rows per split (locate and test)")
    p.add_argument("--shard-rows", type=int, default=1000, help="rows per feature shard")
    p.add_argument("--layout", choices=("blocks", "interleaved"), default="blocks",
                   help="blocks: each shard holds one split (index sorted by split); "
                        "interleaved: splits mixed row by row")  # fmt: skip
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads, as the rules' threads: 1 (Arrow decodes on its own pool)")  # fmt: skip
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--workdir", default=str(REPO / "benchmarks/memory_data"))
    p.add_argument("--keep", action="store_true", help="keep the synthetic shards")
    p.add_argument("--cold", action="store_true",
                   help="do not read the shards into the page cache before each stage")  # fmt: skip
    p.add_argument("--out", default=str(REPO / "benchmarks/results/memory.csv"))
    p.add_argument("--stage", help=argparse.SUPPRESS)  # child process: run one stage
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def _classifier(rng: np.random.Generator) -> np.ndarray:
    t = rng.standard_normal((DIM, 2))
    t[:, 1] = 0.8 * t[:, 0] + 0.6 * t[:, 1]  # correlated class prompts, as real ones are
    return (t / np.linalg.norm(t, axis=0)).astype(np.float32)  # [D, C]


def _rows(rng, n: int, split: str, start: int, classifier: np.ndarray):
    """n rows of one split: index, heads [n, 4, 16, D] float16-able, rest, embedding."""
    labels = rng.integers(0, 2, n)
    corr = 0.9 if split == "val" else 0.5
    bg = np.where(rng.random(n) < corr, labels, 1 - labels)
    direction = classifier[:, 1] - classifier[:, 0]
    heads = rng.standard_normal((n, len(LAYERS), N_HEADS, DIM), dtype=np.float32)
    heads *= np.float32(0.25 / np.sqrt(DIM))
    li_s, li_y = LAYERS.index(SPURIOUS[0]), LAYERS.index(SALIENT[0])
    heads[:, li_s, SPURIOUS[1]] += np.outer(0.05 * (2 * bg - 1), direction).astype(np.float32)
    heads[:, li_y, SALIENT[1]] += np.outer(0.04 * (2 * labels - 1), direction).astype(np.float32)
    heads = heads.astype(np.float16)
    rest = (0.3 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)).astype(np.float32)
    rest += classifier.mean(1) * 0.5
    emb = heads.sum((1, 2), dtype=np.float32) + rest
    index = pd.DataFrame(
        {
            "image_id": [f"{split}_{start + i:06d}" for i in range(n)],
            "path": [f"images/{split}/{start + i:06d}.jpg" for i in range(n)],
            "split": split,
            "label": labels,
            "group": 2 * labels + bg,
            "attr_place": bg,
        }
    )
    return index, heads, rest, emb


def generate(folder: Path, rows: int, shard_rows: int, layout: str, seed: int = 0) -> float:
    """Write the synthetic feature folder; returns seconds. Reused when already complete."""
    from clipbias.features import build_table, write_classifier, write_manifest, write_shard
    from clipbias.methods.texts import write_method_texts

    stamp = {"rows": rows, "shard_rows": shard_rows, "layout": layout, "seed": seed,
             "version": DATA_VERSION}  # fmt: skip
    if (folder / "stamp.json").is_file() and json.loads((folder / "stamp.json").read_text()) == (
        stamp
    ):
        return 0.0
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    classifier = _classifier(rng)
    meta = {
        "model": "ViT-H-14 (synthetic)", "pretrained": None, "dataset": "memory_benchmark",
        "layers": LAYERS, "n_layers": N_LAYERS, "n_heads": N_HEADS, "width": WIDTH,
        "head_dim": WIDTH // N_HEADS, "dim": DIM, "dtype": "float16", "centring": "shared",
    }  # fmt: skip
    n_shards = -(-2 * rows // shard_rows)
    per_split = {"val": 0, "test": 0}
    shards = []
    for s in range(n_shards):
        n = min(shard_rows, 2 * rows - s * shard_rows)
        if layout == "blocks":
            split = "val" if s * shard_rows < rows else "test"
            n = min(n, rows - per_split[split])
            parts = [_rows(rng, n, split, per_split[split], classifier)]
            per_split[split] += n
        else:
            n_val = n // 2
            parts = [
                _rows(rng, n_val, "val", per_split["val"], classifier),
                _rows(rng, n - n_val, "test", per_split["test"], classifier),
            ]
            per_split["val"] += n_val
            per_split["test"] += n - n_val
        index = pd.concat([p[0] for p in parts], ignore_index=True)
        order = rng.permutation(len(index)) if layout == "interleaved" else np.arange(len(index))
        heads, rest, emb = (np.concatenate([p[k] for p in parts])[order] for k in (1, 2, 3))
        index = index.iloc[order].reset_index(drop=True)
        ones = np.ones(len(index), np.float32)
        table = build_table(index, heads, rest, emb, ones, ones, ones, LAYERS, "float16", meta)
        path = folder / f"shard-{s:05d}.parquet"
        write_shard(table, path)
        shards.append(path)
        del table, heads, rest, emb
    write_manifest(shards, folder / "manifest.json")
    write_classifier(folder / "classifier.parquet", ["landbird", "waterbird"], classifier.T, {})
    texts = {
        "pool": [f"pool text {i}" for i in range(POOL_TEXTS)],
        "accept_pos": ["a photo of a bird's beak", "a photo of a bird's feathers"],
        "accept_neg": ["a photo of water", "a photo of a forest"],
        "attribute": ["land", "water"],
    }
    emb = rng.standard_normal((POOL_TEXTS + 6, DIM))
    write_method_texts(folder / "texts.parquet", texts, emb)
    _audit_texts(folder / "audit_texts.parquet", rng, classifier)
    dmeta = {
        "name": "memory_benchmark", "classes": ["landbird", "waterbird"],
        "attributes": {"place": ["land", "water"]}, "spurious_attribute": "place",
        "group_by": ["label", "place"], "minority_groups": [1, 2],
        "group_names": ["landbird on land", "landbird on water", "waterbird on land",
                        "waterbird on water"],
        "splits": per_split,
    }  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(dmeta))
    (folder / "stamp.json").write_text(json.dumps(stamp))
    return time.perf_counter() - t0


def _audit_texts(path: Path, rng: np.random.Generator, classifier: np.ndarray) -> None:
    """``audit_texts.parquet`` of the ``place`` attribute (the planted spurious one): 5
    concept texts per value along ± the planted direction, 24 bias texts (METHODS §3.7, §6.4
    minimums)."""
    from clipbias.methods.texts import write_audit_texts

    direction = classifier[:, 1] - classifier[:, 0]
    rows, emb = [], []
    for value, sign in (("land", -1.0), ("water", 1.0)):
        for role, n in (("concept", 5), ("bias", 12)):
            for i in range(n):
                rows.append(("place", role, value, f"{value} {role} text {i}"))
                emb.append(rng.standard_normal(DIM) / np.sqrt(DIM) + sign * direction)
    table = pd.DataFrame(rows, columns=["attribute", "role", "value", "text"])
    attrs = {"place": {"values": ["land", "water"], "axis": ["water", "land"],
                       "description": "planted background"}}  # fmt: skip
    write_audit_texts(path, table, np.asarray(emb), attrs)


# ----------------------------------------------------------------------------- stages


def run_stage(stage: str, folder: Path, threads: int) -> dict:
    """Run one stage in this process (the child); returns seconds, rows and peak RSS."""
    from clipbias.methods import registry
    from clipbias.stages import audit, evaluate, locate, predict

    out = folder / "out"
    out.mkdir(exist_ok=True)
    if stage in RC_STAGES:
        return run_refineclip(stage, folder, threads)
    meta = json.loads((folder / "dataset.json").read_text())
    n_val, n_test = meta["splits"]["val"], meta["splits"]["test"]
    rows = {"imports": 0, "locate_ltc": n_val, "textspan": n_val, "predict_zero_shot": n_test,
            "predict_ltc": n_val + n_test, "evaluate": n_test, "ground_truth": n_test,
            "audit": n_val + n_test}[stage]  # fmt: skip
    common = {"dataset_meta": folder / "dataset.json", "locate_split": "val", "test_split": "test",
              "seed": 42, "texts": folder / "texts.parquet", "threads": threads}  # fmt: skip
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if stage == "imports":  # what every stage imports before it reads anything
        import pyarrow.parquet  # noqa: F401

        import clipbias.features  # noqa: F401
        import clipbias.streaming  # noqa: F401
    elif stage == "locate_ltc":
        locate.locate_ltc(folder, folder / "dataset.json", folder / "texts.parquet",
                          out / "ltc.json", out / "ltc_full.json", split="val", threads=threads)  # fmt: skip
    elif stage == "textspan":
        locate.textspan(folder, folder / "texts.parquet", out / "textspan.csv", split="val",
                        last_layers=4, m=20, rank=None, threads=threads)  # fmt: skip
    elif stage in ("predict_zero_shot", "predict_ltc"):
        name = stage.removeprefix("predict_")
        spec = registry.get(name)
        located = {"ltc": out / "ltc.json"} if "ltc" in spec.locators else {}
        predict.predict(name, spec.resolve_params({}), folder, out=out / f"{name}.parquet",
                        located=located, method_id=name, **common)  # fmt: skip
    elif stage == "evaluate":
        preds = {m: out / f"{m}.parquet" for m in ("zero_shot", "ltc")}
        evaluate.evaluate(preds, folder / "dataset.json", out / "metrics.csv", out / "paired.csv",
                          out / "draws.csv", out / "random_summary.csv", n_boot=1000, seed=42,
                          threads=threads)  # fmt: skip
    elif stage == "ground_truth":
        evaluate.planted_ground_truth(folder, folder / "dataset.json", out / "gt.csv", "test",
                                      n_boot=1000, seed=42)  # fmt: skip
    elif stage == "audit":  # as workflow/scripts/audit.py, with the default audit: block
        audit.audit(folder, folder / "dataset.json", folder / "texts.parquet",
                    folder / "audit_texts.parquet", out / "audit", out / "heads_audit.json",
                    "val", "test", seed=42, params={}, threads=threads)  # fmt: skip
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"stage": stage, "seconds": seconds, "cpu_seconds": cpu, "rows": rows,
            "peak_rss_bytes": peak_rss()}  # fmt: skip


def peak_rss() -> int:
    """Peak resident set size of this process in bytes.

    ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process image); not
    ``ru_maxrss``, which Linux carries over from the parent across fork + exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB (Linux)


STAGE_SPLITS = {"locate_ltc": {"val"}, "textspan": {"val"}, "predict_zero_shot": {"test"},
                "predict_ltc": {"val", "test"}, "evaluate": set(), "ground_truth": {"test"},
                "audit": {"val", "test"}}  # fmt: skip


def warm_page_cache(folder: Path, splits: set[str]) -> tuple[float, int]:
    """Read the shards holding rows of ``splits`` once (not timed as part of the stage);
    returns (seconds, bytes)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    t0, total = time.perf_counter(), 0
    for entry in manifest["shards"]:
        if not splits & set(entry.get("splits", splits)):
            continue
        path = folder / entry["file"]
        with path.open("rb") as fh:
            while chunk := fh.read(8 << 20):
                total += len(chunk)
    return time.perf_counter() - t0, total


def run_refineclip(stage: str, folder: Path, threads: int) -> dict:
    """RefineCLIP phase 1 (``stages.refineclip.locate_refineclip``) with the phase-1
    parameters rule ``locate_refineclip`` passes for the method of :data:`RC_STAGES` (10
    group-balanced shots per class of ``val``; Ours* selects on ``val`` too). Rows = rows
    streamed: ``val`` once for the shots, once more for Ours*'s selection."""
    from clipbias.methods import registry
    from clipbias.stages.refineclip import locate_refineclip

    method = RC_STAGES[stage]
    params = registry.get(method).resolve_params({"shots_split": "val",
                                                   "shot_sampling": "group_balanced"})  # fmt: skip
    phase1 = {k: v for k, v in params.items() if k in registry.REFINECLIP_PHASE1_PARAMS}
    n_val = json.loads((folder / "dataset.json").read_text())["splits"]["val"]
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    res = locate_refineclip(feature_dir=folder, out=folder / "out" / f"{method}.json", seed=42,
                            threads=threads, **phase1)  # fmt: skip
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"stage": stage, "seconds": seconds, "cpu_seconds": cpu,
            "rows": n_val * (2 if res["selection"] == "validation" else 1),
            "peak_rss_bytes": peak_rss()}  # fmt: skip


STAGE_SPLITS.update(dict.fromkeys(RC_STAGES, {"val"}))


def child(stage: str, folder: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get(
        "PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, __file__, "--stage", stage, "--workdir", str(folder),
           "--threads", str(threads)]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.workdir)
    if args.stage:  # child
        print(json.dumps(run_stage(args.stage, folder, args.threads)))
        return 0
    sys.path.insert(0, str(REPO / "src"))
    load0 = os.getloadavg()[0]
    gen = generate(folder, args.rows, args.shard_rows, args.layout)
    size = sum(p.stat().st_size for p in folder.glob("shard-*.parquet"))
    order = [s for s in STAGES if s in args.stages]
    if "evaluate" in order and not {"predict_zero_shot", "predict_ltc"} <= set(order):
        order = [s for s in STAGES if s in set(order) | {"predict_zero_shot", "predict_ltc"}]
    if "predict_ltc" in order and "locate_ltc" not in order:
        order = [s for s in STAGES if s in set(order) | {"locate_ltc"}]
    device = f"cpu ({args.threads} BLAS thread{'' if args.threads == 1 else 's'})"
    shape = (f"{args.rows} + {args.rows} rows x {len(LAYERS)} layers x {N_HEADS} heads x {DIM} "
             f"float16 ({args.layout}, {args.shard_rows} rows/shard)")  # fmt: skip
    out = [
        {"metric": "feature_bytes_per_row", "value": size / (2 * args.rows), "unit": "B",
         "device": "", "notes": f"{shape}; {size / 2**30:.2f} GiB on disk"},
    ]  # fmt: skip
    if gen:
        out.append({"metric": "generate_seconds", "value": gen, "unit": "s", "device": "",
                    "notes": "synthetic shards through clipbias.features"})  # fmt: skip
    for stage in order:
        if not args.cold and STAGE_SPLITS.get(stage):
            secs, nbytes = warm_page_cache(folder, STAGE_SPLITS[stage])
            out.append({"metric": f"{stage}_warm_read_mb_per_s", "value": nbytes / 2**20 / secs,
                        "unit": "MiB/s", "device": "disk",
                        "notes": f"reading the {'+'.join(sorted(STAGE_SPLITS[stage]))} shards "
                        f"({nbytes / 2**30:.2f} GiB) into the page cache before the stage (not "
                        "part of its time)"})  # fmt: skip
        r = child(stage, folder, args.threads)
        peak_gb = r["peak_rss_bytes"] / 1e9
        print(f"{stage:18s} {r['seconds']:8.1f} s ({r['cpu_seconds']:6.1f} s CPU)  {peak_gb:6.2f} GB"
              f"  {r['rows']} rows", flush=True)  # fmt: skip
        out.append({"metric": f"{stage}_peak_rss_gb", "value": peak_gb, "unit": "GB",
                    "device": device, "notes": "VmHWM of the stage's own process; "
                    "target <= 3 GB"})  # fmt: skip
        if stage != "imports":
            target = "; target >= 2000 rows/s" if stage == "locate_ltc" else ""
            out += [
                {"metric": f"{stage}_seconds", "value": r["seconds"], "unit": "s",
                 "device": device, "notes": "stage call after imports (wall)"},
                {"metric": f"{stage}_cpu_seconds", "value": r["cpu_seconds"], "unit": "s",
                 "device": device, "notes": "user + system CPU of the stage call, all threads "
                 "(less sensitive to other load than wall time)"},
                {"metric": f"{stage}_rows_per_s", "value": r["rows"] / r["seconds"],
                 "unit": "rows/s", "device": device,
                 "notes": f"{r['rows']} rows read{target}"},
            ]  # fmt: skip
    load1 = os.getloadavg()[0]
    out.append({"metric": "environment", "value": "", "unit": "", "device": device,
                "notes": f"load average {load0:.1f} at start, {load1:.1f} at end; "
                f"{os.cpu_count()} CPUs; numpy {np.__version__}, python "
                f"{platform.python_version()}"})  # fmt: skip
    if not args.keep:
        shutil.rmtree(folder)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for row in out:
            if isinstance(row["value"], float):
                row["value"] = f"{row['value']:.3f}"
            w.writerow(row)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
