"""Dress rehearsal of every paper configuration: run each to its final tables and report with
random weights of its real architectures and fixture data (config/overlays/rehearsal.yaml),
and record what it cost.

For every config (default: every file in ``config/experiments/``) it runs

    snakemake -c<cores> --keep-going --configfile <config> config/overlays/rehearsal.yaml

and records, per config: models, datasets, jobs run, wall time, failed jobs, the table
completeness (``results/<experiment>-rehearsal/tables/completeness.csv``: every metric of
every paper table for every configured method), and the peak RSS of the heaviest rule; and per
rule and model: jobs, rows per job (feature shards), wall time and peak RSS from Snakemake's
``benchmark:`` files (``logs/<experiment>-rehearsal/benchmarks/``, plus the shared dataset and
weights rules under ``logs/rehearsal-*``). Planted configurations have nothing to replace
(their data are generated and their model trained by the pipeline): their rehearsal is a full
run in the rehearsal folder.

Writes ``benchmarks/results/rehearsal.csv`` (one row per config) and
``benchmarks/results/rehearsal_rules.csv`` (one row per config, rule and model), appending to
or replacing the rows of the configs it ran. Usage::

    .venv/bin/python benchmarks/rehearse.py                        # every config, every model
    .venv/bin/python benchmarks/rehearse.py --models smallest ltc_waterbirds refineclip_table1
    .venv/bin/python benchmarks/rehearse.py --dry-run              # plan only: jobs per config
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIG_COLUMNS = [
    "config", "models", "datasets", "seeds", "jobs", "failed_jobs", "wall_s", "rc",
    "table_metrics_ok", "table_metrics_not_computable", "table_metrics_missing",
    "heaviest_rule", "heaviest_rule_max_rss_mb", "date", "host_cores", "notes",
]  # fmt: skip
RULE_COLUMNS = [
    "config", "rule", "model", "jobs", "rows_total", "rows_max", "wall_s_sum", "wall_s_max",
    "max_rss_mb", "cpu_s_sum",
]  # fmt: skip


def _experiment(config: Path) -> dict:
    return yaml.safe_load(config.read_text()) or {}


def _snakemake() -> list[str]:
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def _overlay(models: str, seeds: str) -> Path:
    """config/overlays/rehearsal.yaml, or a temporary overlay with its quick settings."""
    base = REPO / "config" / "overlays" / "rehearsal.yaml"
    if models == "all" and seeds == "all":
        return base
    spec = yaml.safe_load(base.read_text())
    spec["rehearsal"].update({"models": models, "seeds": seeds})
    fd, name = tempfile.mkstemp(prefix="rehearsal-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(spec, f)
    return Path(name)


def _benchmarks(folders: list[Path], since: float) -> list[dict]:
    """Snakemake benchmark rows written after ``since``: rule, wildcard path parts, values."""
    rows = []
    for folder in folders:
        for tsv in folder.rglob("*.tsv") if folder.is_dir() else []:
            if tsv.stat().st_mtime < since:
                continue
            with open(tsv) as f:
                rec = next(csv.DictReader(f, delimiter="\t"), None)
            if not rec:
                continue
            parts = tsv.relative_to(folder).with_suffix("").parts
            rows.append({"rule": parts[0], "parts": parts[1:], "file": tsv, **rec})
    return rows


def _shard_rows(results: Path) -> dict[tuple[str, str, str], int]:
    """(dataset, model, shard) -> rows, from the feature manifests of a results folder."""
    out = {}
    for manifest in results.glob("features/*/*/*/manifest.json"):
        dataset, model = manifest.parts[-4], manifest.parts[-3]
        for shard in json.loads(manifest.read_text()).get("shards", []):
            stem = Path(shard["file"]).stem.removeprefix("shard-")
            out[(dataset, model, stem)] = int(shard["rows"])
    return out


def _rule_rows(config: str, bench: list[dict], shard_rows: dict, models: list[str]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for b in bench:
        parts = b["parts"]
        model = next((p for p in parts if p in models), "")
        if b["rule"] == "make_rehearsal_weights":
            model = next((m for m in models if parts and parts[0].startswith(m + "__")), "")
        rows = 0
        if b["rule"] == "extract_features" and len(parts) >= 4:
            rows = shard_rows.get((parts[0], parts[1], parts[3]), 0)
        groups.setdefault((b["rule"], model), []).append({**b, "rows": rows})
    out = []
    for (rule, model), items in sorted(groups.items()):
        out.append(
            {
                "config": config, "rule": rule, "model": model, "jobs": len(items),
                "rows_total": sum(i["rows"] for i in items),
                "rows_max": max(i["rows"] for i in items),
                "wall_s_sum": round(sum(float(i["s"]) for i in items), 2),
                "wall_s_max": round(max(float(i["s"]) for i in items), 2),
                "max_rss_mb": round(max(_num(i.get("max_rss")) for i in items), 1),
                "cpu_s_sum": round(sum(_num(i.get("cpu_time")) for i in items), 2),
            }
        )  # fmt: skip
    return out


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _completeness(results: Path) -> dict[str, int]:
    path = results / "tables" / "completeness.csv"
    counts = {"ok": 0, "not computable": 0, "missing": 0}
    if not path.is_file():
        return {k: -1 for k in counts}
    with open(path) as f:
        lines = [line for line in f if not line.startswith("#")]
    for rec in csv.DictReader(lines):
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    return counts


def rehearse(config: Path, cores: int, models: str, seeds: str, dry_run: bool) -> tuple:
    exp = _experiment(config)
    name = exp["experiment"]
    overlay = _overlay(models, seeds)
    log_dir = REPO / "logs" / "rehearse"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    cmd = [
        *_snakemake(), "-c", str(cores), "--keep-going", "--configfile", str(config),
        str(overlay), *(["-n", "--quiet", "rules"] if dry_run else []),
    ]  # fmt: skip
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.time() - start
    text = log_path.read_text()
    if dry_run:
        m = re.search(r"^total\s+(\d+)", text, re.M)
        return {"config": name, "jobs": int(m.group(1)) if m else 0, "rc": proc.returncode}, []
    done = [int(x) for x in re.findall(r"^(\d+) of \d+ steps", text, re.M)]
    failed = sorted(set(re.findall(r"^Error in rule (\w+):", text, re.M)))
    n_failed = len(re.findall(r"^Error in rule ", text, re.M))
    results = REPO / "results" / f"{name}-rehearsal"
    folders = [
        REPO / "logs" / f"{name}-rehearsal" / "benchmarks",
        REPO / "logs" / "rehearsal-datasets" / "benchmarks",
        REPO / "logs" / "rehearsal-weights" / "benchmarks",
    ]
    bench = _benchmarks(folders, start - 1)
    model_ids = [m.get("id") or m["name"] for m in exp["models"]]
    rules = _rule_rows(name, bench, _shard_rows(results), model_ids)
    heavy = max(rules, key=lambda r: r["max_rss_mb"], default={})
    comp = _completeness(results)
    row = {
        "config": name,
        "models": " ".join(sorted({r["model"] for r in rules if r["model"]}) or model_ids),
        "datasets": " ".join(d["name"] for d in exp["datasets"]),
        "seeds": len(exp.get("seeds", [42])) if seeds == "all" else 1,
        "jobs": max(done, default=0),
        "failed_jobs": n_failed,
        "wall_s": round(wall, 1),
        "rc": proc.returncode,
        "table_metrics_ok": comp["ok"],
        "table_metrics_not_computable": comp["not computable"],
        "table_metrics_missing": comp["missing"],
        "heaviest_rule": f"{heavy.get('rule', '')} ({heavy.get('model', '')})",
        "heaviest_rule_max_rss_mb": heavy.get("max_rss_mb", ""),
        "date": dt.date.today().isoformat(),
        "host_cores": os.cpu_count(),
        "notes": f"models={models}; failed rules: {' '.join(failed) or 'none'}",
    }
    print(f"   {row['jobs']} jobs, {n_failed} failed, {wall / 60:.1f} min, rc {proc.returncode}; "
          f"table metrics {comp}; log {log_path.relative_to(REPO)}", flush=True)  # fmt: skip
    return row, rules


def _merge_csv(path: Path, columns: list[str], rows: list[dict], configs: set[str]) -> None:
    old = []
    if path.is_file():
        with open(path) as f:
            old = [r for r in csv.DictReader(f) if r["config"] not in configs]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(old + rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", help="experiment names or YAML paths (default: all)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--models", choices=["all", "smallest"], default="all")
    p.add_argument("--seeds", choices=["all", "first"], default="all")
    p.add_argument("--dry-run", action="store_true", help="plan only (job counts)")
    p.add_argument("--out", type=Path, default=RESULTS / "rehearsal.csv")
    p.add_argument("--rules-out", type=Path, default=RESULTS / "rehearsal_rules.csv")
    args = p.parse_args(argv)
    paths = [
        Path(c) if c.endswith(".yaml") else REPO / "config" / "experiments" / f"{c}.yaml"
        for c in args.configs
    ] or sorted((REPO / "config" / "experiments").glob("*.yaml"))
    rows, rules = [], []
    for path in paths:
        row, rule_rows = rehearse(path.resolve(), args.cores, args.models, args.seeds, args.dry_run)
        rows.append(row)
        rules += rule_rows
    if args.dry_run:
        for r in rows:
            print(f"{r['config']}: {r['jobs']} jobs (rc {r['rc']})")
        return max(r["rc"] for r in rows)
    names = {r["config"] for r in rows}
    _merge_csv(args.out, CONFIG_COLUMNS, rows, names)
    _merge_csv(args.rules_out, RULE_COLUMNS, rules, names)
    print(f"wrote {args.out} and {args.rules_out}")
    bad = [r["config"] for r in rows if r["rc"] or r["failed_jobs"] or r["table_metrics_missing"]]
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
