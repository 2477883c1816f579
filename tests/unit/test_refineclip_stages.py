"""RefineCLIP stages (clipbias.stages.refineclip), the few-shot plumbing, edit metrics in the
evaluate stage, and the RefineCLIP report builders and figures, on a tiny 3-class store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipbias import metrics, plots, report
from clipbias.features import (
    FeatureSet,
    build_table,
    write_classifier,
    write_manifest,
    write_shard,
)
from clipbias.methods import fewshot
from clipbias.methods import refineclip as rc
from clipbias.methods import refineclip_adapt as ra
from clipbias.methods.refineclip_ablate import check_phase1
from clipbias.stages import evaluate as ev
from clipbias.stages import predict
from clipbias.stages import refineclip as stage

LAYERS = [0, 1, 2, 3]
N_HEADS, DIM = 3, 12
CLASSES = ["a", "b", "c"]


def _split(rng, n, split, corr, text):
    y = rng.integers(0, 3, n)
    bg = np.where(rng.random(n) < corr, (y == 2).astype(int), rng.integers(0, 2, n))
    heads = 0.05 * rng.standard_normal((n, len(LAYERS), N_HEADS, DIM))
    heads[:, 3, 1] += 0.9 * (2 * bg - 1)[:, None] * text[:, 2]  # spurious: pushes class c
    heads[:, 2, 0] += 0.8 * text[:, y].T  # the class
    rest = 0.1 * rng.standard_normal((n, DIM))
    index = pd.DataFrame(
        {
            "image_id": [f"{split}_{i:04d}" for i in range(n)],
            "path": [f"{split}/{i}.png" for i in range(n)],
            "split": split,
            "label": y,
            "group": 2 * y + bg,
            "attr_background": bg,
        }
    )
    return index, heads.astype(np.float32), rest.astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rcstore")
    rng = np.random.default_rng(5)
    text = np.linalg.qr(rng.standard_normal((DIM, 3)))[0].astype(np.float32)
    parts = [
        _split(rng, 240, "train", 0.9, text),
        _split(rng, 150, "val", 0.9, text),
        _split(rng, 300, "test", 0.0, text),
    ]
    index = pd.concat([p[0] for p in parts], ignore_index=True)
    heads = np.concatenate([p[1] for p in parts])
    rest = np.concatenate([p[2] for p in parts])
    emb = heads.sum((1, 2)) + rest
    meta = {"layers": LAYERS, "n_layers": 4, "n_heads": N_HEADS, "dim": DIM, "head_dim": 4}
    ones = np.ones(len(index), np.float32)
    write_shard(
        build_table(index, heads, rest, emb, ones, ones, ones, LAYERS, "float32", meta),
        root / "shard-00000.parquet",
    )
    write_manifest([root / "shard-00000.parquet"], root / "manifest.json")
    write_classifier(root / "classifier.parquet", CLASSES, text.T, {"logit_scale": 50.0})
    groups = [f"{c} bg{b}" for c in CLASSES for b in (0, 1)]
    (root / "dataset.json").write_text(json.dumps({"classes": CLASSES, "group_names": groups}))
    return root, text


# ----------------------------------------------------------------------------- few-shot


def test_edit_target_classes_by_name_and_worst_k():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 0, 2, 2])  # class accuracies 0.5, 1.0, 0.5
    assert fewshot.edit_target_classes(["c", "a"], CLASSES) == [0, 2]
    assert fewshot.edit_target_classes("b", CLASSES) == [1]
    assert fewshot.edit_target_classes("worst:1", CLASSES, labels, preds) == [0]  # tie: lower id
    assert fewshot.edit_target_classes("worst:2", CLASSES, labels, preds) == [0, 2]
    assert fewshot.edit_target_classes([], CLASSES) == []
    with pytest.raises(ValueError, match="not classes of the dataset"):
        fewshot.edit_target_classes(["d"], CLASSES)
    with pytest.raises(ValueError, match="k must be between 1 and 2"):
        fewshot.edit_target_classes("worst:3", CLASSES, labels, preds)


def test_resolve_tau(store):
    root, _ = store
    assert fewshot.resolve_tau(None, root) == 50.0
    assert fewshot.resolve_tau("checkpoint", root) == 50.0
    assert fewshot.resolve_tau(20, root) == 20.0
    with pytest.raises(ValueError, match="positive number or 'checkpoint'"):
        fewshot.resolve_tau("hot", root)


def test_phase1_records_the_shots_that_tip_adapter_draws(store, tmp_path):
    root, text = store
    res = stage.locate_refineclip(root, tmp_path / "p1.json", seed=9, n_per_class=6, T=5)
    on_disk = json.loads((tmp_path / "p1.json").read_text())
    assert on_disk["selected"] == res["selected"]
    fs = FeatureSet.open(root)
    idx = fs.index(split="train")
    shots = fewshot.shot_index(idx, 6, seed=9)
    assert on_disk["shots"]["image_ids"] == shots["image_id"].tolist()
    assert np.bincount(shots["label"]).tolist() == [6, 6, 6]
    # the same result as the algorithm on those rows (the stage reads the last 4 layers only)
    _, h, r = fs.load(split="train")
    pos = idx.index[idx["image_id"].isin(shots["image_id"])].to_numpy()
    direct = rc.identify_then_ablate(h[pos], r[pos], text, idx["label"].to_numpy()[pos], LAYERS,
                                     T=5, class_names=CLASSES)  # fmt: skip
    assert direct["selected"] == res["selected"] and direct["table4"] == res["table4"]
    assert res["n_wrong"] > 0 and res["selected"]["heads"]
    # the predict stage refuses a phase-1 file of other settings
    with pytest.raises(ValueError, match="n_per_class 6 vs 10"):
        check_phase1(on_disk, 9, 10, "train", 5, 4, "cosine", "utility")
    with pytest.raises(ValueError, match="seed 9 vs 1"):
        check_phase1(on_disk, 1, 6, "train", 5, 4, "cosine", "utility")


@pytest.mark.parametrize("selection", ["validation", "validation_t"])
def test_ours_star_selects_on_the_validation_split(store, tmp_path, selection):
    """Ours* (paper App. A.2): the list whose utility-chosen prefix has the best worst group
    on val; ``validation_t``: the best prefix of any list."""
    root, text = store
    res = stage.locate_refineclip(
        root, tmp_path / "s.json", seed=9, n_per_class=6, T=5, selection=selection
    )
    assert res["selection"] == selection and res["validation"]["split"] == "val"
    assert res["params"]["selection"] == selection and res["params"]["val_split"] == "val"
    vidx, vh, vr = FeatureSet.open(root).load(split="val")
    s = res["selected"]
    pred = metrics.predict(rc.zero_ablate(vh, vr, LAYERS, s["heads"]), text)
    wg = metrics.worst_group_accuracy(pred, vidx["label"].to_numpy(), vidx["group"].to_numpy())
    assert s["validation_worst_group_acc"] == pytest.approx(wg)
    for d in res["directions"]:
        for item in d["lists"]:
            t_u = int(np.argmax(item["utility"])) + 1  # first maximum: the smaller t
            assert item["utility_t"] == t_u
            if selection == "validation":
                assert item["validation_worst_group_acc"][t_u - 1] <= wg + 1e-12
                if item["heads"][: s["t"]] == s["heads"]:
                    assert s["t"] == t_u
            else:
                assert max(item["validation_worst_group_acc"]) <= wg + 1e-12


# ------------------------------------------------------------ Ours*, streamed (issue 15)


def _reference_select_on_validation(
    result, heads, rest, classifier, labels, groups, layers, tie_break="avg_group_acc"
):
    """Ours* as it was before issue 15 (the whole validation split's heads in memory at
    once), kept verbatim as the reference of the streamed selection."""
    from clipbias.methods.heads import parse_head

    def group_metrics(preds):
        wg = metrics.worst_group_accuracy(preds, labels, groups)
        if tie_break == "avg_group_acc":
            return wg, metrics.avg_group_accuracy(preds, labels, groups)
        return wg, metrics.avg_overall_accuracy(preds, labels)

    heads = np.asarray(heads)
    classifier = np.asarray(classifier, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    layers = [int(x) for x in layers]
    emb = heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, np.float64)
    base = emb @ classifier
    out = {k: v for k, v in result.items() if k not in ("directions", "selected")}
    out["directions"] = []
    wg0, tb0 = group_metrics(np.argmax(base, axis=1))
    best = None
    for d in result["directions"]:
        new_lists = []
        for item in d["lists"]:
            pos = [(layers.index(parse_head(h)[0]), parse_head(h)[1]) for h in item["heads"]]
            head_logits = np.stack(
                [heads[:, li, h].astype(np.float64) @ classifier for li, h in pos], axis=1
            )
            preds_t = np.argmax(base[:, None, :] - np.cumsum(head_logits, axis=1), axis=2)
            wgs, tbs = [], []
            for t in range(preds_t.shape[1]):
                wg, tb = group_metrics(preds_t[:, t])
                wgs.append(wg)
                tbs.append(tb)
                key = (wg, tb, -(t + 1))
                if best is None or key > best[0]:
                    best = (key, d["key"], item, t + 1)
            new_lists.append(
                dict(item, validation_worst_group_acc=wgs, **{f"validation_{tie_break}": tbs})
            )
        out["directions"].append(dict(d, lists=new_lists))
    out["selection"] = "validation"
    out["validation"] = {
        "n": int(len(labels)),
        "criterion": "worst_group_acc",
        "tie_break": tie_break,
        "no_ablation_worst_group_acc": wg0,
        f"no_ablation_{tie_break}": tb0,
    }
    if best is None:
        out["selected"] = dict(
            result["selected"], validation_worst_group_acc=wg0, **{f"validation_{tie_break}": tb0}
        )
        return out
    (wg, tb, _), key, item, t = best
    out["selected"] = {
        "heads": item["heads"][:t],
        "t": int(t),
        "direction": key,
        "score": item["score"],
        "utility": item["utility"][t - 1],
        "validation_worst_group_acc": wg,
        f"validation_{tie_break}": tb,
    }
    return out


def _as_validation_t(ref):
    """The frozen reference's output in today's format: its choice of list and t is the
    ``validation_t`` selection (list and t on validation); lists record their utility t."""
    ref["selection"] = "validation_t"
    ref["validation"]["choose_t"] = "validation"
    for d in ref["directions"]:
        for item in d["lists"]:
            item["utility_t"] = rc.select_max_utility([np.asarray(item["utility"])])[1]
    return ref


def _assert_same(a, b, where="result"):
    """Equal JSON documents; floats within 1e-12."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=1e-12, rel=0), where
    else:
        assert a == b, where


@pytest.mark.parametrize("max_batch", [7, None])
def test_streamed_ours_star_equals_the_in_memory_selection(store, tmp_path, monkeypatch, max_batch):
    """The stage's Ours* file equals the pre-streaming result (the validation split's heads
    loaded whole), whether the split comes in one batch or in batches of 7 rows; the stage
    never loads a whole split."""
    import clipbias.features as features

    root, _ = store
    if max_batch:
        monkeypatch.setattr(features, "MAX_BATCH_ROWS", max_batch)
    p1 = stage.locate_refineclip(root, tmp_path / "p1.json", seed=9, n_per_class=6, T=5)
    fs = FeatureSet.open(root)
    vidx, vh, vr = fs.load(layers=LAYERS, split="val")
    _, classifier, _ = features.read_classifier(root / "classifier.parquet")
    ref = _as_validation_t(
        _reference_select_on_validation(
            p1, vh, vr, classifier, vidx["label"].to_numpy(), vidx["group"].to_numpy(), LAYERS
        )
    )
    ref["validation"]["split"] = "val"
    ref["params"] = dict(ref["params"], selection="validation_t", val_split="val")

    def no_load(*a, **k):
        raise AssertionError("Ours* must stream the validation split, not load it")

    monkeypatch.setattr(FeatureSet, "load", no_load)
    stage.locate_refineclip(
        root, tmp_path / "star.json", seed=9, n_per_class=6, T=5, selection="validation_t"
    )
    new = json.loads((tmp_path / "star.json").read_text())
    _assert_same(json.loads(json.dumps(ref)), new)
    # the comparison bites: candidates differ in worst-group accuracy
    wgs = {
        w for d in new["directions"] for i in d["lists"] for w in i["validation_worst_group_acc"]
    }
    assert len(wgs) > 1


@pytest.mark.parametrize("tie_break", ["avg_group_acc", "avg_acc"])
def test_validation_counts_in_any_batches_equal_the_in_memory_selection(store, tie_break):
    """Counts accumulated over arbitrary row batches (rows without a group included: they
    count for the average accuracy only) give the in-memory selection exactly."""
    root, text = store
    fs = FeatureSet.open(root)
    tidx, th, tr = fs.load(split="train")
    p1 = rc.identify_then_ablate(th, tr, text, tidx["label"].to_numpy(), LAYERS, T=6)
    assert len(p1["directions"]) > 1
    vidx, vh, vr = fs.load(split="val")
    labels, groups = vidx["label"].to_numpy(), vidx["group"].to_numpy().copy()
    groups[::9] = -1
    ref = _as_validation_t(
        _reference_select_on_validation(p1, vh, vr, text, labels, groups, LAYERS, tie_break)
    )
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, len(labels)), 6, replace=False))
    bounds = list(zip([0, *cuts], [*cuts, len(labels)], strict=True))
    counts = rc.validation_counts(
        p1, ((vh[a:b], vr[a:b], labels[a:b], groups[a:b]) for a, b in bounds), text, LAYERS
    )
    assert counts.n == len(labels)
    _assert_same(ref, rc.select_on_validation_counts(p1, counts, tie_break, "validation"))
    # the in-memory entry point is the one-batch case
    whole = rc.select_on_validation(
        p1, vh, vr, text, labels, groups, LAYERS, tie_break, "validation"
    )
    _assert_same(ref, whole)


def test_ours_star_on_a_split_without_rows_is_an_error(store, tmp_path):
    from clipbias.features import FeatureError

    root, _ = store
    with pytest.raises(FeatureError, match="split 'holdout' is not in the features"):
        stage.locate_refineclip(root, tmp_path / "s.json", seed=9, n_per_class=6, T=3,
                                selection="validation", val_split="holdout")  # fmt: skip


def test_shots_missing_from_the_store_are_an_error(store):
    from clipbias.features import FeatureError

    root, _ = store
    with pytest.raises(ValueError, match="not in split 'train'"):
        fewshot.load_rows(FeatureSet.open(root), "train", ["train_0001", "nope"], [])
    with pytest.raises(FeatureError, match="split 'shots' is not in the features"):
        fewshot.shot_rows(FeatureSet.open(root), "shots", 5, 1)


# ------------------------------------------------------------------------------- phase 2


@pytest.fixture(scope="module")
def phase1(store, tmp_path_factory):
    root, _ = store
    out = tmp_path_factory.mktemp("p1") / "refineclip_adapt.json"
    res = stage.locate_refineclip(root, out, seed=5, n_per_class=8, T=6)
    assert res["n_wrong"] > 0  # something to edit
    return out


def test_adapt_stage_trains_on_the_phase1_shots_and_tracks_targets(store, phase1, tmp_path):
    root, text = store
    params = {"variant": "diag", "objective": "refineclip", "alpha": 100.0, "beta": 10.0,
              "lr": 0.02, "steps": 40, "tau": None, "eval_every": 10}  # fmt: skip
    stage.adapt_refineclip(root, root / "dataset.json", phase1, tmp_path / "a.safetensors",
                           tmp_path / "c.csv", 5, params, edit_targets="worst:1")  # fmt: skip
    p1 = json.loads(phase1.read_text())
    fs = FeatureSet.open(root)
    idx, h, r = fewshot.load_rows(fs, "train", p1["shots"]["image_ids"], LAYERS)
    emb = h.sum((1, 2), dtype=np.float64) + r
    y = idx["label"].to_numpy()
    # eqs. 11-12: W and C ∪ A of the error direction S* was selected for
    succ, loc = rc.phase2_masks(y, metrics.predict(emb, text), p1["selected"]["direction"])
    teacher = rc.zero_ablate(h, r, LAYERS, p1["selected"]["heads"])
    direct = ra.train_adapter(emb, y, text, teacher, succ, loc, alpha=100.0, beta=10.0, lr=0.02,
                              steps=40, tau=50.0, seed=5)  # fmt: skip
    saved = ra.load_adapter(tmp_path / "a.safetensors")
    np.testing.assert_allclose(saved["theta"], direct.params["theta"], rtol=1e-5)
    curves = pd.read_csv(tmp_path / "c.csv")
    assert set(curves["set"]) == {"train", "success", "locality", "test", "target", "other"}
    assert sorted(curves.loc[curves["set"] == "target", "step"].unique()) == [0, 10, 20, 30, 40]
    # target = the class with the lowest zero-shot test accuracy, tracked on its images only
    tidx, _, temb = fs.load(layers=[], split="test")
    ty = tidx["label"].to_numpy()
    zs = metrics.predict(temb, text)
    worst = fewshot.edit_target_classes("worst:1", CLASSES, ty, zs)
    start = curves[(curves["set"] == "target") & (curves["step"] == 0) & (curves.metric == "acc")]
    assert start["value"].iloc[0] == pytest.approx(np.mean(zs[ty == worst[0]] == worst[0]))


def test_sensitivity_sweeps_alpha_beta_and_both(store, phase1, tmp_path):
    root, _ = store
    params = {"variant": "diag", "objective": "refineclip", "alpha": 1e3, "beta": 1e3,
              "lr": 0.01, "steps": 500, "tau": 30.0, "eval_every": 5}  # fmt: skip
    out = tmp_path / "sens.csv"
    stage.refineclip_sensitivity(root, root / "dataset.json", phase1, out, 5, params,
                                 values=[10.0, 1000.0], edit_targets=["c"], steps=20)  # fmt: skip
    df = pd.read_csv(out)
    assert list(df.columns) == stage.SENSITIVITY_COLUMNS
    runs = df[["sweep", "alpha", "beta"]].drop_duplicates().itertuples(index=False)
    assert sorted(map(tuple, runs)) == sorted(stage.sensitivity_runs([10.0, 1000.0]))
    assert set(df["set"]) == {"success", "locality", "test", "target", "other"}
    assert df["step"].max() == 20
    # each run is the adapter trained with its (α, β); α = β = 0 is the std_ft objective
    inp = stage._phase2_inputs(root, root / "dataset.json", json.loads(phase1.read_text()),
                               ["c"], "test")  # fmt: skip
    args = (inp["emb"], inp["labels"], inp["classifier"], inp["teacher"], inp["success"],
            inp["locality"])  # fmt: skip
    kw = {"tau": 30.0, "lr": 0.01, "steps": 20, "eval_every": 5, "seed": 5,
          "eval_sets": inp["eval_sets"]}  # fmt: skip
    for (sweep, a, b), objective in (
        (("none", 0.0, 0.0), "std_ft"), (("both", 1e3, 1e3), "refineclip"),
        (("alpha", 10.0, 0.0), "refineclip"),
    ):  # fmt: skip
        c = ra.train_adapter(*args, objective=objective, alpha=a, beta=b, **kw).curves
        c = c[c["set"] != "train"].reset_index(drop=True)
        got = df[(df["sweep"] == sweep) & (df["alpha"] == a) & (df["beta"] == b)]
        np.testing.assert_allclose(got["value"].to_numpy(), c["value"].to_numpy(), err_msg=sweep)


def test_adapt_stage_teaches_only_the_selected_direction(store, phase1, tmp_path):
    """The success loss covers W_{y_e,ŷ_e} of S*'s direction; ``all_directions`` every
    misclassified shot. The run records the teacher's and the adapter's accuracy on W."""
    from safetensors import safe_open

    root, text = store
    phase1 = tmp_path / "p1.json"
    p1 = stage.locate_refineclip(root, phase1, seed=1, n_per_class=20, T=6)
    assert len(p1["directions"]) > 1  # several error directions compete
    base = {"variant": "diag", "objective": "refineclip", "alpha": 1e3, "beta": 1e3,
            "lr": 1e-3, "steps": 20, "tau": None, "eval_every": 10}  # fmt: skip
    info = {}
    for sets in ("selected_direction", "all_directions"):
        out = tmp_path / f"{sets}.safetensors"
        stage.adapt_refineclip(root, root / "dataset.json", phase1, out, tmp_path / "c.csv", 1,
                               {**base, "edit_sets": sets})  # fmt: skip
        with safe_open(str(out), framework="numpy") as f:
            info[sets] = json.loads(f.metadata()["clipbias.refineclip"])
    sel = next(d for d in p1["directions"] if d["key"] == p1["selected"]["direction"])
    cfg = info["selected_direction"]["config"]
    assert cfg["n_success"] == sel["n_wrong"]
    assert cfg["n_locality"] == sel["n_correct"] + sel["n_reference"]
    assert info["selected_direction"]["direction"] == sel["key"]
    assert info["all_directions"]["config"]["n_success"] == p1["n_wrong"] > sel["n_wrong"]
    # the teacher's accuracy on W, by hand
    fs = FeatureSet.open(root)
    idx, h, r = fewshot.load_rows(fs, "train", p1["shots"]["image_ids"], LAYERS)
    y = idx["label"].to_numpy()
    succ, _ = rc.phase2_masks(y, metrics.predict(h.sum((1, 2)) + r, text), sel["key"])
    teacher = rc.zero_ablate(h, r, LAYERS, p1["selected"]["heads"])
    want = np.mean(metrics.predict(teacher[succ], text) == y[succ])
    assert cfg["teacher_acc_success"] == pytest.approx(want)
    curves = pd.read_csv(tmp_path / "c.csv")  # of the last run
    final = curves[(curves["set"] == "success") & (curves.metric == "acc") & (curves.step == 20)]
    assert info["all_directions"]["config"]["success_acc"] == pytest.approx(final.value.item())
    with pytest.raises(ValueError, match="edit_sets"):
        stage.adapt_refineclip(root, root / "dataset.json", phase1, out, tmp_path / "c.csv", 1,
                               {**base, "edit_sets": "every"})  # fmt: skip


def test_adapt_stage_chooses_the_step_on_the_validation_split(store, phase1, tmp_path):
    """``step_split``: the adapter of the evaluated step with the best worst-group accuracy
    on that split (ties: the earlier step); its curve is kept; the test split is refused."""
    root, text = store
    params = {"variant": "diag", "objective": "std_ft", "lr": 0.05, "steps": 60, "tau": None,
              "eval_every": 10, "step_split": "val"}  # fmt: skip
    stage.adapt_refineclip(root, root / "dataset.json", phase1, tmp_path / "a.safetensors",
                           tmp_path / "c.csv", 5, params)  # fmt: skip
    curves = pd.read_csv(tmp_path / "c.csv")
    sel = curves[curves["set"] == "select"].pivot(index="step", columns="metric", values="value")
    assert list(sel.index) == [0, 10, 20, 30, 40, 50, 60]
    key = list(zip(sel["worst_group_acc"], sel["avg_group_acc"], -sel.index, strict=True))
    best_step = -max(key)[2]
    saved = ra.load_adapter(tmp_path / "a.safetensors")
    # the saved adapter reproduces the chosen step's validation accuracy
    vidx, _, vemb = FeatureSet.open(root).load(layers=[], split="val")
    pred = metrics.predict(ra.apply_adapter(vemb, saved), text)
    vy, vg = vidx["label"].to_numpy(), vidx["group"].to_numpy()
    assert metrics.worst_group_accuracy(pred, vy, vg) == pytest.approx(
        sel.loc[best_step, "worst_group_acc"]
    )
    assert metrics.avg_group_accuracy(pred, vy, vg) == pytest.approx(
        sel.loc[best_step, "avg_group_acc"]
    )
    # std_ft with these settings keeps changing the adapter: the choice is not vacuous
    assert len(set(key)) > 1 and sel["avg_group_acc"].nunique() > 1
    with pytest.raises(ValueError, match="test split"):
        stage.adapt_refineclip(root, root / "dataset.json", phase1, tmp_path / "b.safetensors",
                               tmp_path / "d.csv", 5, {**params, "step_split": "test"})  # fmt: skip


# ------------------------------------------------------------------------------ evaluate


def _write_pred(path, index, pred, method):
    from clipbias.methods.api import MethodOutput

    predict.write_predictions(path, index, MethodOutput(pred), {"method": method, "split": "test"})


def test_evaluate_appends_edit_metric_rows(store, tmp_path):
    root, text = store
    tidx, _, temb = FeatureSet.open(root).load(layers=[], split="test")
    y = tidx["label"].to_numpy()
    zs = metrics.predict(temb, text)
    other = np.where(y == 2, 2, zs)  # fixes class c only
    files = {"zero_shot": tmp_path / "zs.parquet", "fix_c": tmp_path / "fix.parquet"}
    _write_pred(files["zero_shot"], tidx, zs, "zero_shot")
    _write_pred(files["fix_c"], tidx, other, "fix_c")
    out = {k: tmp_path / f"{k}.csv" for k in ("m", "p", "d", "s")}
    ev.evaluate(files, root / "dataset.json", out["m"], out["p"], out["d"], out["s"],
                n_boot=100, edit_targets=["c"])  # fmt: skip
    m = pd.read_csv(out["m"]).set_index(["method", "metric"])["value"]
    assert m[("fix_c", "edit_success")] == 1.0
    assert m[("zero_shot", "edit_success")] == pytest.approx(np.mean(zs[y == 2] == 2))
    assert m[("fix_c", "locality")] == m[("zero_shot", "locality")]
    want = rc.edit_metrics(zs, y, [2])
    assert m[("zero_shot", "locality_class_avg")] == pytest.approx(want["locality_class_avg"])
    ev.evaluate(files, root / "dataset.json", out["m"], out["p"], out["d"], out["s"], n_boot=100)
    assert "edit_success" not in set(pd.read_csv(out["m"])["metric"])


# -------------------------------------------------------------------------------- report


def test_heads_table_is_table4_with_common_and_selected_marks():
    p1 = {
        "selected": {"heads": ["L3H1", "L2H0"], "t": 2, "direction": "0->1", "score": "C"},
        "directions": [
            {"key": "0->1", "true_label": 0, "pred_label": 1, "true_name": "a", "pred_name": "b",
             "lists": [{"score": "A", "heads": ["L3H1", "L3H2", "L2H0"]},
                       {"score": "C", "heads": ["L3H1", "L2H0", "L1H1"]}]},
        ],
    }  # fmt: skip
    t = report.refineclip_heads_table(p1)
    assert list(t.columns) == ["Direction", "Rank", "(A)", "(B)", "(C)", "(D)"]
    assert t["(A)"].tolist() == ["(L3, H1)*", "(L3, H2)", "(L2, H0)*"]
    assert t["(C)"].tolist() == ["(L3, H1)*†", "(L2, H0)*†", "(L1, H1)"]
    assert t["(B)"].tolist() == ["skipped", "", ""] and t["Direction"].iloc[0] == "a → b"


def test_paper_reference_columns_follow_the_method_and_table():
    info = {
        "zero_shot": {"name": "zero_shot"},
        "refineclip": {"name": "refineclip", "n_per_class": 10},
        "rc20": {"name": "refineclip", "n_per_class": 20},
        "probe": {"name": "refineclip_classifier", "n_per_class": 10, "ablate": False},
    }
    assert report.paper_method_key("rc20", info, "Table 3") == "refineclip_phase1_n20"
    assert report.paper_method_key("rc20", info, "Table 1") is None
    assert report.paper_method_key("refineclip", info, "Table 1") == "refineclip_phase1"
    assert report.paper_method_key("probe", info, "Table 6") == "original_clip"
    rows = []
    for m, (wg, ag) in {
        "zero_shot": (0.4, 0.7),
        "refineclip": (0.6, 0.8),
        "rc20": (0.65, 0.8),
    }.items():
        rows += [{"method": m, "split": "test", "metric": "worst_group_acc", "value": wg,
                  "ci_low": wg - 0.05, "ci_high": wg + 0.05},
                 {"method": m, "split": "test", "metric": "avg_group_acc", "value": ag,
                  "ci_low": ag - 0.02, "ci_high": ag + 0.02}]  # fmt: skip
    t = report.refineclip_main_table(pd.DataFrame(rows), None, info, "refineclip:1", "ViT-L-14")
    t = t.set_index("Method")
    assert t.loc["Zero-shot", "Paper Wst."] == "47.7" and t.loc["Zero-shot", "Paper Avg."] == "75.5"
    assert t.loc["RefineCLIP phase 1", "Paper Wst."] == "72.1"
    assert t.loc["RefineCLIP phase 1 (n = 20)", "Paper Wst."] == "–"
    assert t.loc["RefineCLIP phase 1", "Worst-group"] == "60.0 [55.0, 65.0]"
    summary = pd.DataFrame(
        [{"method": m, "metric": k, "mean": v, "sd": 0.01, "min": v, "max": v, "n_seeds": 5,
          "n_better_than_zero_shot": 0}
         for m in ("zero_shot", "rc20") for k, v in (("avg_group_acc", 0.8), ("worst_group_acc", 0.6))]
    )  # fmt: skip
    s = report.refineclip_stability_table(summary, info, "refineclip:3", "ViT-B-16")
    s = s.set_index("Method")
    assert s.loc["RefineCLIP phase 1 (n = 20)", "Paper Wst."] == "68.5 ± 2.3"
    assert s.loc["RefineCLIP phase 1 (n = 20)", "Wst. (mean ± sd)"] == "60.0 ± 1.0"
    assert s.loc["Zero-shot", "Paper Avg."] == "72.8" and s.loc["Zero-shot", "Seeds"] == "5"


def test_refineclip_figures_write_png_and_pdf(tmp_path, store, phase1):
    p1 = json.loads(phase1.read_text())
    stem = tmp_path / "u"
    plots.utility_vs_t(p1, stem)
    assert (tmp_path / "u.png").stat().st_size > 1000 and (tmp_path / "u.pdf").is_file()
    curves = pd.DataFrame(
        [(s, st, "acc", 0.5 + 0.01 * s) for s in range(0, 30, 10) for st in ("target", "other")],
        columns=["step", "set", "metric", "value"],
    )
    plots.edit_success_vs_locality({"m": curves}, tmp_path / "e")
    assert (tmp_path / "e.png").stat().st_size > 1000
    plots.alpha_beta_sensitivity(None, tmp_path / "n")  # no study configured: a note figure
    assert (tmp_path / "n.png").stat().st_size > 1000


def test_export_stage_writes_a_loadable_edited_checkpoint(tmp_path):
    import torch
    from safetensors.torch import save_file

    from clipbias.models import load_model

    torch.manual_seed(0)
    base = load_model("planted-vit-tiny", None, "cpu")
    ckpt = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in base.model.state_dict().items()}, str(ckpt))
    theta = np.random.default_rng(1).uniform(0.5, 1.5, 64).astype(np.float32)
    ra.save_adapter(tmp_path / "a.safetensors", {"variant": "diag", "theta": theta})
    out, info = tmp_path / "edited" / "m.safetensors", tmp_path / "edited" / "m.json"
    stage.export_refineclip_model("planted-vit-tiny", str(ckpt), tmp_path / "a.safetensors", out,
                                  info, device="cpu")  # fmt: skip
    meta = json.loads(info.read_text())
    assert meta["variant"] == "diag" and meta["verify_max_abs_diff"] <= 1e-4
    edited = load_model("planted-vit-tiny", str(out), "cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        e0 = base.model.encode_image(x).numpy()
        e1 = edited.model.encode_image(x).numpy()
    np.testing.assert_allclose(e1, e0 * theta, rtol=1e-4, atol=1e-5)


def test_without_a_misclassified_shot_the_edit_is_the_identity(store, tmp_path):
    root, text = store
    idx, _, emb = FeatureSet.open(root).load(layers=[], split="train")
    ok = idx[metrics.predict(emb, text) == idx["label"].to_numpy()].groupby("label").head(4)
    p1 = {"selected": {"heads": [], "t": 0}, "shots": {"split": "train",
          "image_ids": ok["image_id"].tolist()}}  # fmt: skip
    (tmp_path / "p1.json").write_text(json.dumps(p1))
    params = {"variant": "diag", "objective": "refineclip", "alpha": 1e3, "beta": 1e3,
              "lr": 0.05, "steps": 30, "tau": None, "eval_every": 10}  # fmt: skip
    for objective, changed in (("refineclip", False), ("std_ft", True)):
        out = tmp_path / f"{objective}.safetensors"
        stage.adapt_refineclip(root, root / "dataset.json", tmp_path / "p1.json", out,
                               tmp_path / f"{objective}.csv", 1, {**params, "objective": objective})  # fmt: skip
        theta = ra.load_adapter(out)["theta"]
        assert np.any(theta != 1.0) == changed, objective


def test_phase1_refuses_datasets_with_per_image_candidates(store, tmp_path):
    """GenderBias-VL-style datasets (``candidate_columns``) classify each image among its own
    candidates; phase 1's W/C/A and utility argmax over all classes, so the stage stops with
    a message instead of editing for another task. Without candidates it runs as before."""
    root, _ = store
    meta = tmp_path / "dataset.json"
    meta.write_text(json.dumps({"candidate_columns": ["label", "attr_counterpart"]}))
    with pytest.raises(ValueError, match="candidate_columns.*datasets\\[\\].methods"):
        stage.locate_refineclip(root, tmp_path / "s.json", seed=9, n_per_class=6, T=3,
                                dataset_meta=meta)  # fmt: skip
    assert not (tmp_path / "s.json").exists()
    meta.write_text(json.dumps({"classes": ["a", "b", "c"]}))
    stage.locate_refineclip(root, tmp_path / "s.json", seed=9, n_per_class=6, T=3,
                            dataset_meta=meta)  # fmt: skip
    assert (tmp_path / "s.json").is_file()


def test_shots_from_the_edit_targets_only(store, tmp_path):
    """METHODS §5.8: the edit's shots come from its target classes (by name or worst:<k>)."""
    root, _ = store
    res = stage.locate_refineclip(
        root, tmp_path / "t.json", seed=9, n_per_class=4, T=3,
        shot_classes="edit_targets", edit_targets=["c", "a"],
    )  # fmt: skip
    assert sorted(set(res["shots"]["labels"])) == [0, 2]
    assert np.bincount(res["shots"]["labels"]).tolist() == [4, 0, 4]
    assert res["shots"]["classes"] == [0, 2] and res["shots"]["shot_classes"] == "edit_targets"
    # the draw is the plain draw restricted to those classes
    idx = FeatureSet.open(root).index(split="train")
    want = fewshot.shot_index(idx[idx["label"].isin([0, 2])], 4, seed=9)
    assert res["shots"]["image_ids"] == want["image_id"].tolist()
    # worst:1 = the class with the lowest zero-shot test accuracy
    fs = FeatureSet.open(root)
    tidx, _, temb = fs.load(layers=[], split="test")
    pred = metrics.predict(temb, fewshot.read_classifier(root / "classifier.parquet")[1])
    worst = fewshot.edit_target_classes("worst:1", CLASSES, tidx["label"].to_numpy(), pred)
    res = stage.locate_refineclip(
        root, tmp_path / "w.json", seed=9, n_per_class=4, T=3,
        shot_classes="edit_targets", edit_targets="worst:1",
    )  # fmt: skip
    assert sorted(set(res["shots"]["labels"])) == worst
    # later stages refuse a phase-1 file drawn from other classes
    with pytest.raises(ValueError, match="shot_classes 'edit_targets' vs 'all'"):
        check_phase1(res, 9, 4, "train", 3, 4, "cosine", "utility")
    with pytest.raises(ValueError, match="needs the dataset's edit_targets"):
        stage.locate_refineclip(root, tmp_path / "x.json", seed=9, shot_classes="edit_targets")
    with pytest.raises(ValueError, match="'all' or 'edit_targets'"):
        stage.locate_refineclip(root, tmp_path / "x.json", seed=9, shot_classes="targets")


def test_labels_of_aliased_ids_name_their_shots():
    info = {
        "refineclip_n20": {"name": "refineclip", "n_per_class": 20},
        "std_t": {"name": "refineclip_std_ft", "n_per_class": 10, "shot_classes": "edit_targets"},
        "probe": {"name": "refineclip_classifier", "ablate": False},
    }
    assert report.refineclip_label("refineclip_n20", info) == "RefineCLIP phase 1 (n = 20)"
    assert (
        report.refineclip_label("std_t", info) == "STD-FT (diag, CE only) (n = 10, target classes)"
    )
    assert report.refineclip_label("probe", info) == "Linear probe (no ablation)"
    assert report.refineclip_label("refineclip", info) == "RefineCLIP phase 1"
