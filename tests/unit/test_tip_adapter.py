"""Tip-Adapter and Tip-Adapter-F baselines (METHODS §5.7) on hand-computable cases."""

import math

import numpy as np
import pytest

from clipbias.methods import tip_adapter as tip

# --------------------------------------------------------------------------------------------
# 2-shot example, D = 2, t_0 = e1, t_1 = e2, τ = 1, α = 1, β = 5.5.
#   shot 0: (3, 4) -> key (.6, .8), label 0 (a class-0 image that looks like class 1 to text)
#   shot 1: (0, 1) -> key (0, 1),   label 1
#   query ê = (.6, .8): zero-shot logits (.6, .8) -> class 1
#   affinities (1, .8) -> cache logits (exp(0), exp(-5.5 * .2)) = (1, e^-1.1)
#   Tip-Adapter logits (.6 + 1, .8 + e^-1.1) = (1.6, 1.1329) -> class 0
# --------------------------------------------------------------------------------------------


@pytest.fixture
def two_shot():
    shots = np.array([[3.0, 4.0], [0.0, 1.0]])
    shot_labels = np.array([0, 1])
    cls = np.eye(2)
    query = np.array([[0.6, 0.8], [0.0, 2.0]])
    return shots, shot_labels, cls, query


def test_cache_is_unit_keys_and_one_hot_values(two_shot):
    shots, y, _, _ = two_shot
    keys, values = tip.build_cache(shots, y, 2)
    np.testing.assert_allclose(keys, [[0.6, 0.8], [0, 1]])
    np.testing.assert_array_equal(values, [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="labels"):
        tip.build_cache(shots, np.array([0, 2]), 2)


def test_two_shot_by_hand(two_shot):
    shots, y, cls, query = two_shot
    keys, values = tip.build_cache(shots, y, 2)
    logits = tip.tip_adapter_logits(query, cls, keys, values, alpha=1.0, beta=5.5, tau=1.0)
    np.testing.assert_allclose(logits[0], [0.6 + 1.0, 0.8 + math.exp(-1.1)], atol=1e-12)
    # second query (0, 2) -> ê = (0, 1): affinities (.8, 1)
    np.testing.assert_allclose(logits[1], [0.0 + math.exp(-1.1), 1.0 + 1.0], atol=1e-12)
    np.testing.assert_array_equal(np.argmax(logits, 1), [0, 1])
    np.testing.assert_array_equal(
        tip.tip_adapter_predict(query, cls, shots, y, alpha=1.0, beta=5.5, tau=1.0), [0, 1]
    )


def test_alpha_zero_is_zero_shot():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    cls = rng.normal(size=(8, 4))
    cls /= np.linalg.norm(cls, axis=0)
    shots = rng.normal(size=(8, 8))
    keys, values = tip.build_cache(shots, np.arange(8) % 4, 4)
    logits = tip.tip_adapter_logits(emb, cls, keys, values, alpha=0.0, tau=100.0)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, 100.0 * unit @ cls, atol=1e-10)
    np.testing.assert_array_equal(np.argmax(logits, 1), np.argmax(emb @ cls, 1))


def test_search_picks_the_best_validation_accuracy(two_shot):
    shots, y, cls, query = two_shot
    keys, values = tip.build_cache(shots, y, 2)
    best = tip.search_hyperparameters(
        query, np.array([0, 1]), cls, keys, values, alphas=[0.0, 1.0], betas=[5.5], tau=1.0
    )
    assert best["alpha"] == 1.0 and best["beta"] == 5.5 and best["acc"] == 1.0
    # with a query set the zero-shot model already gets right, the first grid point wins
    best = tip.search_hyperparameters(
        query[1:], np.array([1]), cls, keys, values, alphas=[0.0, 1.0], betas=[5.5], tau=1.0
    )
    assert best["alpha"] == 0.0


def _fewshot(seed=0, n_per=4, d=6, c=3):
    rng = np.random.default_rng(seed)
    cls = np.eye(d)[:, :c]
    labels = np.repeat(np.arange(c), n_per)
    # every shot leans toward the text of class (y + 1) % c: zero-shot gets them all wrong
    shots = 0.6 * np.eye(d)[labels] + 1.0 * np.eye(d)[(labels + 1) % c]
    shots += 0.1 * rng.normal(size=shots.shape)
    return shots, labels, cls


def test_tip_adapter_f_zero_epochs_is_training_free():
    shots, y, cls = _fewshot()
    res = tip.train_tip_adapter_f(shots, y, cls, epochs=0, device="cpu")
    keys, values = tip.build_cache(shots, y, 3)
    np.testing.assert_allclose(res.keys, keys, atol=1e-6)
    np.testing.assert_array_equal(res.values, values)
    np.testing.assert_allclose(
        res.logits(shots, cls), tip.tip_adapter_logits(shots, cls, keys, values), atol=1e-4
    )


def test_tip_adapter_f_trains_and_is_deterministic():
    shots, y, cls = _fewshot()
    kw = dict(alpha=0.2, beta=1.0, tau=10.0, lr=1e-2, epochs=20, batch_size=5, device="cpu")
    r1 = tip.train_tip_adapter_f(shots, y, cls, seed=3, **kw)
    r2 = tip.train_tip_adapter_f(shots, y, cls, seed=3, **kw)
    r3 = tip.train_tip_adapter_f(shots, y, cls, seed=4, **kw)
    np.testing.assert_array_equal(r1.keys, r2.keys)
    assert r1.history.equals(r2.history)
    assert not np.array_equal(r1.keys, r3.keys)  # other batch order
    h = r1.history
    assert list(h.columns) == ["epoch", "loss", "acc", "lr"]
    assert len(h) == 20 and h.loss.iloc[-1] < h.loss.iloc[0]
    assert h.lr.iloc[-1] < h.lr.iloc[0]  # cosine schedule decays
    assert r1.config["optimizer"].startswith("AdamW")
    keys0, _ = tip.build_cache(shots, y, 3)
    assert not np.allclose(r1.keys, keys0)
