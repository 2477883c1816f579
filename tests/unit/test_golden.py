"""Golden parity: LTC and TextSpan against the outputs of their public reference code.

The inputs and the reference outputs are committed in tests/data/golden (its README names the
reference repositories, commits and functions). Discrete outputs (head sets and their order,
n_active, |C|, |W|, predictions, contrast classes, winners, TextSpan indices) must match
exactly; frequencies and VE to 1e-6, logits to 1e-5 (the reference computes in float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipbias import metrics
from clipbias.methods import ltc
from clipbias.methods.textspan import (
    textspan,
    textspan_from_moments,
    textspan_heads,
    textspan_heads_from_moments,
)
from clipbias.streaming import HeadMoments

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
ATOL_F = 1e-6  # frequencies F_C, F_W, their differences, kappa; TextSpan VE
ATOL_LOGIT = 1e-5


@pytest.fixture(scope="module")
def ltc_in() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "ltc_inputs.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ltc_out() -> dict:
    return json.loads((GOLDEN / "ltc_outputs.json").read_text())


@pytest.fixture(scope="module")
def ts_in() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "textspan_inputs.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ts_out() -> dict:
    return json.loads((GOLDEN / "textspan_outputs.json").read_text())


def _grid(freq: dict[str, float], n_layers: int, n_heads: int) -> np.ndarray:
    """{"L{l}H{h}": f} -> [L, H] (the golden layer numbers are 0..L-1)."""
    return np.array([[freq[f"L{li}H{h}"] for h in range(n_heads)] for li in range(n_layers)])


# ---------------------------------------------------------------------------------------------
# LTC locate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["groups", "full"])
def test_locate_matches_reference(ltc_in, ltc_out, variant):
    d, ref = ltc_in, ltc_out["locate"][variant]
    res = ltc.locate_ltc(
        d["locate_heads"], d["locate_rest"], d["classifier"], d["locate_labels"],
        [int(x) for x in d["layers"]], d["locate_groups"], [int(g) for g in d["minority_groups"]],
        variant,
    )  # fmt: skip
    assert [x["head"] for x in res["S"]] == ref["S"]
    assert [x["head"] for x in res["Y"]] == ref["Y"]
    assert (res["n_active"], res["n_correct"], res["n_wrong"]) == (
        ref["n_active"], ref["n_correct"], ref["n_wrong"],
    )  # fmt: skip
    np.testing.assert_allclose([x["score"] for x in res["S"]], ref["S_score"], rtol=0, atol=ATOL_F)
    np.testing.assert_allclose([x["score"] for x in res["Y"]], ref["Y_score"], rtol=0, atol=ATOL_F)
    _, n_layers, n_heads, _ = d["locate_heads"].shape
    for key in ("F_C", "F_W"):
        np.testing.assert_allclose(
            _grid(res[key], n_layers, n_heads), ref[key], rtol=0, atol=ATOL_F, err_msg=key
        )
    assert res["kappa"] == pytest.approx(ref["kappa"], abs=ATOL_F)


def test_locate_per_sample_matches_reference(ltc_in, ltc_out):
    d, ref = ltc_in, ltc_out["locate_per_sample"]
    delta, preds, contrast = ltc.head_margins(
        d["locate_heads"], d["locate_rest"], d["classifier"], d["locate_labels"]
    )
    np.testing.assert_array_equal(preds, ref["pred"])
    np.testing.assert_array_equal(contrast, ref["contrast"])
    np.testing.assert_array_equal(ltc.top_heads(delta), ref["winner_flat"])


# ---------------------------------------------------------------------------------------------
# LTC correct: every reference method row on the test split
# ---------------------------------------------------------------------------------------------

# method -> (locate variant whose S / Y it uses, ablate S, accept-project Y)
CORRECT = {
    "Baseline": (None, False, False),
    "Ablate": ("groups", True, False),
    "LTC": ("groups", True, True),
    "LTC-no-ablate": ("groups", False, True),
    "LTC-full": ("full", True, True),
}


@pytest.mark.parametrize("method", list(CORRECT))
def test_correct_matches_reference(ltc_in, ltc_out, method):
    d, ref = ltc_in, ltc_out["correct"][method]
    assert set(CORRECT) == set(ltc_out["correct"])  # every reference row is checked
    variant, ablate, project = CORRECT[method]
    located = ltc_out["locate"][variant] if variant else {"S": [], "Y": []}
    s = located["S"] if ablate else []
    y = located["Y"] if project else []
    heads = d["test_heads"]
    emb = ltc.ltc_correct(
        heads, d["test_rest"], [int(x) for x in d["layers"]], s, y,
        ltc.insight_basis(d["accept_pos"], d["accept_neg"]),
        means=ltc.head_means(heads),  # the reference ablates with test-split means
    )  # fmt: skip
    logits = emb.astype(np.float64) @ d["classifier"].astype(np.float64)
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=ATOL_LOGIT)
    preds = np.argmax(logits, axis=1)
    np.testing.assert_array_equal(preds, ref["pred"])
    labels, groups = d["test_labels"], d["test_groups"]
    assert metrics.avg_overall_accuracy(preds, labels) == pytest.approx(ref["accuracy"])
    assert metrics.worst_group_accuracy(preds, labels, groups) == pytest.approx(
        ref["worst_group_accuracy"]
    )


# ---------------------------------------------------------------------------------------------
# TextSpan: all entry points
# ---------------------------------------------------------------------------------------------


def _moments(heads: np.ndarray, layers: list[int]) -> HeadMoments:
    mom = HeadMoments(layers, heads.shape[2], heads.shape[3])
    for start in range(0, len(heads), 128):  # several batches, as when streamed
        mom.update(heads[start : start + 128])
    return mom


def _textspan_results(entry: str, d: dict[str, np.ndarray]) -> dict[str, dict]:
    """{"L{l}H{h}": {"indices", "ve", "cum_ve", "total_variance", "rank"}} for every head."""
    heads, pool = d["heads"], d["pool"]
    m, rank = int(d["m"]), int(d["rank"])
    layers = [int(x) for x in d["layers"]]
    _, n_layers, n_heads, _ = heads.shape
    texts = [f"text {i}" for i in range(len(pool))]
    out: dict[str, dict] = {}
    if entry in ("textspan", "textspan_from_moments"):
        mom = _moments(heads, layers)
        for li in range(n_layers):
            for h in range(n_heads):
                if entry == "textspan":
                    r = textspan(heads[:, li, h], pool, m=m, rank=rank)
                else:
                    r = textspan_from_moments(
                        mom.mean(li, h), mom.gram(li, h), mom.centred_gram(li, h), mom.count,
                        pool, m=m, rank=rank,
                    )  # fmt: skip
                out[f"L{layers[li]}H{h}"] = {
                    "indices": list(r.indices), "ve": r.ve, "cum_ve": r.cum_ve,
                    "total_variance": r.total_variance, "rank": r.rank,
                }  # fmt: skip
        return out
    if entry == "textspan_heads":
        table = textspan_heads(heads, layers, pool, texts, m=m, rank=rank)
    else:
        table, _ = textspan_heads_from_moments(_moments(heads, layers), pool, texts, m=m, rank=rank)
    for hid, grp in table.groupby("head_id", sort=False):
        grp = grp.sort_values("rank")
        out[hid] = {
            "indices": grp["text_index"].tolist(), "ve": grp["ve"].to_numpy(),
            "cum_ve": grp["cum_ve"].to_numpy(),
        }  # fmt: skip
    return out


@pytest.mark.parametrize(
    "entry", ["textspan", "textspan_from_moments", "textspan_heads", "textspan_heads_from_moments"]
)
def test_textspan_matches_reference(ts_in, ts_out, entry):
    ref = ts_out["heads"]
    got = _textspan_results(entry, ts_in)
    assert sorted(got) == sorted(ref)  # all 12 heads
    for hid, r in ref.items():
        g = got[hid]
        assert g["indices"] == r["indices"], hid
        np.testing.assert_allclose(g["ve"], r["ve"], rtol=0, atol=ATOL_F, err_msg=hid)
        np.testing.assert_allclose(g["cum_ve"], r["cum_ve"], rtol=0, atol=ATOL_F, err_msg=hid)
        if "total_variance" in g:
            assert g["total_variance"] == pytest.approx(r["total_variance"], rel=1e-6), hid
            assert g["rank"] == r["rank"], hid


def test_golden_files_are_the_documented_ones():
    """The README's sha256 sums are those of the committed files (a regenerated file must
    come with its new provenance)."""
    import hashlib
    import re

    readme = (GOLDEN / "README.md").read_text()
    listed = dict(re.findall(r"`([a-z_]+\.(?:npz|json))`\s*\|\s*`([0-9a-f]{64})`", readme))
    files = sorted(p.name for p in GOLDEN.iterdir() if p.suffix in (".npz", ".json"))
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == digest, name
