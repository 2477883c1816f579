"""TextSpan (METHODS §3.3-3.4, §3.7) and the general text pool."""

import math

import numpy as np
import pandas as pd
import pytest

from clipbias.methods import load_resource_lines, resource_path
from clipbias.methods import text_pool as tp
from clipbias.methods.textspan import (
    augment_pool,
    bias_textspan_stats,
    choose_rank,
    default_rank,
    textspan,
    textspan_heads,
)


def _two_direction_head(k=50, seed=0):
    """Head outputs mu + a_i e1 + b_i e2 in D = 6, with var(a) > var(b)."""
    rng = np.random.default_rng(seed)
    e = np.eye(6)
    a = 3.0 * rng.standard_normal(k)
    b = 1.0 * rng.standard_normal(k)
    mu = 0.5 * e[5]
    C = mu + a[:, None] * e[0] + b[:, None] * e[1]
    texts = np.stack(
        [
            e[3],  # 0: orthogonal to the head
            (e[0] + e[3]) / np.sqrt(2),  # 1: half of e1 (projection has norm 1/sqrt2)
            e[1],  # 2: second direction
            e[5],  # 3: the mean direction (in the subspace, zero variance)
            e[0],  # 4: first direction
            (e[1] + e[4]) / np.sqrt(2),  # 5: half of e2
        ]
    )
    return C, texts, a, b


def test_two_text_directions_chosen_first_and_ve_reaches_one():
    C, texts, a, b = _two_direction_head()
    res = textspan(C, texts, m=2, rank=3)
    assert list(res.indices) == [4, 2]  # e1 (largest std) then e2
    ac, bc = a - a.mean(), b - b.mean()
    # VE_1 = ||a_c||^2 / (||a_c||^2 + ||b_c||^2) since e1 is orthogonal to e2
    assert res.ve[0] == pytest.approx(ac @ ac / (ac @ ac + bc @ bc))
    assert res.cum_ve[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(res.reconstruction, C, atol=1e-5)
    assert res.rank == 3


def test_first_iteration_matches_spec_scores():
    # With rank >= true rank the first pick is argmax of the sample std of C_c r_j.
    C, texts, _, _ = _two_direction_head()
    Cc = C - C.mean(0)
    scores = (Cc @ texts.T).std(axis=0, ddof=1)
    assert textspan(C, texts, m=1, rank=3).indices[0] == int(np.argmax(scores))


def _literal_textspan(C, R, m, r):
    """Direct transcription of METHODS §3.3 in D-space (slow reference for the test)."""
    R = R / np.linalg.norm(R, axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(C, full_matrices=False)
    V = vt[:r].T
    R = R @ V @ V.T
    mu = C.mean(0)
    Cc = C - mu
    recon = np.tile(mu, (len(C), 1))
    v0 = (Cc**2).sum()
    out, ves = [], []
    for _ in range(m):
        j = int(np.argmax((Cc @ R.T).std(axis=0, ddof=1)))
        u = R[j].copy()
        a = Cc @ u / (u @ u)
        recon += np.outer(a, u)
        Cc -= np.outer(a, u)
        R -= np.outer(R @ u / (u @ u), u)
        out.append(j)
        ves.append((a @ a) * (u @ u) / v0)
    return out, np.array(ves), recon, 1 - (Cc**2).sum() / v0


def test_matches_literal_implementation_on_random_data():
    rng = np.random.default_rng(1)
    # a rank-10 "head" in D = 24 (+ a mean), a pool of 40 random texts
    C = rng.standard_normal((80, 10)) @ rng.standard_normal((10, 24)) + rng.standard_normal(24)
    R = rng.standard_normal((40, 24))
    for r in (11, 6):
        # with r = 6 the subspace is spent after 6 texts: we stop there, while the literal
        # version goes on picking noise-level texts (numerical artefacts)
        k = min(8, r)
        idx, ve, recon, cum = _literal_textspan(C, R, m=k, r=r)
        res = textspan(C, R, m=8, rank=r)
        assert len(res.indices) == k
        assert list(res.indices) == idx
        np.testing.assert_allclose(res.ve, ve, rtol=1e-6, atol=1e-10)
        assert res.cum_ve[-1] == pytest.approx(cum)
        np.testing.assert_allclose(res.reconstruction, recon, rtol=1e-4, atol=1e-4)


def test_pool_exhaustion_stops_early():
    C, texts, _, _ = _two_direction_head()
    res = textspan(C, texts, m=6, rank=3)
    # only e1- and e2-like texts carry variance; the pool is spent after two picks
    assert len(res.indices) == 2
    assert res.cum_ve[-1] == pytest.approx(1.0)


def test_rank_helpers():
    C, _, _, _ = _two_direction_head()
    assert choose_rank(C, energy=0.999999) == 3
    assert choose_rank(C, energy=0.999999, max_rank=2) == 2
    assert default_rank(64) == 66
    # rank=None uses choose_rank
    _, texts, _, _ = _two_direction_head()
    assert textspan(C, texts, m=1, rank=None, energy=0.999999).rank == 3


def test_textspan_heads_table_and_reconstruction():
    C, texts, _, _ = _two_direction_head(k=30)
    rng = np.random.default_rng(2)
    heads = np.zeros((30, 2, 2, 6), dtype=np.float32)
    heads[:, 0, 1] = C
    heads[:, 1, 0] = C[rng.permutation(30)]
    heads[:, 1, 1] = rng.standard_normal((30, 6))
    heads[:, 0, 0] = rng.standard_normal((30, 6))
    names = [f"text {i}" for i in range(len(texts))]
    table, recon = textspan_heads(
        heads, [10, 11], texts, names, m=2, rank=3, return_reconstructions=True
    )
    assert list(table.columns) == [
        "layer", "head", "head_id", "rank", "text_index", "text", "ve", "cum_ve",
    ]  # fmt: skip
    h = table[table["head_id"] == "L10H1"]
    assert list(h["text"]) == ["text 4", "text 2"] and list(h["rank"]) == [1, 2]
    assert h["cum_ve"].iloc[-1] == pytest.approx(1.0)
    assert set(table["head_id"]) == {"L10H0", "L10H1", "L11H0", "L11H1"}
    assert recon.shape == heads.shape and recon.dtype == np.float32
    np.testing.assert_allclose(recon[:, 0, 1], C, atol=1e-5)
    only = textspan_heads(heads, [10, 11], texts, names, m=1, rank=3, select=[(11, 0)])
    assert list(only["head_id"]) == ["L11H0"]


def test_bias_stats_by_hand():
    rows = [
        # head L1H0: bias text at rank 2, VE 0.3 of 0.6 -> share 0.5
        (1, 0, "L1H0", 1, 0, "a dog", 0.2, 0.2),
        (1, 0, "L1H0", 2, 1, "a woman", 0.3, 0.5),
        (1, 0, "L1H0", 3, 2, "a car", 0.1, 0.6),
        # head L1H1: no bias texts
        (1, 1, "L1H1", 1, 2, "a car", 0.4, 0.4),
        (1, 1, "L1H1", 2, 0, "a dog", 0.1, 0.5),
    ]
    table = pd.DataFrame(rows, columns=["layer", "head", "head_id", "rank", "text_index",
                                        "text", "ve", "cum_ve"])  # fmt: skip
    st = bias_textspan_stats(table, ["a woman", "a man"], top_k=10, first_rank_max=1)
    st = st.set_index("head_id")
    assert st.loc["L1H0", "bias_share"] == pytest.approx(0.5)
    assert st.loc["L1H0", "first_bias_rank"] == 2
    assert st.loc["L1H0", "n_bias_top"] == 1
    assert st.loc["L1H0", "ve_total"] == pytest.approx(0.6)
    assert math.isinf(st.loc["L1H1", "first_bias_rank"]) and st.loc["L1H1", "bias_share"] == 0
    # rank 2 > first_rank_max = 1, but share 0.5 exceeds the 95th percentile of {0, 0.5}? no:
    # quantile(0.95) of [0.5, 0] = 0.475 < 0.5 -> flagged by share
    assert bool(st.loc["L1H0", "flagged"]) and not bool(st.loc["L1H1", "flagged"])


def test_augment_pool():
    texts, is_bias = augment_pool(["a dog", "a man", "a car"], ["a man", "a woman"])
    assert texts == ["a dog", "a man", "a car", "a woman"]
    assert list(is_bias) == [False, True, False, True]


def test_general_pool_file_is_large_unique_and_reproducible():
    lines = load_resource_lines(tp.POOL_FILE)
    assert len(lines) >= 1000
    assert len({x.lower() for x in lines}) == len(lines)
    assert lines == tp.generate_pool()
    raw = resource_path(tp.POOL_FILE).read_text(encoding="utf-8")
    assert raw == "\n".join(tp.generate_pool()) + "\n"
