"""What each paper table reports (clipbias.tables) and the check that every configured method
reports it (clipbias.stages.evaluate.table_completeness)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipbias.io import read_csv
from clipbias.protocols import missing_table_metrics, table_rows
from clipbias.stages.evaluate import IncompleteTablesError, table_completeness
from clipbias.tables import table_metrics


def test_table_metrics_per_protocol_and_setting():
    assert table_metrics("none") == ["worst_group_acc", "avg_acc", "gap"]
    assert table_metrics("fairface") == ["maxskew_uniform@1000", "maxskew_empirical@1000"]
    assert "top10_bias" in table_metrics("genderbias")
    assert "common_counter_gap" in table_metrics("counteranimal")
    assert table_metrics("none", edit_targets=True)[-2:] == ["edit_success", "locality"]
    assert {"protected_v", "protected_v_excess"} <= set(table_metrics("none", protected=True))
    with pytest.raises(ValueError, match="unknown protocol"):
        table_metrics("nope")


def _metrics():
    rows = [
        ("zero_shot", "test", "worst_group_acc", 0.5, "", ""),
        ("zero_shot", "test", "avg_acc", 0.8, "", ""),
        ("zero_shot", "test", "gap", 0.3, "", ""),
        ("zero_shot", "test", "acc_group_0", 0.5, "g0", ""),
        ("ltc", "test", "worst_group_acc", 0.6, "", ""),
        ("ltc", "test", "avg_acc", np.nan, "", "split too small"),
        ("ltc", "val", "gap", 0.1, "", ""),  # another split: does not count for test
        ("ltc", "test", "gap", np.nan, "", ""),  # NaN without a reason: missing
    ]
    cols = ["method", "split", "metric", "value", "group_name", "note"]
    return pd.DataFrame(rows, columns=cols)


def test_missing_table_metrics_needs_a_value_or_a_reason():
    m = _metrics()
    names = ["worst_group_acc", "avg_acc", "gap"]
    assert missing_table_metrics(m, "test", ["zero_shot"], names) == []
    assert missing_table_metrics(m, "test", ["ltc"], names) == [
        ("ltc", "gap", "NaN without a note")
    ]
    assert missing_table_metrics(m, "test", ["other"], ["avg_acc"]) == [
        ("other", "avg_acc", "no row")
    ]
    # per-group rows are not the table's dataset-level rows
    assert set(table_rows(m, "test", ["acc_group_0"])["metric"]) == set()


def test_table_completeness_writes_statuses_and_fails_on_a_missing_metric(tmp_path):
    m = _metrics()
    m.loc[m["metric"].eq("gap") & m["method"].eq("ltc") & m["split"].eq("test"), "value"] = 0.2
    path = tmp_path / "metrics.csv"
    m.to_csv(path, index=False)
    meta = tmp_path / "dataset.json"
    meta.write_text(json.dumps({"group_names": ["g0", "g1"]}))
    cell = {
        "dataset": "d", "model": "m", "seed": 1, "path": str(path), "meta": str(meta),
        "split": "test", "methods": ["zero_shot", "ltc"], "controls": [],
        "metrics": ["worst_group_acc", "avg_acc", "gap"],
    }  # fmt: skip
    out = tmp_path / "completeness.csv"
    table_completeness([cell], out)
    got = read_csv(out).set_index(["method", "metric"])["status"]
    assert got[("ltc", "avg_acc")] == "not computable" and got[("ltc", "gap")] == "ok"
    assert (got.drop(("ltc", "avg_acc")) == "ok").all()
    # a dataset without groups: the group metrics do not apply
    meta.write_text(json.dumps({"group_names": []}))
    table_completeness([{**cell, "methods": ["zero_shot"]}], out)
    got = read_csv(out).set_index(["method", "metric"])["status"]
    assert got[("zero_shot", "worst_group_acc")] == "not applicable"
    assert got[("zero_shot", "avg_acc")] == "ok"
    # a configured method with no rows fails the job, and writes nothing
    out.unlink()
    meta.write_text(json.dumps({"group_names": ["g0"]}))
    with pytest.raises(IncompleteTablesError, match="ablate +avg_acc"):
        table_completeness([{**cell, "methods": ["zero_shot", "ablate"]}], out)
    assert not out.exists()
