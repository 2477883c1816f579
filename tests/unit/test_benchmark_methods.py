"""benchmarks/methods.py reads a run's per-rule wall times where the workflow writes them."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def _methods_benchmark():
    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "benchmarks/methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snakemake_timings_reads_the_workflows_benchmark_files(tmp_path):
    """The rules' ``benchmark:`` files are logs/<experiment>/benchmarks/<rule>/...tsv (not
    benchmarks/<experiment>/, where the script used to look and found nothing)."""
    tsv = tmp_path / "logs/planted/benchmarks/locate_ltc/planted/m/seed-42.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("s\th:m:s\tmax_rss\n12.345\t0:00:12\t300.1\n")
    (tmp_path / "benchmarks/planted/evaluate").mkdir(parents=True)  # the old place: ignored
    (tmp_path / "benchmarks/planted/evaluate/x.tsv").write_text("s\n99\n")
    rows = _methods_benchmark().snakemake_timings("planted", repo=tmp_path)
    assert [(r["metric"], r["value"]) for r in rows] == [("default_run_locate_ltc_seconds", 12.35)]
    assert "logs/planted/benchmarks/locate_ltc" in rows[0]["notes"]
