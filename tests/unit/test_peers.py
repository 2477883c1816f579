"""The peer methods of METHODS §10 on tiny cases computed by hand, each with a check that the
test catches a deliberate bug (a flipped sign, a missing normalisation), and the registry's
composition and protocol rules (§10.7-10.8).

Pattern: ``_check_x(fn)`` holds the hand-computed assertions for an implementation ``fn``;
``test_x`` runs it on the real function, ``test_x_check_catches_...`` on a mutated copy and
expects the assertions to fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipbias.methods import closed_form as cf
from clipbias.methods import fairerclip as fc
from clipbias.methods import prism, prism_train, registry, sage, sfid, tie
from clipbias.methods.api import Correction
from clipbias.methods.compose import chain

# --------------------------------------------------------------------------------------- TIE
# t̂_0 = (1, 0), t̂_1 = (0, 1); fitting rows (0.8, 0.6) and (0.6, 0.8) with a = 0, (0, 1) with
# a = 1: λ_0 = mean(0.8, 0.6) = 0.7, λ_1 = 1. Test row (0.6, 0.8): â = 1 (0.8 > 0.6),
# z = (0.6, 0.8) − 1·(0, 1) = (0.6, −0.2); test row (0.9, 0.1): â = 0, z = (0.2, 0.1).
UNITS = np.array([[1.0, 0.0], [0.0, 1.0]])
FIT = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
TEST = np.array([[0.6, 0.8], [0.9, 0.1]])


def _check_tie(translate):
    scales = tie.tie_scales(FIT, np.array([0, 0, 1]), UNITS)
    np.testing.assert_allclose(scales, [0.7, 1.0])
    a = tie.infer_attribute(TEST, UNITS)
    np.testing.assert_array_equal(a, [1, 0])
    np.testing.assert_allclose(translate(TEST, a, scales, UNITS), [[0.6, -0.2], [0.2, 0.1]])


def test_tie_by_hand():
    _check_tie(tie.tie_translate)


def test_tie_check_catches_a_flipped_sign():
    def bug(e, a, s, u):
        return e + s[a][:, None] * u[a]

    with pytest.raises(AssertionError):
        _check_tie(bug)


def test_tie_scales_of_an_absent_value_are_nan():
    assert np.isnan(tie.tie_scales(FIT, np.array([0, 0, 0]), UNITS)[1])


# -------------------------------------------------------------------------------- PRISM-mini
# Words (2, 0, 0) and (1, 1, 0) span the first two axes: P = diag(0, 0, 1), so
# (1, 2, 3) -> (0, 0, 3); one word (0, 0, 5): (1, 2, 3) -> (1, 2, 0).


def _check_prism_mini(projection):
    p = projection(np.array([[2.0, 0, 0], [1.0, 1.0, 0]]))
    np.testing.assert_allclose(np.array([1.0, 2.0, 3.0]) @ p, [0, 0, 3], atol=1e-12)
    p = projection(np.array([[0, 0, 5.0]]))
    np.testing.assert_allclose(np.array([1.0, 2.0, 3.0]) @ p, [1, 2, 0], atol=1e-12)


def test_prism_mini_by_hand():
    _check_prism_mini(prism.orthogonal_projection)


def test_prism_mini_check_catches_a_flipped_sign():
    def bug(words):
        return 2 * np.eye(words.shape[1]) - prism.orthogonal_projection(words)

    with pytest.raises(AssertionError):
        _check_prism_mini(bug)


# ------------------------------------------------------------------------------------ PRISM
# W = diag(2, 1). Positives p₁ = (1, 0), p₂ = (0, 5): after normalising, mapping and
# renormalising (1, 0) and (0, 1), cos 0, so 1 − cos = 1. Negatives n₁ = (1, 0),
# n₂ = (1, 1): mapped (2, 0) -> (1, 0) and (2, 1)/√5, cos = 2/√5 = 0.894427; hinge
# 0.894427 − 0.5 = 0.394427. L = 1.394427.


def _check_prism_loss(loss):
    import torch

    def t(x):
        return torch.tensor(x, dtype=torch.float64)

    w = t([[2.0, 0.0], [0.0, 1.0]])
    value = loss(w, t([[1.0, 0.0]]), t([[1.0, 1.0]]), t([[1.0, 0.0]]), t([[0.0, 5.0]]))
    assert float(value) == pytest.approx(1.0 + 2 / np.sqrt(5) - 0.5, abs=1e-9)


def test_prism_loss_by_hand():
    _check_prism_loss(prism_train.prism_loss)


def test_prism_loss_check_catches_a_missing_renormalisation():
    import torch.nn.functional as F

    def bug(w, n1, n2, p1, p2, margin=0.5):
        def mapped(x):
            return F.normalize(x, dim=-1) @ w.T  # not renormalised after W

        pos = 1.0 - (mapped(p1) * mapped(p2)).sum(-1)
        neg = ((mapped(n1) * mapped(n2)).sum(-1) - margin).clamp(min=0.0)
        return pos.mean() + neg.mean()

    with pytest.raises(AssertionError):
        _check_prism_loss(bug)


def test_prism_quadruples_pair_classes_and_attribute_values():
    # objects: class 0 words 0-1, class 1 words 2-4; backgrounds: value 0 words 0-1, value 1: 2
    quads = prism.sample_quadruples([2, 3], [2, 1], 200, seed=0)
    obj_class = np.array([0, 0, 1, 1, 1])
    bg_value = np.array([0, 0, 1])
    assert (obj_class[quads[:, 0]] != obj_class[quads[:, 1]]).all()
    obj_p1, bg_p1 = np.divmod(quads[:, 2], 3)
    obj_p2, bg_p2 = np.divmod(quads[:, 3], 3)
    assert (obj_p1 == obj_p2).all()
    assert ((obj_p1 == quads[:, 0]) | (obj_p1 == quads[:, 1])).all()
    assert (bg_value[bg_p1] != bg_value[bg_p2]).all()
    # independent draws: both classes come first, all words appear
    assert set(obj_class[quads[:, 0]]) == {0, 1} and set(quads[:, :2].ravel()) == set(range(5))
    np.testing.assert_array_equal(quads, prism.sample_quadruples([2, 3], [2, 1], 200, seed=0))


def test_prism_training_lowers_the_loss():
    rng = np.random.default_rng(0)
    objects, scenes = rng.standard_normal((4, 6)), rng.standard_normal((12, 6))
    quads = prism.sample_quadruples([2, 2], [2, 1], 300, seed=1)
    w, losses = prism_train.train_map(objects, scenes, quads, lr=0.05, seed=1)
    assert w.shape == (6, 6) and np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])


# ------------------------------------------------------------------------------- FairerCLIP


def _check_decide(decide):
    # 2-D codes: image (1, 0); class codes (3, 3) (cos 0.707) and (0.5, 0) (cos 1): class 1
    assert decide(np.array([[1.0, 0.0]]), np.array([[3.0, 3.0], [0.5, 0.0]]))[0] == 1
    # dim_z = 1: the sign match; image codes 2 and −0.1, class codes −3 and 0.5
    np.testing.assert_array_equal(
        decide(np.array([[2.0], [-0.1]]), np.array([[-3.0], [0.5]])), [1, 0]
    )


def test_fairerclip_decision_by_hand():
    _check_decide(fc.decide)
    np.testing.assert_array_equal(fc.signed_onehot(np.array([0, 1, 1]), 2),
                                  [[1, -1], [-1, 1], [-1, 1]])  # fmt: skip


def test_fairerclip_decision_check_catches_a_missing_normalisation():
    with pytest.raises(AssertionError):
        _check_decide(lambda f, c: np.argmax(f @ c.T, axis=1))


def _synthetic_ys(n=600, seed=0):
    """x = (class signal, attribute signal, noise...): Y and S independent."""
    rng = np.random.default_rng(seed)
    y, s = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = 0.3 * rng.standard_normal((n, 4))
    x[:, 0] += 2 * y - 1
    x[:, 1] += 2 * s - 1
    return x, y, s


def _check_fairerclip_solve(solve):
    """With τ = 0.7 the code follows Y and ignores S; the generalised eigenproblem holds."""
    x, y, s = _synthetic_ys()
    enc = solve(x, fc.signed_onehot(y, 2), fc.signed_onehot(s, 2), None, 0.7, 0.7, 3e-4, 1, 300,
                np.random.default_rng(0))  # fmt: skip
    code = enc(x)[:, 0]
    assert abs(np.corrcoef(code, y)[0, 1]) > 0.9
    assert abs(np.corrcoef(code, s)[0, 1]) < 0.1
    # sign: agrees with Y's first ±1 one-hot column (class 0) on the first solve
    assert np.corrcoef(code, 1 - y)[0, 1] > 0


def test_fairerclip_solve_separates_class_from_attribute():
    _check_fairerclip_solve(fc.solve_side)


def test_fairerclip_solve_check_catches_a_flipped_attribute_sign():
    def bug(x, y, s, z, tau, tau_z, gamma, dim_z, m, rng):
        c = tau / (1 - tau)  # τ' with τ'/(1 − τ') = −c: the S term added instead of removed
        return fc.solve_side(x, y, s, z, -c / (1 - c) * 1.0 + 0.0, tau_z, gamma, dim_z, m, rng)

    with pytest.raises(AssertionError):
        _check_fairerclip_solve(bug)


def test_low_rank_generalised_eigenproblem_equals_scipy_dense():
    from scipy.linalg import eigh

    rng = np.random.default_rng(3)
    m = 40
    x = rng.standard_normal((60, m))
    c = x.T @ x + 0.5 * np.eye(m)
    a1, a2, a3 = (
        rng.standard_normal((m, 2)),
        rng.standard_normal((m, 2)),
        rng.standard_normal((m, 1)),
    )
    a1[:, 1] = -a1[:, 0]  # a centred ±1 one-hot of two values: rank 1
    w = [1.0, -2.3, 0.4]
    b = sum(wt * f @ f.T for f, wt in zip((a1, a2, a3), w, strict=True))
    vals, vecs = eigh(b, c)
    got_vals, got_vecs = fc.top_generalized_eigvecs([a1, a2, a3], w, c, 2)
    np.testing.assert_allclose(got_vals, vals[::-1][:2], rtol=1e-8)
    for j in range(2):  # same vectors up to sign, C-normalised
        ref = vecs[:, ::-1][:, j]
        np.testing.assert_allclose(np.abs(got_vecs[:, j] @ c @ ref), 1.0, rtol=1e-8)
        assert got_vecs[:, j] @ c @ got_vecs[:, j] == pytest.approx(1.0)


def test_fairerclip_alternation_with_pseudo_labels_is_seeded():
    x, y, s = _synthetic_ys(300, 1)
    clf = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]).T  # class 1 along −x₀, class 0 along x₀
    y_zs = np.argmax(x @ clf, axis=1)
    f_i, f_t, y_last = fc.fairerclip_fit(x, clf, y_zs, s, "pseudo", n_iter=2, m=200, seed=5)
    pred = fc.decide(f_i(x), f_t(clf.T))
    g_i, g_t, _ = fc.fairerclip_fit(x, clf, y_zs, s, "pseudo", n_iter=2, m=200, seed=5)
    np.testing.assert_array_equal(pred, fc.decide(g_i(x), g_t(clf.T)))
    assert np.mean(pred == 1 - y) > 0.9  # agrees with the classifier's classes (x₀ < 0: 1)


# ------------------------------------------------------------------------------------- SFID


def _attribute_data(n=1000, seed=0):
    """Coordinate 3 carries the attribute (80 % a = 1 at +1, a = 0 at −1, noise 0.6)."""
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.8).astype(int)
    x = rng.standard_normal((n, 6))
    x[:, 3] = (2 * a - 1) + 0.6 * rng.standard_normal(n)
    return x, a


def _check_sfid(fit):
    np.testing.assert_allclose(
        sfid.impute(np.array([[1.0, 2.0, 3.0]]), np.array([0, 2]), np.array([9.0, 8.0, 7.0])),
        [[9.0, 2.0, 7.0]],
    )
    x, a = _attribute_data()
    coords, mu, facts = fit(x, a, k=1, threshold=0.7, seed=0)
    assert list(coords) == [3]
    # μ comes from the ambiguous held-out rows (near the boundary, |x₃| small), not from the
    # confident ones (mostly a = 1, so their mean is ~+0.6)
    assert abs(mu[3]) < 0.3 and 0 < facts["n_low_confidence"] < facts["n_heldout"] == 200


def test_sfid_by_hand():
    _check_sfid(sfid.sfid_fit)


def test_sfid_check_catches_confident_rows_for_the_mean(monkeypatch):
    def bug(emb, attr, k=100, threshold=0.7, heldout=0.2, n_estimators=100, seed=0):
        coords, _, facts = sfid.sfid_fit(emb, attr, k, threshold, heldout, n_estimators, seed)
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import train_test_split

        rows = np.arange(len(emb))
        fit_rows, held = train_test_split(rows, test_size=heldout, stratify=attr, random_state=seed)
        f = RandomForestClassifier(n_estimators=n_estimators, random_state=seed).fit(
            emb[fit_rows], attr[fit_rows]
        )
        conf = f.predict_proba(emb[held]).max(axis=1)
        return coords, emb[held[conf >= threshold]].mean(axis=0), facts  # the bug: >=

    with pytest.raises(AssertionError):
        _check_sfid(bug)


def test_sfid_falls_back_to_the_least_confident_rows():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 400)
    x = rng.standard_normal((400, 5))
    x[:, 2] = 10.0 * (2 * a - 1)  # the forest is sure of every held-out row
    _, mu, facts = sfid.sfid_fit(x, a, k=1, threshold=0.7, seed=0, min_low=7)
    assert facts["n_below_threshold"] == 0 and facts["low_confidence_fallback"]
    assert facts["n_low_confidence"] == 7 and np.isfinite(mu).all()


def test_sfid_refuses_k_not_below_the_dimension():
    x, a = _attribute_data(100)
    with pytest.raises(ValueError, match="choose 1 <= k < 6"):
        sfid.sfid_fit(x, a, k=6)


# ------------------------------------------------------------------------------------- SAGE
# Template 0: t₀₀ = (1, 0), t₀₁ = (0, 1); template 1: t₁₀ = (0.6, 0.8), t₁₁ = (1, 0).
# Image (0.6, 0.8): template 0 cosines (0.6, 0.8), separation 0.2; template 1 (1.0, 0.6),
# separation 0.4 -> keep template 1 -> class 0. With both templates (K = 2):
# t̄₀ = normalise((1.6, 0.8)), t̄₁ = normalise((1, 1)): cosines 0.894, 0.990 -> class 1.
TEMPLATES = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]]])


def _check_sage(fn):
    image = np.array([[0.6, 0.8], [3.0, 4.0]])  # the second: same direction, not unit
    np.testing.assert_array_equal(fn(image, TEMPLATES, 1), [0, 0])
    np.testing.assert_array_equal(fn(image, TEMPLATES, 2), [1, 1])


def test_sage_by_hand():
    _check_sage(sage.sage_predict)


def test_sage_check_catches_keeping_the_least_separating_template():
    def bug(emb, t, k=1):
        e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = np.einsum("nd,tcd->ntc", e, t)
        keep = np.argsort(cos.max(2) - cos.min(2), axis=1)[:, :k]  # the bug: ascending
        t_bar = t[keep].mean(axis=1)
        t_bar = t_bar / np.linalg.norm(t_bar, axis=-1, keepdims=True)
        return np.argmax(np.einsum("nd,ncd->nc", e, t_bar), axis=1)

    with pytest.raises(AssertionError):
        _check_sage(bug)


# -------------------------------------------------------------------------------- closed form
# A = span{e₁}; u = (0.6, 0.8): n∥ = 0.6, n⊥ = 0.8, E = 0.6 + 0.2/0.6 = 0.933333,
# α = (E − 0.8·√(E² − 0.36))/(E² + 0.64) = 0.239159, u* = (α, √(1 − α²)) = (0.239159, 0.970980).
# The same for (1.2, 1.6): inputs are normalised first.


def _check_closed_form(edit):
    basis = np.array([[1.0], [0.0]])
    out = edit(np.array([[0.6, 0.8], [1.2, 1.6], [0.0, 1.0]]), basis)
    np.testing.assert_allclose(out[0], [0.239159, 0.970980], atol=1e-6)
    np.testing.assert_allclose(out[1], out[0], atol=1e-12)
    np.testing.assert_allclose(out[2], [0.0, 1.0])  # no component along A: unchanged


def test_closed_form_by_hand():
    _check_closed_form(cf.closed_form_edit)


def test_closed_form_check_catches_a_missing_normalisation():
    def bug(emb, basis):
        out = cf.closed_form_edit(emb, basis)
        return out * np.linalg.norm(emb, axis=1, keepdims=True)  # the input scale kept

    with pytest.raises(AssertionError):
        _check_closed_form(bug)


def test_closed_form_group_directions_by_hand():
    # group 0 variants (1, 0), (0, 1): spherical mean (1, 1)/√2; group 1: (1, 0) twice;
    # one class each. Basis = normalise((1, 0) − (1, 1)/√2) = (0.382683, −0.923880) up to sign.
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.0]])
    p = cf.group_directions(emb, (2, 1, 2))
    np.testing.assert_allclose(p, [[0.707107, 0.707107], [1.0, 0.0]], atol=1e-6)
    b = cf.bias_basis(p)[:, 0]
    np.testing.assert_allclose(np.abs(b), [0.382683, 0.923880], atol=1e-6)


# -------------------------------------------------------------------------------- compose


def test_chain_applies_head_edit_then_transforms_then_the_one_classifier():
    def heads(h, rest, idx):
        return h.sum((1, 2)) + rest + 1.0

    clf = np.eye(2)
    c = chain(
        [
            ("a", Correction(heads=heads)),
            ("b", Correction(transform=lambda e, idx: 2 * e)),
            ("c", Correction(transform=lambda e, idx: e - 1, classifier=clf)),
        ]
    )
    emb = c.transform(c.heads(np.zeros((1, 1, 1, 2)), np.array([[0.5, 1.0]]), None), None)
    np.testing.assert_allclose(emb, [[2.0, 3.0]])  # ((0.5, 1) + 1) * 2 − 1
    assert c.classifier is clf and c.meta["steps"][0]["id"] == "a"
    with pytest.raises(ValueError, match="first step"):
        chain([("a", Correction(transform=lambda e, i: e)), ("b", Correction(heads=heads))])
    with pytest.raises(ValueError, match="last step"):
        chain([("a", Correction(classify=lambda e, i: e)), ("b", Correction(transform=abs))])


@pytest.mark.parametrize(
    "steps,message",
    [
        (["prism_mini", "ltc"], "must be the first step"),
        (["sage", "tie"], "must be the last step"),
        (["ltc", "ltc_random"], "cannot compose"),
        (["ltc", "refineclip_adapt"], "cannot compose"),
        (["ltc", "prism", "closed_form_debias"], "each change the classifier"),
        (["ltc"], "at least two steps"),
        (["ltc", {"name": "sfid", "k": "twelve"}], "k='twelve'"),
        (["ltc", "magic"], "unknown method 'magic'"),
    ],
)
def test_compositions_that_cannot_chain_fail_at_config_time(steps, message):
    with pytest.raises(registry.MethodConfigError) as err:
        registry.configured([{"name": "compose", "id": "c", "steps": steps}])
    assert message in str(err.value)


def test_a_composition_needs_what_its_steps_need():
    c = registry.configured(
        [{"name": "compose", "id": "c", "steps": ["ltc", "prism"]},
         {"name": "compose", "id": "d", "steps": ["audit_ablation", "sfid"]}]
    )  # fmt: skip
    assert c["c"].spec.locators == ("ltc",) and c["c"].spec.env == "torch" and c["c"].spec.texts
    assert c["d"].spec.locators == ("audit",) and c["d"].spec.env == "analysis"


# ------------------------------------------------------------------ protocol (§10.7-10.8)


def test_blocks_and_label_use_follow_the_protocol():
    c = registry.configured(
        ["ltc", "tie", "tie_star", "tie_oracle", "prism_mini", "prism", "fairerclip",
         "fairerclip_nolabels", "sfid", {"name": "sfid", "id": "sfid_zs", "attributes": "zero_shot"},
         "sage", "closed_form_debias", {"name": "refineclip", "shot_sampling": "group_balanced"},
         {"name": "compose", "id": "ltc_then_prism_mini", "steps": ["ltc", "prism_mini"]}]
    )  # fmt: skip
    rows = {r["method"]: r for r in registry.label_use_rows(c, ltc_group_labels=True)}
    blocks = {m: r["block"] for m, r in rows.items()}
    assert blocks == {
        "zero_shot": "reference", "ltc": "oracle_a", "tie": "oracle_a", "tie_star": "inferred_a",
        "tie_oracle": "oracle_test", "prism_mini": "label_free", "prism": "label_free",
        "fairerclip": "inferred_a", "fairerclip_nolabels": "label_free", "sfid": "oracle_a",
        "sfid_zs": "inferred_a", "sage": "label_free", "closed_form_debias": "label_free",
        "refineclip": "oracle_a", "ltc_then_prism_mini": "oracle_a",
    }  # fmt: skip
    assert (
        rows["tie_oracle"]["attribute_test"] == "GT"
        and rows["tie"]["attribute_test"] == "zero-shot"
    )
    assert (
        rows["fairerclip"]["classes"] == "GT" and rows["fairerclip_nolabels"]["classes"] == "pseudo"
    )
    assert rows["ltc_then_prism_mini"]["steps"] == "ltc → prism_mini"
    assert {r["level"] for r in rows.values()} >= {"head", "embedding", "composition"}
    assert registry.get("tip_adapter").level == "few_shot"
    inferred = {r["method"]: r["block"] for r in registry.label_use_rows(c, ltc_group_labels=False)}
    assert inferred["ltc"] == "inferred_a" and inferred["ltc_then_prism_mini"] == "inferred_a"


def test_two_class_methods_refuse_more_classes():
    c = registry.configured(["tie", "fairerclip", "prism_mini", "sfid", "sage"])
    registry.check_classes(c, "planted", 2, list(c))
    with pytest.raises(registry.MethodConfigError, match="'fairerclip' supports at most 2 classes"):
        registry.check_classes(c, "planted_multiclass", 6, list(c))
    registry.check_classes(c, "planted_multiclass", 6, ["tie", "prism_mini", "sfid", "sage"])
    chained = registry.configured([{"name": "compose", "id": "x", "steps": ["ltc", "fairerclip"]}])
    with pytest.raises(registry.MethodConfigError, match="'x' supports at most 2"):
        registry.check_classes(chained, "d", 3, ["x"])


def test_a_bare_step_that_differs_from_its_configured_method_is_refused():
    """planted_multiclass composed `ltc` (registry default: global insight pairs) beside an
    `ltc` entry with per-class insight; the composition measured 45.9 % where LTC had 63.7."""
    from clipbias.methods.registry import MethodConfigError, configured

    ltc = {"name": "ltc", "insight": "per_class"}
    bare = {"name": "compose", "id": "c", "steps": ["ltc", "prism_mini"]}
    with pytest.raises(MethodConfigError, match="step 'ltc' runs with the registry defaults"):
        configured([ltc, bare])
    named = {"name": "compose", "id": "c", "steps": [ltc, "prism_mini"]}
    assert configured([ltc, named])["c"].params["steps"][0] == ltc
    defaults = {"name": "compose", "id": "c", "steps": [{"name": "ltc"}, "prism_mini"]}
    configured([ltc, defaults])  # the defaults, on purpose
    configured(["ltc", bare])  # the same parameters: nothing to refuse
