"""Baseline algorithms (METHODS §4.9-4.10), LTC-random, and the shipped text data."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from clipbias import metrics
from clipbias.methods import ltc
from clipbias.methods import ltc_random as lr
from clipbias.methods import ortho_cali as oc_mod
from clipbias.methods import roboshot as rs_mod
from clipbias.methods import textspan_ablation as ta

# --------------------------------------------------------------------------------------------
# Ortho-Cali
# --------------------------------------------------------------------------------------------


def test_ortho_cali_without_pairs_is_orthogonal_projection():
    rng = np.random.default_rng(0)
    cls = rng.standard_normal((3, 4))
    cls /= np.linalg.norm(cls, axis=0)
    a = np.array([[2.0, 0.0, 0.0]])  # one spurious direction e1 (normalised inside)
    for orientation in ("original", "ltc"):
        out = oc_mod.ortho_cali(cls, a, orientation=orientation)
        np.testing.assert_allclose(out[0], 0.0, atol=1e-7)  # orthogonal to e1
        np.testing.assert_allclose(np.linalg.norm(out, axis=0), 1.0, atol=1e-6)
        expected = cls[1:] / np.linalg.norm(cls[1:], axis=0)
        np.testing.assert_allclose(out[1:], expected, atol=1e-6)


def test_ortho_cali_by_hand_with_pair():
    # A = e1 -> P0 = diag(0, 1, 1). Candidates z0 = e2, z1 = -e2, pair (0, 1):
    # d = 2 e2, M = 4 e2 e2^T, G = I + 4000 e2 e2^T, G^-1 = diag(1, 1/4001, 1),
    # Pi = diag(0, 1/4001, 1) (symmetric: both orientations agree).
    # t = (1, 1, 1)/sqrt3 -> Pi t ∝ (0, 1/4001, 1).
    t = np.ones((3, 1)) / np.sqrt(3)
    z = np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    pi = oc_mod.ortho_cali_projection(np.array([[1.0, 0, 0]]), z, [(0, 1)], lam=1000)
    np.testing.assert_allclose(pi, np.diag([0, 1 / 4001, 1]), atol=1e-12)
    out = oc_mod.ortho_cali(t, np.array([[1.0, 0, 0]]), z, [(0, 1)])
    v = np.array([0, 1 / 4001, 1.0])
    np.testing.assert_allclose(out[:, 0], v / np.linalg.norm(v), atol=1e-6)


def test_ortho_cali_orientations_differ_when_not_symmetric():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 5))
    z = rng.standard_normal((4, 5))
    pairs = [(0, 1), (2, 3)]
    cls = rng.standard_normal((5, 3))
    pi = oc_mod.ortho_cali_projection(a, z, pairs)
    orig = oc_mod.ortho_cali(cls, a, z, pairs, orientation="original", renormalize=False)
    ltcv = oc_mod.ortho_cali(cls, a, z, pairs, orientation="ltc", renormalize=False)
    np.testing.assert_allclose(orig, (cls.T @ pi.T).T, atol=1e-5)  # t Pi^T
    np.testing.assert_allclose(ltcv, (cls.T @ pi).T, atol=1e-5)  # t Pi
    assert not np.allclose(orig, ltcv, atol=1e-3)
    # the original orientation ends in the range of P0: orthogonal to the spurious prompts
    a_unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(a_unit @ orig, 0.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# RoboShot
# --------------------------------------------------------------------------------------------


def test_roboshot_modes():
    emb = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    q_rej = np.array([[1.0], [0.0], [0.0]])
    q_acc = np.array([[0.0], [0.0], [1.0]])
    # reject only (no accept): normalised first -> exact projection away from e1
    out = rs_mod.roboshot(emb, q_rej, None, mode="both")
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    both = rs_mod.roboshot(emb, q_rej, q_acc, mode="both")
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(both, ltc.accept_update(ltc.reject_update(e, q_rej), q_acc), 1e-6)
    acc = rs_mod.roboshot(emb, q_rej, q_acc, mode="accept")
    np.testing.assert_allclose(acc, ltc.accept_update(e, q_acc), atol=1e-6)
    with pytest.raises(ValueError):
        rs_mod.roboshot(emb, q_rej, q_acc, mode="reject")


# --------------------------------------------------------------------------------------------
# Head baselines
# --------------------------------------------------------------------------------------------


def test_select_textspan_heads():
    table = pd.DataFrame(
        {
            "layer": [10, 10, 11, 11, 11, 11],
            "head": [1, 1, 3, 3, 5, 5],
            "rank": [1, 2, 1, 2, 1, 2],
            "text": ["A dog", "Lakes at dawn", "A chair", "A lakeside cafe", "Beach", "A car"],
        }
    )
    assert ta.select_textspan_heads(table, ["lake", "beach"], top_k=2) == [(10, 1), (11, 5)]
    assert ta.select_textspan_heads(table, ["lake"], top_k=1) == []


def test_textspan_ablation_is_mean_ablation():
    rng = np.random.default_rng(3)
    heads = rng.standard_normal((6, 2, 3, 4)).astype(np.float32)
    rest = rng.standard_normal((6, 4)).astype(np.float32)
    means = ltc.head_means(rng.standard_normal((8, 2, 3, 4)).astype(np.float32))
    hl = [(0, 1), (1, 2)]
    expected = ltc.ablate_heads(heads, [0, 1], hl, means).sum((1, 2)) + rest
    np.testing.assert_allclose(ta.textspan_ablation(heads, rest, [0, 1], hl, means), expected, 1e-5)


@pytest.fixture
def random_case():
    rng = np.random.default_rng(5)
    n, n_layers, n_heads, d = 40, 5, 3, 6
    heads = (0.2 * rng.standard_normal((n, n_layers, n_heads, d))).astype(np.float32)
    rest = rng.standard_normal((n, d)).astype(np.float32)
    cls = np.eye(d, dtype=np.float32)[:, :2]
    labels = rng.integers(0, 2, n)
    groups = 2 * labels + rng.integers(0, 2, n)
    means = ltc.head_means(heads)
    q = ltc.insight_basis(rng.standard_normal((2, d)), rng.standard_normal((2, d)))
    return heads, rest, [7, 8, 9, 10, 11], cls, labels, groups, means, q


def test_ltc_random_draws(random_case):
    heads, rest, layers, cls, labels, groups, means, q = random_case
    S, Y = [(11, 0), (10, 2)], [(11, 1)]
    args = (heads, rest, layers, cls, labels, groups, S, Y, q, means)
    draws = lr.ltc_random(*args, n_draws=100, seed=42)
    assert len(draws) == 100
    assert list(draws.columns) == lr.RANDOM_COLUMNS
    allowed = {f"L{lyr}H{h}" for lyr in (8, 9, 10, 11) for h in range(3)}  # last 4 layers
    for s, y in zip(draws["S"], draws["Y"], strict=True):
        s_heads, y_heads = s.split(";"), y.split(";")
        assert len(s_heads) == 2 and len(set(s_heads)) == 2 and len(y_heads) == 1
        assert set(s_heads) <= allowed - {"L11H0", "L10H2"}
        assert set(y_heads) <= allowed - {"L11H1"}
    # every draw equals a direct LTC correction with the drawn heads (the one-draw-at-a-time
    # implementation the vectorised one replaced): same heads, same predictions
    for row in draws.itertuples():
        emb = ltc.ltc_correct(heads, rest, layers, row.S.split(";"), row.Y.split(";"), q, means)
        pm = metrics.point_metrics(metrics.predict(emb, cls), labels, groups)
        assert row.worst_group_acc == pm["worst_group_acc"]
        assert row.avg_acc == pm["avg_acc"]
    # seeded
    pd.testing.assert_frame_equal(draws, lr.ltc_random(*args, n_draws=100, seed=42))
    assert not draws["S"].equals(lr.ltc_random(*args, n_draws=100, seed=1)["S"])


def test_random_control_summary_by_hand():
    draws = pd.DataFrame({"worst_group_acc": [0.1, 0.2, 0.3, 0.4], "gap": [0.1, 0.2, 0.3, 0.4]})
    out = lr.random_control_summary(draws, {"worst_group_acc": 0.35, "gap": 0.15}).set_index(
        "metric"
    )
    # 3 of 4 draws below 0.35 -> 75th percentile; 1 draw >= 0.35 -> p = (1 + 1) / 5
    assert out.loc["worst_group_acc", "percentile"] == pytest.approx(75.0)
    assert out.loc["worst_group_acc", "p_value"] == pytest.approx(0.4)
    assert out.loc["worst_group_acc", "mean"] == pytest.approx(0.25)
    assert out.loc["worst_group_acc", "sd"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4], ddof=1))
    # gap: lower is better; 1 draw <= 0.15 -> p = 2 / 5
    assert out.loc["gap", "p_value"] == pytest.approx(0.4)
    assert out.loc["gap", "percentile"] == pytest.approx(25.0)


# --------------------------------------------------------------------------------------------
# Shipped text data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["waterbirds", "planted"])
def test_texts_yaml_structure(name):
    cfg = yaml.safe_load((REPO / "config" / "texts" / f"{name}.yaml").read_text())
    for key in ("insight_pairs", "ortho_cali", "attribute_prompts", "spurious_words"):
        assert key in cfg, f"{name}.yaml lacks {key}"
    oc = cfg["ortho_cali"]
    n = len(oc["candidates"])
    assert all(0 <= i < n and 0 <= j < n for i, j in oc["pairs"])
    assert len(cfg["attribute_prompts"]["default"]) == len(cfg["attribute_prompts"]["values"])


def test_waterbirds_texts_yaml():
    cfg = yaml.safe_load((REPO / "config/texts/waterbirds.yaml").read_text())
    acc, rej = cfg["insight_pairs"]["accept"], cfg["insight_pairs"]["reject"]
    assert len(acc) == 6 and len(rej) == 10
    assert acc[0] == ["a bird with webbed feet", "a bird with talons feet"]
    assert rej[6] == ["a bird has feathers made of the protein",
                      "a bird's physiology with feathers that rep"]  # fmt: skip
    oc = cfg["ortho_cali"]
    assert oc["lambda"] == 1000 and len(oc["spurious"]) == 8 and len(oc["candidates"]) == 10
    assert "A photo of a moutain." in oc["spurious"]
    assert "A photo of a waterbird in the ocean" in oc["candidates"]
    pairs = {tuple(p) for p in oc["pairs"]}
    assert len(pairs) == 20
    assert all((i < 5) == (j < 5) for i, j in pairs)  # within-class pairs only
    assert cfg["attribute_prompts"]["default"] == [
        "A photo of a bird on land background.",
        "A photo of a bird on water background.",
    ]
    assert cfg["place_classes"]["classes"] == ["bamboo_forest", "forest", "ocean", "lake"]
