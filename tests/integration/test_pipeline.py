"""The whole workflow on a reduced embedded default (tests/config/tiny.yaml), run for real.

Covers: every stage end to end, resume after SIGKILL in the middle of feature extraction,
detection of a corrupted shard, and a transient failure that succeeds on retry. Each test
works in its own copy of the workflow under tmp_path. The fault tests ask Snakemake for the
feature manifest only (the same target in every call, as a user repeating a command would):
what they check ends there, and the stages after it are covered by the tiny run itself.

Determinism of the result tables across independent runs is checked where a second run
happens anyway: the grid's copy of the tiny cell (tests/integration/test_grid.py) and the
run through SLURM (test_slurm_pipeline.py) must have ``tiny_run``'s tables
(``workflow_helpers.assert_same_cell_tables``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflow_helpers import (
    CONFIG,
    EXP,
    FEAT,
    HEADS,
    MANIFEST,
    METRICS,
    N_HEADS,
    N_LAYERS,
    copy_run,
    digest,
    run,
    snakemake_cmd,
)

pytestmark = pytest.mark.slow


def incomplete_outputs(work: Path) -> set[str]:
    """Outputs Snakemake has marked incomplete (job started, not acknowledged as finished)."""
    out = set()
    folder = work / ".snakemake" / "incomplete"
    for marker in folder.iterdir() if folder.is_dir() else []:
        try:
            out.add(base64.urlsafe_b64decode(marker.name).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def shard_states(work: Path) -> tuple[list[Path], list[Path]]:
    """(shards finished as far as Snakemake knows, shards whose job is under way)."""
    marked = incomplete_outputs(work)
    logs = work / "logs/tiny/extract_features/planted/planted-vit-tiny/seed-7"
    done, running = [], []
    for i in range(2):
        shard = work / FEAT / f"shard-{i:05d}.parquet"
        rel = str(shard.relative_to(work))
        if shard.exists() and rel not in marked:
            done.append(shard)
        elif (logs / f"{i:05d}.log").exists() and rel in marked:
            running.append(shard)
    return done, running


def test_every_stage_produced_its_outputs(tiny_run):
    manifest = json.loads((tiny_run / FEAT / "manifest.json").read_text())
    # train + val + test and the two counterfactual twin splits of test; features.splits is
    # auto: train is extracted because tiny.yaml's RefineCLIP draws its shots from train
    assert manifest["n_shards"] == 2 and manifest["rows"] == 800 + 300 + 3 * 300
    extracted = set().union(*(e["splits"] for e in manifest["shards"]))
    assert extracted == {"train", "val", "test", "twin_background", "twin_protected"}
    from clipbias.features import FeatureSet

    fs = FeatureSet.open(tiny_run / FEAT)
    idx, heads, rest = fs.load(split="test")
    emb = heads.sum((1, 2)) + rest
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert heads.shape[1:3] == (N_LAYERS, N_HEADS)

    table = pd.read_csv(tiny_run / METRICS / "metrics.csv")
    zs = table[table["method"] == "zero_shot"]
    assert {"avg_acc", "worst_group_acc", "gap", "acc_group_3"} <= set(zs["metric"])
    assert list(table.columns[:6]) == ["method", "split", "metric", "value", "ci_low", "ci_high"]
    from clipbias.methods import registry

    assert set(table["method"]) == set(registry.names())  # tiny.yaml runs every method
    # percentile intervals bracket the accuracy-type estimates; Cramér's V is biased upwards
    # in small samples, so its resampled values (and interval) can lie above the estimate
    prot = table["metric"].str.startswith("protected_v")
    assert (table.loc[~prot, "ci_low"] <= table.loc[~prot, "value"] + 1e-12).all()
    ex = table[table["metric"] == "protected_v_excess"].dropna(subset=["value"])
    assert len(ex) and (ex["ci_low"] <= ex["ci_high"]).all() and ex["value"].between(-1, 1).all()
    paired = pd.read_csv(tiny_run / METRICS / "paired.csv")
    paired = paired[paired["baseline"] == "zero_shot"]
    assert set(paired["method"]) == set(registry.names()) - {"zero_shot", "ltc_random"}
    truth_dir = tiny_run / EXP / "ground_truth/planted/planted-vit-tiny/seed-7"
    gt = pd.read_csv(truth_dir / "heads.csv")
    n = N_LAYERS * N_HEADS
    # causal and output (twins) and associative tables of the background and the colour
    for (kind, attr), g in gt.groupby(["kind", "attribute"]):
        assert len(g) == n and set(g["rank"]) == set(range(1, n + 1)), (kind, attr)
    assert len(gt) == 6 * n and set(gt["kind"]) == {"causal", "associative", "output"}
    assert (gt.loc[gt["kind"] == "output", "effect"] >= 0).all()
    total = pd.read_csv(truth_dir / "total.csv")
    assert set(total["attribute"]) == {"background", "colour"}
    scores = pd.read_csv(truth_dir / "locator_scores.csv")
    assert {"ltc", "ltc_full", "audit", "refineclip"} <= set(scores["locator"])
    assert set(scores["kind"]) == {"causal"}
    ltc = json.loads((tiny_run / HEADS / "ltc.json").read_text())
    assert len(ltc["frequencies"]) == n
    draws = pd.read_csv(tiny_run / METRICS / "random_draws.csv")
    assert len(draws) == 20
    log = json.loads(
        (tiny_run / EXP / "models/planted/planted-vit-tiny/seed-7/train_log.json").read_text()
    )
    assert len(log["epochs"]) == 2
    summary = pd.read_csv(
        tiny_run / EXP / "metrics/planted/planted-vit-tiny/summary_over_seeds.csv"
    )
    # one seed per row; a metric no seed could compute (Cramér's V of a method that predicts
    # one class: the 2-epoch tiny model's RoboShot) counts 0 seeds and says why
    undefined = summary["mean"].isna()
    assert set(summary.loc[~undefined, "n_seeds"]) == {1}
    assert (summary.loc[undefined, "n_seeds"] == 0).all()
    assert summary.loc[undefined, "note"].fillna("").astype(str).str.len().gt(0).all()
    assert (tiny_run / EXP / "tables/grid_main.md").is_file()


def test_sigkill_during_extraction_then_resume(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "wf")
    shutil.rmtree(work / FEAT)
    # one job at a time and small batches, so extraction is observable shard by shard; the
    # batch size is not part of any output, so the earlier outputs stay up to date
    cfg = work / CONFIG
    cfg.write_text(cfg.read_text().replace("batch_size: 128\n  dtype", "batch_size: 16\n  dtype"))
    cmd = snakemake_cmd(MANIFEST, cores=1)
    proc = subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            done, running = shard_states(work)
            if done and running:  # >= 1 finished shard and >= 1 shard in the middle of work
                break
            assert proc.poll() is None, "pipeline ended before the kill"
            time.sleep(0.05)
        else:
            pytest.fail("extraction never had a finished and a running shard at once")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done, _ = shard_states(work)
    complete = {p.name: (p.stat().st_mtime_ns, digest(p)) for p in done}
    assert complete
    for p in (work / FEAT).glob("shard-*.parquet"):  # no half-written file under a final name
        side = Path(f"{p}.sha256")
        assert not side.exists() or side.read_text().split()[0] == digest(p)
    assert not (work / FEAT / "manifest.json").exists()

    # Snakemake keeps its directory lock after a SIGKILL (it cannot tell a dead process from
    # a live one on a shared filesystem): release it, then rerun the same command.
    rc, out = run(work, "--unlock")
    assert rc == 0, out[-5000:]
    rc, out = run(work, MANIFEST)
    assert rc == 0, out[-5000:]
    for name, (mtime, sha) in complete.items():
        p = work / FEAT / name
        assert p.stat().st_mtime_ns == mtime and digest(p) == sha, f"{name} was recomputed"
    assert len(list((work / FEAT).glob("shard-*.parquet"))) == 2
    assert not list((work / FEAT).glob(".*.partial"))


def test_corrupted_shard_is_reported_with_rebuild_command(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "wf")
    shard = work / FEAT / "shard-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    rc, out = run(work, MANIFEST)
    assert rc != 0
    assert "shard-00001.parquet is corrupt" in out and "rerun the same snakemake command" in out
    # follow the instruction in the message
    shard.unlink()
    Path(f"{shard}.sha256").unlink()
    rc, out = run(work, MANIFEST)
    assert rc == 0, out[-5000:]
    from clipbias.features import FeatureSet

    FeatureSet.open(work / FEAT).verify_all()  # every checksum


def test_transient_failure_succeeds_on_retry(tiny_run, tmp_path):
    work = copy_run(tiny_run, tmp_path / "wf")
    for p in [*(work / FEAT).glob("shard-00001.parquet*"), work / FEAT / "manifest.json"]:
        p.unlink()
    marker = tmp_path / "failed-once"
    env = {"CLIPBIAS_FAIL_ONCE": f"extract_features:{marker}"}
    rc, out = run(work, MANIFEST, "--retries", "1", env=env)
    assert rc == 0, out[-5000:]
    assert marker.exists(), "the injected failure did not happen"
    assert "injected transient failure" in out
