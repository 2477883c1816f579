"""Resource requests from measured costs (clipbias.costs; docs/DESIGN.md "Resources"),
computed by hand on made-up coefficients."""

from __future__ import annotations

import csv

import pytest

from clipbias import costs

COSTS = {
    "models": {
        "ViT-B-16": {"model_mb": 1000, "act_mb_per_image": 10.0, "load_s": 2.0,
                     "cpu_s_per_image": 0.5, "cpu_s_per_text": 0.1},
    },
    "streamed": {"audit": {"mem_mb": 900, "mib_per_s": 10.0, "fixed_s": 20.0},
                 "default": {"mem_mb": 1200, "mib_per_s": 5.0, "fixed_s": 30.0}},
}  # fmt: skip


def test_extract_request_by_hand():
    # model 1000 + activations 10 x min(100 rows, batch 64) + 3 copies x 100 rows x 0.5 MiB
    # = 1790 MB, x 1.5 safety = 2685 -> next 500: 3000; on a GPU + 2000 MB host share
    assert costs.extract_mem_mb(COSTS, "ViT-B-16", 100, 0.5, 64, gpu=False) == 3000
    assert costs.extract_mem_mb(COSTS, "ViT-B-16", 100, 0.5, 64, gpu=True) == 6000
    assert costs.extract_mem_mb(COSTS, "ViT-B-16", 100, 0.5, 64, False, attempt=2) == 5500
    # CPU: 2 s + 1000 rows x 0.5 s = 502 s, x 3 = 25.1 min -> 26
    assert costs.extract_runtime_min(COSTS, "ViT-B-16", 1000, gpu=False) == 26
    assert costs.extract_runtime_min(COSTS, "ViT-B-16", 10, gpu=False) == costs.MIN_RUNTIME


def test_streamed_request_by_hand():
    assert costs.stream_mem_mb(COSTS, "audit") == 1500  # 900 x 1.5 = 1350 -> 1500
    assert costs.stream_mem_mb(COSTS, "textspan") == 2000  # default: 1800 -> 2000
    # 20 s + 3000 MiB / 10 MiB/s = 320 s, x 3 = 16 min
    assert costs.stream_runtime_min(COSTS, "audit", 3000.0) == 16


def test_a_known_prefix_names_the_architecture():
    assert costs.arch_costs(COSTS, "ViT-B-16-quickgelu") is COSTS["models"]["ViT-B-16"]


def test_an_unmeasured_larger_model_asks_for_more_than_the_largest_measured():
    """With only ViT-B-16 measured, a ViT-H-14 job got ViT-B-16's memory: 1.5 x 1765 MB for
    a text tower that the rehearsal measured at 6.3 GB. An unmeasured architecture of known
    FLOPs is scaled from the largest measured one by the FLOPs ratio (never scaled down)."""
    h = costs.arch_costs(COSTS, "ViT-H-14")
    ratio = costs.GFLOP_PER_IMAGE["ViT-H-14"] / costs.GFLOP_PER_IMAGE["ViT-B-16"]
    assert h["model_mb"] == pytest.approx(1000 * ratio)
    assert h["act_mb_per_image"] == pytest.approx(10.0 * ratio)
    assert h["cpu_s_per_image"] == pytest.approx(0.5 * ratio)
    assert costs.text_mem_mb(COSTS, "ViT-H-14", gpu=False) >= 1.5 * 6300 * 0.95
    # an unknown name without FLOPs: the largest measured one, unscaled
    assert costs.arch_costs(COSTS, "RN50") == COSTS["models"]["ViT-B-16"]
    # a smaller unmeasured model is not scaled down below the measured one
    small = {"models": {"ViT-H-14": COSTS["models"]["ViT-B-16"]}, "streamed": {}}
    assert costs.arch_costs(small, "ViT-B-16")["model_mb"] == 1000


def _jobs_csv(path, rows):
    cols = ["config", "rule", "dataset", "model", "arch", "rows", "texts", "row_mib",
            "wall_s", "cpu_s", "max_rss_mb"]  # fmt: skip
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def test_fit_takes_the_model_memory_from_every_text_job(tmp_path):
    """A text-encoding job of the general pool (encode_method_texts) peaked 1.8 GB above the
    class-prompt job (ViT-H-14: 6.3 vs 4.5 GB); the model term, which sizes every text job,
    came from encode_classes only."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import rehearse

    base = {"config": "c", "dataset": "d", "model": "m", "arch": "ViT-B-16", "row_mib": 0.1}
    assert "row_mib" in rehearse.JOB_COLUMNS
    _jobs_csv(tmp_path / "jobs.csv", [
        {**base, "rule": "encode_classes", "texts": 10, "cpu_s": 5, "max_rss_mb": 1000},
        {**base, "rule": "encode_method_texts", "texts": 100, "cpu_s": 15, "max_rss_mb": 1600},
        {**base, "rule": "extract_features", "rows": 64, "cpu_s": 37, "max_rss_mb": 2000},
    ])  # fmt: skip
    mem = REPO / "benchmarks" / "results" / "memory.csv"  # the streamed stages' benchmark
    out = rehearse.fit_resources(tmp_path / "jobs.csv", mem, tmp_path / "resources.yaml")
    b16 = out["models"]["ViT-B-16"]
    assert b16["model_mb"] == 1600
    # (2000 - 1600 - 3 x 64 x 0.1) / 64 = 5.95 MB per image; (37 - 5) / 64 = 0.5 s per image
    assert b16["act_mb_per_image"] == pytest.approx(5.95)
    assert b16["cpu_s_per_image"] == pytest.approx(0.5)
    assert b16["cpu_s_per_text"] == pytest.approx(0.1)  # (15 - 5) / 100
