"""RefineCLIP phase 2, representation adapting (METHODS §5.6), on tiny problems."""

import numpy as np
import pytest
import torch

from clipbias.methods import refineclip_adapt as ra

# --------------------------------------------------------------------------------------------
# A problem with a known optimum. D = 3, t_0 = (1, 0, 1)/√2, t_1 = (0, 1, 0): coordinate 3 is a
# "spurious" direction that the class-0 text also points to.
#   W (label 1, predicted 0):   e = (0, 1, 1.5)  -> cos to t_0 = 1.06/1.80 > cos to t_1 = 1/1.80
#   ablated teacher (coordinate 3 removed): (0, 1, 0) -> class 1
#   correct class 0:            e = (1, 0, 0);  correct class 1: e = (0, 1, 0)
# θ ⊙ e of the correct samples is a positive multiple of e, so their cosines (and the locality
# KL) do not depend on θ. The success KL is zero exactly when θ_3 = 0, so training must shrink
# θ_3 relative to θ_2 until the W samples are classified as 1. With a moderate τ (5) the teacher
# is not saturated, so KL(p ‖ q) has a strict minimum where the student's cosine margin equals
# the teacher's, i.e. at θ_3 = 0 (with τ = 100 it flattens as soon as W flips). A large α makes
# that minimum dominate CE, which alone would push θ_3 slightly below 0. θ_1 gets no gradient.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def spurious_case():
    emb = np.array([[0, 1, 1.5], [0, 1, 1.8], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    teacher = emb.copy()
    teacher[:, 2] = 0
    labels = np.array([1, 1, 0, 1])
    cls = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    cls /= np.linalg.norm(cls, axis=0)
    success = np.array([True, True, False, False])
    locality = ~success
    return emb, labels, cls, teacher, success, locality


def _acc(emb, labels, cls):
    return float(np.mean(np.argmax(emb @ cls, axis=1) == labels))


def test_known_optimum_shrinks_the_spurious_coordinate(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    assert _acc(emb[success], labels[success], cls) == 0.0
    res = ra.train_adapter(
        emb, labels, cls, teacher, success, locality,
        alpha=100.0, beta=10.0, tau=5.0, lr=0.05, steps=300,
    )  # fmt: skip
    theta = res.params["theta"]
    assert res.params["variant"] == "diag" and theta.shape == (3,)
    assert abs(theta[2]) < 0.02 * theta[1]
    assert theta[0] == pytest.approx(1.0, abs=1e-3)
    edited = ra.apply_adapter(emb, res.params)
    np.testing.assert_allclose(edited, emb * theta, rtol=1e-6)
    assert _acc(edited, labels, cls) == 1.0
    c = res.curves
    succ = c[(c.set == "train") & (c.metric == "success")].set_index("step").value
    assert succ.iloc[-1] < 0.01 * succ.iloc[0]


def test_std_ft_equals_ce_only_training(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    steps, lr, tau = 25, 0.01, 100.0
    res = ra.train_adapter(
        emb, labels, cls, teacher, success, locality,
        objective="std_ft", alpha=5.0, beta=7.0, lr=lr, steps=steps, tau=tau, device="cpu",
    )  # fmt: skip
    # hand-written CE-only loop: softmax(τ cos(θ ⊙ e, t_c)), Adam, full batch
    theta = torch.ones(3, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    e, t, y = torch.tensor(emb), torch.tensor(cls), torch.tensor(labels)
    for _ in range(steps):
        z = theta * e
        logits = tau * (z / z.norm(dim=1, keepdim=True)) @ t
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(res.params["theta"], theta.detach().numpy(), atol=1e-6)
    c = res.curves[res.curves.set == "train"].pivot(index="step", columns="metric", values="value")
    np.testing.assert_allclose(c["loss"], c["ce"], atol=1e-7)
    assert res.config["alpha"] == 0.0 and res.config["beta"] == 0.0


@pytest.mark.parametrize("variant", ["diag", "full", "lora"])
def test_kl_terms_zero_at_init_when_teacher_is_student(spurious_case, variant):
    emb, labels, cls, _, success, locality = spurious_case
    res = ra.train_adapter(
        emb, labels, cls, emb, success, locality, variant=variant, rank=2, steps=3, lr=0.01
    )
    c = res.curves
    first = c[(c.step == 0) & (c.set == "train")].set_index("metric").value
    assert abs(first["success"]) < 1e-7 and abs(first["locality"]) < 1e-7
    assert first["loss"] == pytest.approx(first["ce"], abs=1e-6)


def test_loss_is_the_weighted_sum_of_its_terms(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    a, b = 3.0, 0.5
    res = ra.train_adapter(
        emb, labels, cls, teacher, success, locality, alpha=a, beta=b, steps=10, lr=0.05
    )
    c = res.curves[res.curves.set == "train"].pivot(index="step", columns="metric", values="value")
    np.testing.assert_allclose(
        c["loss"], c["ce"] + a * c["success"] + b * c["locality"], rtol=1e-5, atol=1e-6
    )
    assert c["success"].iloc[0] > 0
    # the original model is a fixed point of the locality term on the correct samples
    assert c["locality"].iloc[0] == pytest.approx(0.0, abs=1e-7)


def test_no_ablated_teacher_is_kl_to_the_original_on_all_samples(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    b = 2.0
    res = ra.train_adapter(
        emb, labels, cls, None, success, locality,
        objective="no_ablated_teacher", beta=b, steps=20, lr=0.05,
    )  # fmt: skip
    c = res.curves[res.curves.set == "train"].pivot(index="step", columns="metric", values="value")
    np.testing.assert_allclose(c["loss"], c["ce"] + b * c["locality"], rtol=1e-5, atol=1e-6)
    # recompute the KL over all four samples from the returned parameters
    p = ra.apply_adapter(emb, res.params)

    def logp(x):
        z = 100.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ cls
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = logp(emb), logp(p)
    kl_all = float(np.mean((np.exp(lp) * (lp - lq)).sum(1)))
    assert c["locality"].iloc[-1] == pytest.approx(kl_all, rel=1e-3, abs=1e-6)
    assert res.config["objective"] == "no_ablated_teacher"


def test_determinism_and_seed_dependence_of_lora(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    kw = dict(variant="lora", rank=2, steps=15, lr=0.01, eval_every=5)
    r1 = ra.train_adapter(emb, labels, cls, teacher, success, locality, seed=1, **kw)
    r2 = ra.train_adapter(emb, labels, cls, teacher, success, locality, seed=1, **kw)
    r3 = ra.train_adapter(emb, labels, cls, teacher, success, locality, seed=2, **kw)
    for k in ("A", "B"):
        np.testing.assert_array_equal(r1.params[k], r2.params[k])
    assert r1.curves.equals(r2.curves)
    assert not np.array_equal(r1.params["A"], r3.params["A"])
    assert r1.params["A"].shape == (2, 3) and r1.params["B"].shape == (3, 2)


def test_identity_at_init_for_every_variant(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    for variant in ("diag", "full", "lora"):
        res = ra.train_adapter(
            emb, labels, cls, teacher, success, locality, variant=variant, steps=0
        )
        np.testing.assert_allclose(ra.apply_adapter(emb, res.params), emb, atol=1e-7)
        np.testing.assert_allclose(ra.adapter_matrix(res.params), np.eye(3), atol=1e-7)


@pytest.mark.parametrize("variant", ["diag", "full", "lora"])
def test_curves_track_named_sets_and_match_apply_adapter(spurious_case, variant):
    emb, labels, cls, teacher, success, locality = spurious_case
    rng = np.random.default_rng(0)
    other = (rng.normal(size=(12, 3)) + [3, 0, 0]).astype(np.float32)
    sets = {"target": (emb[:2], labels[:2]), "other": (other, np.zeros(12, dtype=int))}
    res = ra.train_adapter(
        emb, labels, cls, teacher, success, locality,
        variant=variant, rank=2, steps=23, lr=0.05, eval_every=10, eval_sets=sets,
    )  # fmt: skip
    c = res.curves
    assert list(c.columns) == ["step", "set", "metric", "value"]
    tgt = c[(c.set == "target") & (c.metric == "acc")]
    assert tgt.step.tolist() == [0, 10, 20, 23]
    assert set(c[c.set == "other"].metric) == {"acc", "class_avg_acc"}
    assert c[(c.set == "train") & (c.metric == "loss")].step.tolist() == list(range(24))
    for name, (x, y) in sets.items():
        final = c[(c.set == name) & (c.metric == "acc") & (c.step == 23)].value.item()
        assert final == pytest.approx(_acc(ra.apply_adapter(x, res.params), y, cls))
    full = ra.adapter_matrix(res.params)
    np.testing.assert_allclose(ra.apply_adapter(emb, res.params), emb @ full.T, atol=1e-5)


def test_save_and_load_adapter_roundtrip(tmp_path, spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    res = ra.train_adapter(
        emb, labels, cls, teacher, success, locality, variant="lora", rank=2, steps=5
    )
    path = tmp_path / "adapter.safetensors"
    ra.save_adapter(path, res.params)
    back = ra.load_adapter(path)
    assert back["variant"] == "lora"
    for k in ("A", "B"):
        np.testing.assert_array_equal(back[k], res.params[k])


def test_bad_inputs_get_clear_errors(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    with pytest.raises(ValueError, match="variant"):
        ra.train_adapter(emb, labels, cls, teacher, success, locality, variant="conv")
    with pytest.raises(ValueError, match="objective"):
        ra.train_adapter(emb, labels, cls, teacher, success, locality, objective="x")
    with pytest.raises(ValueError, match="teacher_emb"):
        ra.train_adapter(emb, labels, cls, None, success, locality)
    with pytest.raises(ValueError, match="success_mask"):
        ra.train_adapter(emb, labels, cls, teacher, success[:2], locality)
    with pytest.raises(ValueError, match=r"\[D, C\]"):
        ra.train_adapter(emb, labels, cls.T, teacher, success, locality)
    with pytest.raises(ValueError, match="variant"):
        ra.apply_adapter(emb, {"variant": "conv"})
    no_groups = (emb, labels, np.full(len(labels), -1))
    with pytest.raises(ValueError, match="group ids"):
        ra.train_adapter(emb, labels, cls, teacher, success, locality, select_set=no_groups)
    with pytest.raises(ValueError, match="select_set"):
        ra.train_adapter(emb, labels, cls, teacher, success, locality,
                         select_set=(emb[:, :2], labels, labels))  # fmt: skip
    with pytest.raises(ValueError, match="reserved"):
        ra.train_adapter(emb, labels, cls, teacher, success, locality,
                         eval_sets={"success": (emb, labels)})  # fmt: skip


def test_step_is_chosen_on_the_select_set_by_worst_group_then_average(spurious_case):
    """The select set's worst group is the W-like rows: at step 0 they are wrong (WG 0); once
    θ_3 has shrunk they are right. The kept adapter is that of the first evaluated step
    reaching the best (worst-group, average) pair, and reproduces it."""
    emb, labels, cls, teacher, success, locality = spurious_case
    groups = np.array([0, 0, 1, 2])
    kw = {"alpha": 100.0, "beta": 10.0, "tau": 5.0, "lr": 0.05, "steps": 60, "eval_every": 5}
    res = ra.train_adapter(emb, labels, cls, teacher, success, locality,
                           select_set=(emb, labels, groups), **kw)  # fmt: skip
    sel = res.curves[res.curves.set == "select"].pivot(
        index="step", columns="metric", values="value"
    )
    assert sel.loc[0, "worst_group_acc"] == 0 and sel["worst_group_acc"].max() == 1
    best = max(zip(sel.worst_group_acc, sel.avg_group_acc, -sel.index, strict=True))
    assert res.config["selected_step"] == -best[2] < 60
    edited = ra.apply_adapter(emb, res.params)
    assert _acc(edited, labels, cls) == 1.0
    last = ra.train_adapter(emb, labels, cls, teacher, success, locality, **kw)
    assert last.config["selected_step"] == 60
    assert not np.allclose(last.params["theta"], res.params["theta"])


def test_thread_count_is_restored(spurious_case):
    emb, labels, cls, teacher, success, locality = spurious_case
    before = torch.get_num_threads()
    res = ra.train_adapter(emb, labels, cls, teacher, success, locality, steps=2, num_threads=1)
    assert torch.get_num_threads() == before and res.config["num_threads"] == 1


# --------------------------------------------------------------------------------------------
# Success against locality at the defaults (τ = 100, α = β = 10³, lr 10⁻³, 500 Adam steps).
# D = 4: coordinates 1, 2 are the shapes (causal), 3, 4 the backgrounds A and B (spurious);
# t_0 = (1, 0, 1, 0)/√2 and t_1 = (0, 1, 0, 1)/√2, each class text also names its usual
# background. The spurious head writes the background coordinates; S* = {that head}, so the
# ablated teacher is e with coordinates 3 and 4 zeroed.
#   W (class 0 on background B):  (.6, 0, 0, 1), (.5, 0, 0, .9)  ->  <t_1> > <t_0>: predicted 1;
#                                 the teacher (.6, 0, 0, 0) -> class 0: they disagree.
#   correct class 0 on A:         (.6, 0, 1, 0)                   ->  0
#   correct class 1 on B:         (.3, .2, 0, .12)                ->  1 (cos margin .037, so
#                                 g gives it .976 at τ = 100), held by its background: the
#                                 teacher's full edit (coordinate 4 zeroed) gives (.3, .2, 0, 0)
#                                 -> class 0.
# So the success loss (imitate the teacher on W: shrink θ_4, grow θ_1) and the locality loss
# (keep the class-1 shot's output) pull against each other; a diagonal θ satisfies both
# in argmax, e.g. θ = (1.2, 1.5, 1, .6): W .72 > .6 and .6 > .54, the class-1 shot
# .3 + .072 > .36. At τ = 100 the KL of a confidently classified shot is ~0 (a cosine margin
# of .1 is 10 logits), so locality binds only for shots near the boundary, as this one.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def conflict_case():
    emb = np.array(
        [[0.6, 0, 0, 1.0], [0.5, 0, 0, 0.9], [0.6, 0, 1.0, 0], [0.3, 0.2, 0, 0.12]],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 0, 1])
    cls = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32) / np.sqrt(2)
    teacher = emb.copy()
    teacher[:, 2:] = 0
    success = np.array([True, True, False, False])
    return emb, labels, cls.astype(np.float32), teacher, success, ~success


def test_adapter_at_the_defaults_follows_the_teacher_on_w_and_keeps_the_correct_shots(
    conflict_case,
):
    emb, labels, cls, teacher, success, locality = conflict_case
    assert (ra.DEFAULTS["alpha"], ra.DEFAULTS["beta"], ra.DEFAULTS["tau"]) == (1e3, 1e3, 100.0)
    assert (ra.DEFAULTS["lr"], ra.DEFAULTS["steps"]) == (1e-3, 500)
    pred = lambda x: np.argmax(x @ cls, axis=1)  # noqa: E731
    # the premise: original and teacher disagree on W; the teacher's full edit breaks the
    # class-1 shot, so success and locality conflict
    np.testing.assert_array_equal(pred(emb), [1, 1, 0, 1])
    np.testing.assert_array_equal(pred(teacher[success]), [0, 0])
    assert pred(teacher[3:])[0] == 0
    res = ra.train_adapter(emb, labels, cls, teacher, success, locality)
    edited = ra.apply_adapter(emb, res.params)
    np.testing.assert_array_equal(pred(edited), labels)  # W follows the teacher, C ∪ A kept
    theta = res.params["theta"]
    assert 0 < theta[3] < 1  # background B shrunk, not removed
    assert theta[0] > 1  # the shape of class 0 amplified
    c = res.curves
    loss = c[c.set == "train"].pivot(index="step", columns="metric", values="value")
    assert loss["success"].iloc[-1] < 0.01 * loss["success"].iloc[0]
    assert loss["locality"].iloc[0] == 0 and loss["locality"].iloc[-1] > 1e-3  # the conflict
    acc = c[c.metric == "acc"].pivot(index="step", columns="set", values="value")
    assert acc.loc[0, "success"] == 0 and acc.loc[500, "success"] == 1
    assert acc.loc[0, "locality"] == 1 and acc.loc[500, "locality"] == 1  # (it dips on the way)
    assert res.config["teacher_acc_success"] == 1.0
    assert res.config["success_acc"] == 1.0 and res.config["locality_acc"] == 1.0
    assert res.config["selected_step"] == 500 and res.config["step_selection"] == "last"
    # the locality term holds the class-1 shot nearer to the original output than CE alone
    no_loc = ra.train_adapter(emb, labels, cls, teacher, success, locality, beta=0.0)
    final = no_loc.curves[(no_loc.curves.set == "train") & (no_loc.curves.step == 500)]
    assert loss["locality"].iloc[-1] < 0.8 * final.set_index("metric").value["locality"]
