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

Writes ``benchmarks/results/rehearsal.csv`` (one row per config),
``benchmarks/results/rehearsal_rules.csv`` (one row per config, rule and model) and
``benchmarks/results/rehearsal_jobs.csv`` (one row per job: rule, dataset, model, rows of a
feature shard or texts encoded, wall and CPU seconds, peak RSS), replacing the rows of the
configs it ran. ``--fit`` then derives the rules' resource requests from the job rows and
``benchmarks/results/memory.csv`` into ``workflow/resources.yaml`` (clipbias.costs; docs/DESIGN.md
"Resources"). Usage::

    .venv/bin/python benchmarks/rehearse.py                        # every config, every model
    .venv/bin/python benchmarks/rehearse.py --models smallest ltc_waterbirds refineclip_table1
    .venv/bin/python benchmarks/rehearse.py --dry-run              # plan only: jobs per config
    .venv/bin/python benchmarks/rehearse.py --fit                  # only refit resources.yaml
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
sys.path.insert(0, str(REPO / "src"))  # this checkout's package, whatever is installed
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
#: Rules that load a model to encode texts (their peak RSS is the model term of clipbias.costs).
TEXT_RULES = (
    "encode_classes",
    "encode_method_texts",
    "encode_audit_texts",
    "encode_class_templates",
)
JOB_COLUMNS = [
    "config", "rule", "dataset", "model", "arch", "job", "rows", "row_mib", "texts", "wall_s",
    "cpu_s", "max_rss_mb",
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


def _row_mib(results: Path, dataset: str, model: str) -> float:
    """MiB of one in-memory (float32) feature row of a cell, from a shard's metadata."""
    import pyarrow.parquet as pq

    from clipbias.costs import feature_row_mib

    shard = next(results.glob(f"features/{dataset}/{model}/*/shard-*.parquet"), None)
    if shard is None:
        return 0.0
    meta = json.loads(pq.read_schema(shard).metadata[b"clipbias.meta"])
    return feature_row_mib(
        meta["n_layers"], meta["n_heads"], meta["dim"], len(meta["layers"]), "float32"
    )


def _n_texts(results: Path, rule: str, parts: tuple[str, ...]) -> int:
    """Prompts a text-encoding job encoded (rows of its output Parquet)."""
    import pyarrow.parquet as pq

    name = {"encode_classes": "classifier", "encode_method_texts": "texts"}.get(rule)
    if name is None or len(parts) < 3:
        return 0
    path = results / "features" / parts[0] / parts[1] / parts[2] / f"{name}.parquet"
    return pq.read_metadata(path).num_rows if path.is_file() else 0


def _job_rows(
    config: str, bench: list[dict], results: Path, shard_rows: dict, arch: dict[str, str]
) -> list[dict]:
    models = list(arch)
    out = []
    for b in bench:
        parts = b["parts"]
        model = next((p for p in parts if p in models), "")
        if b["rule"] == "make_rehearsal_weights":
            model = next((m for m in models if parts and parts[0].startswith(arch[m] + "__")), "")
        dataset = parts[0] if parts and parts[0] not in models else ""
        rows = 0
        if b["rule"] == "extract_features" and len(parts) >= 4:
            rows = shard_rows.get((parts[0], parts[1], parts[3]), 0)
        out.append(
            {
                "config": config, "rule": b["rule"], "dataset": dataset, "model": model,
                "arch": arch.get(model, ""), "job": "/".join(parts), "rows": rows,
                "row_mib": round(_row_mib(results, dataset, model), 4) if rows else "",
                "texts": _n_texts(results, b["rule"], parts), "wall_s": _num(b.get("s")),
                "cpu_s": _num(b.get("cpu_time")), "max_rss_mb": _num(b.get("max_rss")),
            }
        )  # fmt: skip
    return out


def _rule_rows(config: str, jobs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for j in jobs:
        groups.setdefault((j["rule"], j["model"]), []).append(j)
    out = []
    for (rule, model), items in sorted(groups.items()):
        out.append(
            {
                "config": config, "rule": rule, "model": model, "jobs": len(items),
                "rows_total": sum(i["rows"] for i in items),
                "rows_max": max(i["rows"] for i in items),
                "wall_s_sum": round(sum(i["wall_s"] for i in items), 2),
                "wall_s_max": round(max(i["wall_s"] for i in items), 2),
                "max_rss_mb": round(max(i["max_rss_mb"] for i in items), 1),
                "cpu_s_sum": round(sum(i["cpu_s"] for i in items), 2),
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


def rehearse(
    config: Path, cores: int, models: str, seeds: str, dry_run: bool, collect: bool = False
) -> tuple:
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
    if collect:  # an earlier run's log and benchmark files
        start, returncode = 0.0, 0
    else:
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
        returncode = proc.returncode
    wall = time.time() - start if not collect else float("nan")
    text = log_path.read_text()
    if dry_run:
        m = re.search(r"^total\s+(\d+)", text, re.M)
        return {"config": name, "jobs": int(m.group(1)) if m else 0, "rc": returncode}, [], []
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
    arch = {m.get("id") or m["name"]: m["name"] for m in exp["models"]}
    model_ids = list(arch)
    jobs = _job_rows(name, bench, results, _shard_rows(results), arch)
    rules = _rule_rows(name, jobs)
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
        "rc": returncode,
        "table_metrics_ok": comp["ok"],
        "table_metrics_not_computable": comp["not computable"],
        "table_metrics_missing": comp["missing"],
        "heaviest_rule": f"{heavy.get('rule', '')} ({heavy.get('model', '')})",
        "heaviest_rule_max_rss_mb": heavy.get("max_rss_mb", ""),
        "date": dt.date.today().isoformat(),
        "host_cores": os.cpu_count(),
        "notes": f"models={models}; failed rules: {' '.join(failed) or 'none'}",
    }
    print(f"   {row['jobs']} jobs, {n_failed} failed, {wall / 60:.1f} min, rc {returncode}; "
          f"table metrics {comp}; log {log_path.relative_to(REPO)}", flush=True)  # fmt: skip
    return row, rules, jobs


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


#: The CPU stages that read feature shards (resources: clipbias.costs.stream_*), with their
#: metric prefixes in benchmarks/results/memory.csv (benchmarks/memory.py, 20,000
#: ViT-H-14-sized rows) where it measured them; a rule takes the largest RSS (there or in the
#: rehearsal) and the lowest throughput; a rule memory.py does not run takes the lowest
#: throughput of all.
STREAMED = {
    "predict": ("predict_zero_shot", "predict_ltc"),
    "predict_torch": (),
    "locate_ltc": ("locate_ltc",),
    "textspan": ("textspan",),
    "audit": ("audit",),
    "locate_refineclip": ("locate_refineclip", "locate_refineclip_star"),
    "adapt_refineclip": (),
    "refineclip_sensitivity": (),
    "evaluate": ("evaluate",),
    "planted_ground_truth": ("ground_truth",),
}


def fit_resources(jobs_csv: Path, memory_csv: Path, out: Path) -> dict:
    """Coefficients of clipbias.costs from the rehearsal's jobs and the streamed-stage
    benchmark, written to ``out`` (YAML) with how each was derived."""
    import statistics

    with open(jobs_csv) as f:
        jobs = list(csv.DictReader(f))
    for j in jobs:
        for k in ("rows", "texts"):
            j[k] = int(float(j[k] or 0))
        for k in ("row_mib", "wall_s", "cpu_s", "max_rss_mb"):
            j[k] = float(j[k] or 0)
    models = {}
    for arch in sorted({j["arch"] for j in jobs if j["arch"]}):
        enc = [j for j in jobs if j["arch"] == arch and j["rule"] == "encode_classes"]
        texts = [j for j in jobs if j["arch"] == arch and j["rule"] == "encode_method_texts"]
        text_jobs = [j for j in jobs if j["arch"] == arch and j["rule"] in TEXT_RULES]
        ext = [
            j for j in jobs if j["arch"] == arch and j["rule"] == "extract_features" and j["rows"]
        ]
        if not (enc and ext):
            continue
        # the model term sizes every text job: the largest of them (a ViT-H-14 general-pool
        # job peaked at 6.3 GB, its class-prompt job at 4.5 GB)
        model_mb = max(j["max_rss_mb"] for j in text_jobs)
        load_s = min(j["cpu_s"] for j in enc)
        act = max(
            max(0.0, j["max_rss_mb"] - model_mb - 3.0 * j["rows"] * j["row_mib"])
            / min(j["rows"], 64)
            for j in ext
        )
        per_image = statistics.median(max(0.0, j["cpu_s"] - load_s) / j["rows"] for j in ext)
        per_text = statistics.median(
            [max(0.0, j["cpu_s"] - load_s) / j["texts"] for j in texts if j["texts"]] or [0.0]
        )
        models[arch] = {
            "model_mb": round(model_mb), "act_mb_per_image": round(act, 2),
            "load_s": round(load_s, 1), "cpu_s_per_image": round(per_image, 3),
            "cpu_s_per_text": round(per_text, 4), "n_extract_jobs": len(ext),
        }  # fmt: skip
    mem = {}
    with open(memory_csv) as f:
        for rec in csv.DictReader(f):
            mem[rec["metric"]] = float(rec["value"]) if rec["value"] else None
    row_mib = mem["feature_bytes_per_row"] / 2**20
    rates = {
        rule: [mem[f"{p}_rows_per_s"] * row_mib for p in prefixes if mem.get(f"{p}_rows_per_s")]
        for rule, prefixes in STREAMED.items()
    }
    slowest = min(x for r in rates.values() for x in r)
    streamed = {}
    for rule, prefixes in STREAMED.items():
        rss = [1000 * mem[f"{p}_peak_rss_gb"] for p in prefixes if mem.get(f"{p}_peak_rss_gb")]
        rss += [j["max_rss_mb"] for j in jobs if j["rule"] == rule]
        if not rss:
            continue
        streamed[rule] = {
            "mem_mb": round(max(rss)), "mib_per_s": round(min(rates[rule] or [slowest]), 2),
            "fixed_s": round(max([j["wall_s"] for j in jobs if j["rule"] == rule] or [10.0]), 1),
        }  # fmt: skip
    streamed["default"] = {
        "mem_mb": max(r["mem_mb"] for r in streamed.values()),
        "mib_per_s": min(r["mib_per_s"] for r in streamed.values()),
        "fixed_s": max(r["fixed_s"] for r in streamed.values()),
    }
    spec = {"measured": dt.date.today().isoformat(), "models": models, "streamed": streamed}
    header = (
        '# Resource requests of the rules (clipbias.costs; docs/DESIGN.md "Resources"),\n'
        "# written by `benchmarks/rehearse.py --fit` from benchmarks/results/rehearsal_jobs.csv\n"
        "# (the rehearsal's jobs at the real model shapes) and benchmarks/results/memory.csv\n"
        "# (the streamed stages at 20,000 ViT-H-14-sized rows). Per architecture: model_mb =\n"
        "# peak RSS of a class-encoding job (the loaded model); act_mb_per_image = the largest\n"
        "# extraction RSS beyond the model and 3 copies of its shard's rows, per image of a\n"
        "# batch; load_s = the least CPU seconds of a class-encoding job; cpu_s_per_image /\n"
        "# cpu_s_per_text = median CPU seconds per image / prompt beyond load_s. Per streamed\n"
        "# stage: mem_mb = its largest peak RSS, mib_per_s = its lowest throughput in MiB of\n"
        "# float16 feature rows per second, fixed_s = its longest rehearsal job.\n"
    )
    out.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    print(f"wrote {out}")
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", help="experiment names or YAML paths (default: all)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--models", choices=["all", "smallest"], default="all")
    p.add_argument("--seeds", choices=["all", "first"], default="all")
    p.add_argument("--dry-run", action="store_true", help="plan only (job counts)")
    p.add_argument(
        "--collect", action="store_true", help="do not run: collect an earlier run's files"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "rehearsal.csv")
    p.add_argument("--rules-out", type=Path, default=RESULTS / "rehearsal_rules.csv")
    p.add_argument("--jobs-out", type=Path, default=RESULTS / "rehearsal_jobs.csv")
    p.add_argument(
        "--fit", action="store_true", help="derive workflow/resources.yaml (after any runs)"
    )
    args = p.parse_args(argv)
    if args.fit and not args.configs:
        fit_resources(args.jobs_out, RESULTS / "memory.csv", REPO / "workflow" / "resources.yaml")
        return 0
    paths = [
        Path(c) if c.endswith(".yaml") else REPO / "config" / "experiments" / f"{c}.yaml"
        for c in args.configs
    ] or sorted((REPO / "config" / "experiments").glob("*.yaml"))
    rows, rules, jobs = [], [], []
    for path in paths:
        row, rule_rows, job_rows = rehearse(
            path.resolve(), args.cores, args.models, args.seeds, args.dry_run, args.collect
        )
        rows.append(row)
        rules += rule_rows
        jobs += job_rows
    if args.dry_run:
        for r in rows:
            print(f"{r['config']}: {r['jobs']} jobs (rc {r['rc']})")
        return max(r["rc"] for r in rows)
    names = {r["config"] for r in rows}
    _merge_csv(args.out, CONFIG_COLUMNS, rows, names)
    _merge_csv(args.rules_out, RULE_COLUMNS, rules, names)
    _merge_csv(args.jobs_out, JOB_COLUMNS, jobs, names)
    print(f"wrote {args.out}, {args.rules_out} and {args.jobs_out}")
    if args.fit:
        fit_resources(args.jobs_out, RESULTS / "memory.csv", REPO / "workflow" / "resources.yaml")
    bad = [r["config"] for r in rows if r["rc"] or r["failed_jobs"] or r["table_metrics_missing"]]
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
