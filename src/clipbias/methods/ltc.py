"""LTC, Locate-Then-Correct (METHODS §4.3-4.8), on stored head decompositions.

Locate: per sample, the head whose direct contribution pushes hardest toward the prediction
(against the runner-up when correct, against the truth when wrong) wins; heads winning more
often on wrong than on correct bias-conflicting samples (by more than κ = 1/n_active) are
spurious (S), the reverse are salient (Y).

Correct: mean-ablate S, then replace each Y head by the reference "accept" update
``v <- v + cos(v, q) q; v <- v / ||v||`` over the QR-orthonormalised insight directions.
The update renormalises the head to unit norm; that is the reference behaviour (§4.7, §9 #2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .heads import HeadId, all_heads, head_position, head_str, parse_head
from .insight import insight_basis

log = logging.getLogger(__name__)

VARIANTS = ("groups", "full")


# ---------------------------------------------------------------------------------------------
# §4.3 per-sample, per-head margins
# ---------------------------------------------------------------------------------------------


def head_margins(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    candidates: np.ndarray | None = None,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample, per-head margins δ (METHODS §4.3).

    Baseline logits come from the full embedding ``heads.sum((1, 2)) + rest``. The prediction
    ŷ is the argmax; the contrast class y' is the runner-up if ŷ = y, else y. Then
    ``δ[n, l, h] = <heads[n, l, h], t_ŷ - t_y'>``.

    ``candidates`` [N, k] (optional) restricts each sample to its own classifier columns
    (GenderBias two-way classifiers); returned class ids stay global.

    Returns ``(delta [N, L, H] float32, preds [N] int64, contrast [N] int64)``.
    """
    heads = np.asarray(heads)
    labels = np.asarray(labels, dtype=np.int64)
    emb = heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, dtype=np.float64)
    s = emb @ np.asarray(classifier, dtype=np.float64)
    n = len(s)
    if candidates is None:
        cand = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    else:
        cand = np.asarray(candidates, dtype=np.int64)
        s = np.take_along_axis(s, cand, axis=1)
    if s.shape[1] < 2:
        raise ValueError("need at least two classes (or candidates) per sample")
    order = np.argsort(-s, axis=1, kind="stable")
    rows = np.arange(n)
    preds = cand[rows, order[:, 0]]
    runner_up = cand[rows, order[:, 1]]
    contrast = np.where(preds == labels, runner_up, labels)
    cls = np.asarray(classifier, dtype=np.float32)
    direction = (cls[:, preds] - cls[:, contrast]).T  # [N, D]
    delta = np.empty(heads.shape[:3], dtype=np.float32)
    for start in range(0, n, chunk_size):  # float32 compute even for float16 storage
        sl = slice(start, start + chunk_size)
        delta[sl] = np.einsum(
            "nlhd,nd->nlh", heads[sl].astype(np.float32, copy=False), direction[sl]
        )
    return delta, preds.astype(np.int64), contrast.astype(np.int64)


def top_heads(delta: np.ndarray) -> np.ndarray:
    """Flat index (``layer_index * H + head``) of the winning head per sample, [N] int64."""
    n = delta.shape[0]
    return np.argmax(delta.reshape(n, -1), axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# §4.4 sample selection, §4.5 counting
# ---------------------------------------------------------------------------------------------


def select_samples(
    preds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    minority_groups: Iterable[int] | None = (1, 2),
    variant: str = "groups",
    sample_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (C, W) of correct and wrong locate samples (METHODS §4.4).

    ``variant="groups"``: samples whose group is in ``minority_groups`` (bias-conflicting);
    ``variant="full"``: all samples ("LTC-full"). ``sample_mask`` further restricts the set
    (e.g. GenderBias: :func:`worst_gender_mask`).
    """
    correct = np.asarray(preds) == np.asarray(labels)
    keep = np.ones(len(correct), dtype=bool)
    if variant == "groups":
        if groups is None or minority_groups is None:
            raise ValueError("variant 'groups' needs groups and minority_groups")
        keep &= np.isin(np.asarray(groups), np.asarray(list(minority_groups)))
    elif variant != "full":
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if sample_mask is not None:
        keep &= np.asarray(sample_mask, dtype=bool)
    return keep & correct, keep & ~correct


def worst_gender_mask(
    correct: np.ndarray, occupation: np.ndarray, gender: np.ndarray, top_k: int = 10
) -> np.ndarray:
    """GenderBias locate samples (METHODS §4.4): the ``top_k`` occupations with the largest
    |acc_gender_a - acc_gender_b| (only occupations with both genders), keeping only the
    images of each one's worse-performing gender (ties: the smaller gender code).
    Ties in bias are broken by occupation id. Returns a boolean mask [N]."""
    correct = np.asarray(correct, dtype=bool)
    occupation = np.asarray(occupation)
    gender = np.asarray(gender)
    g_values = np.unique(gender)
    scored = []
    for occ in np.unique(occupation):
        m = occupation == occ
        accs = {g: correct[m & (gender == g)].mean() for g in g_values if np.any(m & (gender == g))}
        if len(accs) < 2:
            continue
        vals = np.array(list(accs.values()))
        worse = min(accs, key=lambda g: (accs[g], g))
        scored.append((-(vals.max() - vals.min()), occ, worse))
    scored.sort(key=lambda t: (t[0], t[1]))
    mask = np.zeros(len(correct), dtype=bool)
    for _, occ, worse in scored[:top_k]:
        mask |= (occupation == occ) & (gender == worse)
    return mask


def head_counts(winners: np.ndarray, mask: np.ndarray, n_total: int) -> np.ndarray:
    """|{x in mask : top(x) = k}| over flat head ids, [n_total] int64 (sums to |mask|)."""
    w = np.asarray(winners, dtype=np.int64)[np.asarray(mask, dtype=bool)]
    return np.bincount(w, minlength=n_total).astype(np.int64)


def head_frequencies(winners: np.ndarray, mask: np.ndarray, n_total: int) -> np.ndarray:
    """F(k) = |{x in mask : top(x) = k}| / |mask| over flat head ids, [n_total] float64.

    All zeros when the mask is empty.
    """
    counts = head_counts(winners, mask, n_total)
    n = int(counts.sum())
    return counts / n if n else counts.astype(np.float64)


def _int_counts(counts: np.ndarray, name: str) -> list[int]:
    counts = np.asarray(counts)
    if counts.dtype.kind not in "iu" or np.any(counts < 0):
        raise TypeError(
            f"{name} must be non-negative integer winner counts per head (head_counts), "
            f"not {counts.dtype} frequencies: the threshold is decided exactly on counts"
        )
    return [int(x) for x in counts.ravel()]


def _by_score(ids: list[int], score: Sequence[int]) -> np.ndarray:
    """``ids`` by ``score`` descending, ties by id descending: the order of the reference's
    ``get_impt_heads``, ``sorted(zip(scores, ids), reverse=True)``."""
    return np.array(sorted(ids, key=lambda i: (score[i], i), reverse=True), dtype=np.int64)


def contrastive_selection(
    count_c: np.ndarray, count_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """S and Y from the top-1 winner counts of the correct (C) and wrong (W) samples
    (METHODS §4.5; counts from :func:`head_counts`, so |C| = Σ count_c, |W| = Σ count_w).

    n_act = #{k : c_k > 0 or w_k > 0}; κ = 1 / n_act (inf if none active);
    S = {F_W - F_C > κ} and Y = {F_C - F_W > κ}, with F_W = w / |W| and F_C = c / |C|
    (F = 0 for an empty set). The comparison is made exactly, in integers:
    F_W - F_C > κ  <=>  n_act (w |C| - c |W|) > |W| |C|, so a score exactly at κ is never
    selected (float frequencies decide such ties by rounding: in float64 1/2 - 1/6 > 1/3).
    Both lists are ordered by score descending, ties by flat id descending (the larger
    layer, then head, first), as the reference's ``get_impt_heads``.
    Returns (S flat ids, Y flat ids, κ, n_act).
    """
    c = _int_counts(count_c, "count_c")
    w = _int_counts(count_w, "count_w")
    if len(c) != len(w):
        raise ValueError(f"{len(c)} correct counts but {len(w)} wrong counts")
    n_act = sum(1 for a, b in zip(c, w, strict=True) if a > 0 or b > 0)
    kappa = 1.0 / n_act if n_act else float("inf")
    # common denominator |W'| |C'| (an empty set counts as 1: its F is 0 anyway)
    n_c, n_w = max(sum(c), 1), max(sum(w), 1)
    num = [b * n_c - a * n_w for a, b in zip(c, w, strict=True)]  # (F_W - F_C) |W'| |C'|
    bar = n_c * n_w
    s_ids = [k for k, x in enumerate(num) if n_act * x > bar]
    y_ids = [k for k, x in enumerate(num) if -n_act * x > bar]
    return _by_score(s_ids, num), _by_score(y_ids, [-x for x in num]), kappa, n_act


def noncontrastive_selection(counts: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Heads with F > 1 / |{F > 0}| (METHODS §4.5, last bullet) from winner counts
    (:func:`head_counts`), decided in integers (count · n_act > Σ counts); ordered by F
    descending, ties by flat id descending as :func:`contrastive_selection`.

    Returns (flat ids, threshold, n_active)."""
    c = _int_counts(counts, "counts")
    n_act = sum(1 for x in c if x > 0)
    thr = 1.0 / n_act if n_act else float("inf")
    total = sum(c)
    ids = [k for k, x in enumerate(c) if x * n_act > total]
    return _by_score(ids, c), thr, n_act


def _head_list(ids: np.ndarray, score: np.ndarray, heads_all: list[HeadId]) -> list[dict]:
    return [{"head": head_str(heads_all[i]), "score": float(score[i])} for i in ids]


def locate_ltc(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[int],
    groups: np.ndarray | None = None,
    minority_groups: Iterable[int] | None = (1, 2),
    variant: str = "groups",
    candidates: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """LTC locate step (METHODS §4.3-4.5). The top-1 search runs over all stored heads.

    Returns a JSON-serialisable dict::

        {"variant": "groups" | "full", "layers": [...], "n_heads": H,
         "minority_groups": [...] | None,
         "S": [{"head": "L10H10", "score": F_W - F_C}, ...],   # ordered, descending
         "Y": [{"head": "L11H5", "score": F_C - F_W}, ...],    # ordered, descending
         "F_C": {"L0H0": f, ...}, "F_W": {...},                # every stored head
         "kappa": κ, "n_active": n_act, "n_correct": |C|, "n_wrong": |W|,
         "n_samples": N, "baseline_accuracy": acc of the zero-shot predictions on all N}

    With ``class_names`` also ``"by_class"`` (:func:`per_class_locate`, S excluded).
    ``kappa`` is ``None`` (JSON null) when no head is active. Use :func:`located_heads` to
    get ``[(layer, head), ...]`` back. :func:`locate_from_winners` does the counting from
    per-sample winners, so the margins can be computed batch by batch
    (:func:`clipbias.streaming.ltc_samples`).
    """
    heads = np.asarray(heads)
    _, n_layers, n_heads, _ = heads.shape
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} stored layers")
    delta, preds, _ = head_margins(heads, rest, classifier, labels, candidates)
    return locate_from_winners(
        top_heads(delta), preds, labels, layers, n_heads, groups, minority_groups, variant,
        sample_mask, class_names,
    )  # fmt: skip


def locate_from_winners(
    winners: np.ndarray,
    preds: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[int],
    n_heads: int,
    groups: np.ndarray | None = None,
    minority_groups: Iterable[int] | None = (1, 2),
    variant: str = "groups",
    sample_mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The counting, threshold and selection of :func:`locate_ltc` (METHODS §4.4-4.5) from
    per-sample results: ``winners`` [N] flat top-1 head ids (:func:`top_heads`) and
    ``preds`` [N] zero-shot predictions. Same return value as :func:`locate_ltc`; with
    ``class_names`` (the classifier's columns) also ``"by_class"``, the per-class pieces of
    the reference's multi-class path (:func:`per_class_locate`, S excluded from each Y)."""
    heads_all = all_heads(layers, n_heads)
    winners = np.asarray(winners, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    mask_c, mask_w = select_samples(preds, labels, groups, minority_groups, variant, sample_mask)
    n_c, n_w = int(mask_c.sum()), int(mask_w.sum())
    if n_c == 0 or n_w == 0:
        log.warning("LTC locate: %d correct and %d wrong samples selected", n_c, n_w)
    count_c = head_counts(winners, mask_c, len(heads_all))
    count_w = head_counts(winners, mask_w, len(heads_all))
    f_c = count_c / max(n_c, 1)
    f_w = count_w / max(n_w, 1)
    s_ids, y_ids, kappa, n_act = contrastive_selection(count_c, count_w)
    d = f_w - f_c
    result = {
        "variant": variant,
        "layers": [int(x) for x in layers],
        "n_heads": int(n_heads),
        "minority_groups": (
            [int(g) for g in minority_groups]
            if variant == "groups" and minority_groups is not None
            else None
        ),
        "S": _head_list(s_ids, d, heads_all),
        "Y": _head_list(y_ids, -d, heads_all),
        "F_C": {head_str(h): float(f_c[i]) for i, h in enumerate(heads_all)},
        "F_W": {head_str(h): float(f_w[i]) for i, h in enumerate(heads_all)},
        "kappa": None if not np.isfinite(kappa) else float(kappa),
        "n_active": n_act,
        "n_correct": n_c,
        "n_wrong": n_w,
        "n_samples": int(len(preds)),
        "baseline_accuracy": float(np.mean(preds == np.asarray(labels))),
    }
    if class_names is not None:
        result["by_class"] = per_class_locate(
            winners, preds, labels, layers, n_heads, class_names, [heads_all[i] for i in s_ids]
        )
    log.info(
        "LTC locate (%s): |C|=%d |W|=%d n_active=%d kappa=%s S=%s Y=%s",
        variant,
        n_c,
        n_w,
        n_act,
        result["kappa"],
        [x["head"] for x in result["S"]],
        [x["head"] for x in result["Y"]],
    )
    return result


def per_class_locate(
    winners: np.ndarray,
    preds: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[int],
    n_heads: int,
    class_names: Sequence[str],
    exclude: Iterable[str | HeadId] = (),
) -> list[dict[str, Any]]:
    """Per-class heads and contrast class of the reference's multi-class path (its
    CounterAnimal branch, METHODS §4.4 last bullet, §4.7-4.8), from the locate split's
    per-sample winners and zero-shot predictions, for every class among ``labels``:

    * ``partner``: the class its samples are most often wrongly predicted as (the reference's
      ``get_alternative_class``; ties: the smaller class id; ``None`` without errors);
    * ``salient``: the non-contrastive heads of its correct samples (F > 1/|{F > 0}|,
      :func:`noncontrastive_selection`) minus ``exclude`` (S), ``[{"head", "score": F}]``.

    Returns ``[{"class", "n_samples", "n_correct", "partner", "salient"}]`` in class order.
    """
    heads_all = all_heads(layers, n_heads)
    winners = np.asarray(winners, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    excl = {parse_head(h) for h in exclude}
    n_cls = len(class_names)
    if labels.size and (labels.max() >= n_cls or preds.max() >= n_cls):
        raise ValueError(f"class ids beyond the {n_cls} class names")
    out = []
    for c in np.unique(labels):
        of_c = labels == c
        correct = of_c & (preds == c)
        wrong = np.bincount(preds[of_c & ~correct], minlength=n_cls)
        counts = head_counts(winners, correct, len(heads_all))
        ids, _, _ = noncontrastive_selection(counts)
        ids = np.array([i for i in ids if heads_all[i] not in excl], dtype=np.int64)
        out.append(
            {
                "class": class_names[c],
                "n_samples": int(of_c.sum()),
                "n_correct": int(correct.sum()),
                "partner": class_names[int(np.argmax(wrong))] if wrong.any() else None,
                "salient": _head_list(ids, counts / max(int(correct.sum()), 1), heads_all),
            }
        )
    return out


def locate_noncontrastive(
    heads: np.ndarray,
    rest: np.ndarray,
    classifier: np.ndarray,
    labels: np.ndarray,
    layers: Sequence[int],
    sample_mask: np.ndarray | None = None,
    exclude: Iterable[str | HeadId] = (),
    candidates: np.ndarray | None = None,
) -> dict[str, Any]:
    """Non-contrastive count (Z_S heads, CounterAnimal Y heads; METHODS §4.5 last bullet).

    Counts top-1 winners over the *correctly classified* samples (within ``sample_mask``) and
    keeps F > 1 / |{F > 0}|; heads in ``exclude`` (e.g. S) are removed after selection.
    Returns ``{"heads": [{"head", "score": F}], "F": {...}, "threshold", "n_active",
    "n_samples", "excluded": [...]}``.
    """
    heads = np.asarray(heads)
    _, _, n_heads, _ = heads.shape
    heads_all = all_heads(layers, n_heads)
    delta, preds, _ = head_margins(heads, rest, classifier, labels, candidates)
    mask = preds == np.asarray(labels)
    if sample_mask is not None:
        mask &= np.asarray(sample_mask, dtype=bool)
    counts = head_counts(top_heads(delta), mask, len(heads_all))
    f = counts / max(int(counts.sum()), 1)
    ids, thr, n_act = noncontrastive_selection(counts)
    excl = {parse_head(h) for h in exclude}
    ids = np.array([i for i in ids if heads_all[i] not in excl], dtype=np.int64)
    return {
        "heads": _head_list(ids, f, heads_all),
        "F": {head_str(h): float(f[i]) for i, h in enumerate(heads_all)},
        "threshold": None if not np.isfinite(thr) else float(thr),
        "n_active": n_act,
        "n_samples": int(mask.sum()),
        "excluded": sorted(head_str(h) for h in excl),
    }


def located_heads(result: dict[str, Any], key: str = "S") -> list[HeadId]:
    """``[(layer, head), ...]`` from a :func:`locate_ltc` / :func:`locate_noncontrastive` dict."""
    return [parse_head(x["head"]) for x in result[key]]


# ---------------------------------------------------------------------------------------------
# §4.8 group inference
# ---------------------------------------------------------------------------------------------


def infer_groups(
    embeddings: np.ndarray, attr_text_emb: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot spurious attribute and pseudo-groups (METHODS §4.8).

    ``attr_text_emb`` [D, V]: one text embedding per attribute value (e.g. land, water), in
    value order; columns are L2-normalised here. ŝ = argmax_v <e, t_v>;
    ĝ = V * y + ŝ. Returns ``(groups_hat [N], attr_hat [N])`` int64.
    """
    t = np.asarray(attr_text_emb, dtype=np.float64)
    t = t / np.linalg.norm(t, axis=0, keepdims=True)
    s_hat = np.argmax(np.asarray(embeddings, dtype=np.float64) @ t, axis=1).astype(np.int64)
    return t.shape[1] * np.asarray(labels, dtype=np.int64) + s_hat, s_hat


# ---------------------------------------------------------------------------------------------
# §4.6 ablation
# ---------------------------------------------------------------------------------------------


def head_means(heads_ref: np.ndarray) -> np.ndarray:
    """Mean of every head over a reference set, [L, H, D] float32 (float64 accumulation)."""
    return np.asarray(heads_ref).mean(axis=0, dtype=np.float64).astype(np.float32)


def _ablation_values(heads: np.ndarray, means: np.ndarray | None, mode: str) -> np.ndarray:
    if mode == "mean":
        if means is None:
            raise ValueError("mean ablation needs reference means [L, H, D] (see head_means)")
        means = np.asarray(means)
        if means.shape != heads.shape[1:]:
            raise ValueError(f"means shape {means.shape} != per-sample heads {heads.shape[1:]}")
        return means
    if mode == "zero":
        return np.zeros(heads.shape[1:], dtype=heads.dtype)
    raise ValueError(f"unknown ablation mode {mode!r}; expected 'mean' or 'zero'")


def ablate_heads(
    heads: np.ndarray,
    layers: Sequence[int],
    head_list: Iterable[str | HeadId],
    means: np.ndarray | None = None,
    mode: str = "mean",
) -> np.ndarray:
    """Copy of ``heads`` with every listed head replaced by its reference mean (``mode="mean"``,
    ``means`` [L, H, D] from :func:`head_means` on the reference set) or by zero."""
    heads = np.asarray(heads)
    values = _ablation_values(heads, means, mode)
    out = heads.copy()
    for h in head_list:
        li, hh = head_position(parse_head(h), layers)
        out[:, li, hh, :] = values[li, hh]
    return out


# ---------------------------------------------------------------------------------------------
# §4.7 accept / reject updates
# ---------------------------------------------------------------------------------------------


def _unit_cos(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    nv = np.linalg.norm(v, axis=-1)
    nq = float(np.linalg.norm(q))
    dot = v @ q
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nv > 0, dot / (nv * nq), 0.0)


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


def accept_update(v: np.ndarray, q_basis: np.ndarray, scale_preserving: bool = False) -> np.ndarray:
    """Reference "accept" update (METHODS §4.7) applied to the rows of ``v`` [..., D].

    For each column q of ``q_basis`` [D, K] in order: ``v <- v + cos(v, q) q`` then
    ``v <- v / ||v||``. With ``scale_preserving`` the result is rescaled to the original
    norm of each row ("LTC-scale-preserving" ablation). Zero rows stay zero.
    """
    v0 = np.asarray(v, dtype=np.float64)
    out = v0.copy()
    for k in range(q_basis.shape[1]):
        q = np.asarray(q_basis[:, k], dtype=np.float64)
        out = _normalise(out + _unit_cos(out, q)[..., None] * q)
    if scale_preserving:
        out = out * np.linalg.norm(v0, axis=-1, keepdims=True)
    return out.astype(np.asarray(v).dtype if np.asarray(v).dtype.kind == "f" else np.float64)


def accept_in_subspace(
    v: np.ndarray, q_basis: np.ndarray, scale_preserving: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`accept_update` for an orthonormal ``q_basis`` Q [D, K], in K dimensions.

    Every step moves ``v`` only along one column of Q and rescales it, so the result is
    ``s * v + Q @ d`` with a per-row scale ``s`` [...] and coefficients ``d`` [..., K]:
    the component of ``v`` outside span(Q) is only rescaled. Computing ``s`` and ``d`` needs
    ``b = v Q`` and the norms once (O(D K) per row) instead of K passes over D. Returns
    ``(s, d, b)``; ``b`` lets callers reuse the projections (e.g. logit changes
    ``(s - 1) (v W) + d (Q^T W)`` without forming the vectors). Zero rows give ``s = 0``.
    """
    q = np.asarray(q_basis, dtype=np.float64)
    gram = q.T @ q
    if not np.allclose(gram, np.eye(q.shape[1]), atol=1e-8):
        raise ValueError("accept_in_subspace needs an orthonormal basis (insight_basis)")
    v = np.asarray(v, dtype=np.float64)
    b = v @ q  # [..., K]
    s, d = accept_coefficients(b, np.sum(v * v, axis=-1), scale_preserving)
    return s, d, b


def accept_coefficients(
    b: np.ndarray, n0_sq: np.ndarray, scale_preserving: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The K sequential accept steps on the projections ``b = v Q`` [..., K] and squared
    norms ``n0_sq = |v|^2`` [...] (see :func:`accept_in_subspace`): returns ``(s, d)`` with
    ``accept(v) = s * v + Q @ d``."""
    b = np.asarray(b, dtype=np.float64)
    n0_sq = np.asarray(n0_sq, dtype=np.float64)
    perp_sq = np.maximum(n0_sq - np.sum(b * b, axis=-1), 0.0)
    s = np.ones_like(n0_sq)
    c = b.copy()
    norm_sq = n0_sq.copy()
    for k in range(b.shape[-1]):
        nv = np.sqrt(norm_sq)
        cos = np.divide(c[..., k], nv, out=np.zeros_like(nv), where=nv > 0)
        c[..., k] += cos
        norm_sq = s * s * perp_sq + np.sum(c * c, axis=-1)
        inv = np.divide(1.0, np.sqrt(norm_sq), out=np.zeros_like(norm_sq), where=norm_sq > 0)
        s, c = s * inv, c * inv[..., None]
        norm_sq = np.where(norm_sq > 0, 1.0, 0.0)
    if scale_preserving:
        n0 = np.sqrt(n0_sq)
        s, c = s * n0, c * n0[..., None]
    return s, c - s[..., None] * b


def reject_update(v: np.ndarray, q_basis: np.ndarray) -> np.ndarray:
    """RoboShot "reject" update: for each q in order ``v <- v - cos(v, q) q; v <- v/||v||``."""
    vin = np.asarray(v)
    out = np.asarray(v, dtype=np.float64).copy()
    for k in range(q_basis.shape[1]):
        q = np.asarray(q_basis[:, k], dtype=np.float64)
        out = _normalise(out - _unit_cos(out, q)[..., None] * q)
    return out.astype(vin.dtype if vin.dtype.kind == "f" else np.float64)


# ---------------------------------------------------------------------------------------------
# LTC correct
# ---------------------------------------------------------------------------------------------


def corrected_embeddings(
    heads: np.ndarray,
    layers: Sequence[int],
    base: np.ndarray,
    ablate: Iterable[str | HeadId] = (),
    project: Iterable[str | HeadId] = (),
    q_basis: np.ndarray | None = None,
    means: np.ndarray | None = None,
    ablation: str = "mean",
    scale_preserving: bool = False,
) -> np.ndarray:
    """Edit a precomputed ``base`` embedding [N, D] (= heads.sum + rest) by head deltas.

    Ablated heads are replaced by their reference value, then each projected head (its
    current, possibly ablated, value) is replaced by :func:`accept_update`. Returns float64
    [N, D] without renormalisation. Used by :func:`ltc_correct` and the random controls.
    """
    heads = np.asarray(heads)
    emb = np.array(base, dtype=np.float64, copy=True)
    ablate = [parse_head(h) for h in ablate]
    project = [parse_head(h) for h in project]
    if ablate:
        values = _ablation_values(heads, means, ablation)
    current: dict[HeadId, np.ndarray] = {}
    for h in dict.fromkeys(ablate):
        li, hh = head_position(h, layers)
        emb += values[li, hh].astype(np.float64) - heads[:, li, hh, :]
        current[h] = np.broadcast_to(values[li, hh], (heads.shape[0], heads.shape[-1]))
    if project and q_basis is None:
        raise ValueError("accept projection of salient heads needs q_basis (insight_basis)")
    for h in dict.fromkeys(project):
        li, hh = head_position(h, layers)
        cur = current.get(h, heads[:, li, hh, :]).astype(np.float64)
        emb += accept_update(cur, q_basis, scale_preserving) - cur
    return emb


def ltc_correct(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    spurious: Iterable[str | HeadId],
    salient: Iterable[str | HeadId],
    q_basis: np.ndarray | None,
    means: np.ndarray | None = None,
    ablation: str = "mean",
    scale_preserving: bool = False,
    renormalize_after_edit: bool = False,
) -> np.ndarray:
    """LTC correct step (METHODS §4.6-4.7): corrected embeddings [N, D] float32.

    * ``spurious`` (S): mean-ablated with ``means`` [L, H, D] (:func:`head_means` of the
      reference set: locate split by default, test split for the reference-compatible
      variant), or zero-ablated with ``ablation="zero"``;
    * ``salient`` (Y): each head replaced by :func:`accept_update` with ``q_basis``
      (:func:`insight_basis`); ``scale_preserving`` gives the LTC-scale-preserving ablation;
    * the embedding is re-summed (all heads + ``rest``); no renormalisation unless
      ``renormalize_after_edit``.

    Head ids may be ``(layer, head)`` tuples or ``"L{l}H{h}"`` strings; they must be stored.
    """
    heads = np.asarray(heads)
    base = heads.sum(axis=(1, 2), dtype=np.float64) + np.asarray(rest, dtype=np.float64)
    emb = corrected_embeddings(
        heads, layers, base, spurious, salient, q_basis, means, ablation, scale_preserving
    )
    if renormalize_after_edit:
        emb = _normalise(emb)
    return emb.astype(np.float32)


__all__ = [
    "ablate_heads",
    "accept_update",
    "contrastive_selection",
    "corrected_embeddings",
    "head_counts",
    "head_frequencies",
    "head_margins",
    "head_means",
    "infer_groups",
    "insight_basis",
    "locate_from_winners",
    "locate_ltc",
    "locate_noncontrastive",
    "located_heads",
    "ltc_correct",
    "noncontrastive_selection",
    "per_class_locate",
    "reject_update",
    "select_samples",
    "top_heads",
    "worst_gender_mask",
]


# ---------------------------------------------------------------------------------------------
# Registered methods: LTC and its ablations (clipbias.methods.registry)
# ---------------------------------------------------------------------------------------------


def heads_of(located: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(S, Y) head ids of a located-heads file (docs/DESIGN.md, ``heads/.../ltc.json``)."""
    return [x["head"] for x in located["spurious"]], [x["head"] for x in located["salient"]]


INSIGHT = ("global", "per_class")


def class_bases(
    rows: Sequence[tuple[str, str, str, str]], pos_emb: np.ndarray, neg_emb: np.ndarray
) -> dict[frozenset[str], np.ndarray]:
    """Insight basis Q per class pair (:func:`insight_basis` of that pair's rows, in order).

    ``rows``: ``(class_a, class_b, pos, neg)`` of :func:`clipbias.methods.texts.
    class_insight_pairs`; ``pos_emb``/``neg_emb`` [len(rows), D] their raw embeddings."""
    if len(rows) != len(pos_emb) or len(rows) != len(neg_emb):
        raise ValueError(
            f"{len(rows)} class insight pairs in the text file but {len(pos_emb)}/{len(neg_emb)} "
            "encoded: re-encode the method texts (rule encode_method_texts)"
        )
    keys: dict[frozenset[str], list[int]] = {}
    for i, (a, b, _, _) in enumerate(rows):
        keys.setdefault(frozenset((a, b)), []).append(i)
    return {k: insight_basis(pos_emb[ix], neg_emb[ix]) for k, ix in keys.items()}


def per_class_plan(
    by_class: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    bases: dict[frozenset[str], np.ndarray],
    fallback_salient: Sequence[str],
) -> dict[int, dict[str, Any]]:
    """What the reference's multi-class path does for a test image of pseudo-class c
    (METHODS §4.7-4.8, its CounterAnimal branch): accept-project the Y heads of c (those of
    the located set, ``fallback_salient``, when c has none, as the reference falls back to
    fixed heads) with the insight basis of the pair {c, partner(c)}. Without a partner or
    without texts for the pair the image gets no projection (METHODS [REC] instead of the
    reference's random key). Returns ``{class id: {"class", "partner", "salient", "basis",
    "status"}}`` with status ``ok``, ``fallback_heads``, ``no_partner`` or ``no_texts``."""
    index = {name: i for i, name in enumerate(class_names)}
    plan = {}
    for entry in by_class:
        name, partner = entry["class"], entry.get("partner")
        if name not in index or (partner is not None and partner not in index):
            raise ValueError(f"located class {name!r} / {partner!r} is not a classifier class")
        salient = [x["head"] for x in entry.get("salient", [])]
        status = "ok" if salient else "fallback_heads"
        salient = salient or list(fallback_salient)
        basis = None if partner is None else bases.get(frozenset((name, partner)))
        if partner is None:
            status = "no_partner"
        elif basis is None:
            status = "no_texts"
        plan[index[name]] = {
            "class": name, "partner": partner, "salient": salient if basis is not None else [],
            "basis": basis, "status": status,
        }  # fmt: skip
    return plan


def ltc_correct_per_class(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    spurious: Iterable[str | HeadId],
    pseudo: np.ndarray,
    plan: dict[int, dict[str, Any]],
    means: np.ndarray | None = None,
    ablation: str = "mean",
    scale_preserving: bool = False,
    renormalize_after_edit: bool = False,
) -> np.ndarray:
    """:func:`ltc_correct` per pseudo-class: every row is ablated (S) like LTC, and the rows
    whose pseudo-class ``pseudo`` [N] (the zero-shot prediction) has a basis in ``plan``
    (:func:`per_class_plan`) get that class's Y heads accept-projected with it."""
    heads = np.asarray(heads)
    rest = np.asarray(rest)
    pseudo = np.asarray(pseudo, dtype=np.int64)
    spurious = list(spurious)
    out = np.empty((len(heads), heads.shape[-1]), dtype=np.float32)
    for c in np.unique(pseudo):
        rows = pseudo == c
        step = plan.get(int(c)) or {"salient": [], "basis": None}
        out[rows] = ltc_correct(
            heads[rows], rest[rows], layers, spurious, step["salient"], step["basis"], means,
            ablation, scale_preserving, renormalize_after_edit,
        )  # fmt: skip
    return out


def class_plan_from_context(ctx: Any, located: dict[str, Any], salient: Sequence[str]):
    """:func:`per_class_plan` from a method context: the located file's ``by_class`` and the
    text file's ``class_insight_pairs`` (encoded as ``class_accept_pos``/``_neg``)."""
    from clipbias.methods.texts import class_insight_pairs

    if "by_class" not in located:
        raise ValueError(
            "insight: per_class needs the per-class heads of the located file (by_class); "
            "re-run the rule locate_ltc with this clipbias"
        )
    rows = class_insight_pairs(ctx.text_spec)
    if not rows:
        raise ValueError(
            "insight: per_class needs class_insight_pairs in the dataset's text file "
            "(config/texts/*.yaml; see clipbias.methods.texts.class_insight_pairs)"
        )
    pos_texts, pos = ctx.text_roles("class_accept_pos")
    _, neg = ctx.text_roles("class_accept_neg")
    if pos_texts != [r[2] for r in rows]:
        raise ValueError(
            "texts.parquet does not hold the text file's class_insight_pairs: re-encode the "
            "method texts (rule encode_method_texts)"
        )
    return per_class_plan(
        located["by_class"], ctx.class_names, class_bases(rows, pos, neg), salient
    )


def ltc_edit(
    ctx: Any,
    heads_from: str = "ltc",
    ablate: bool = True,
    project: bool = True,
    ablation_stats: str = "locate",
    ablation: str = "mean",
    scale_preserving: bool = False,
    renormalize_after_edit: bool = False,
    insight: str = "global",
) -> tuple[Any, dict[str, Any]]:
    """LTC's head edit of one evaluation batch, ``edit(heads, rest, idx) -> embeddings``, and
    its meta (the heads used, and for ``per_class`` the per-class plan and, filled as batches
    are edited, the rows of each status). :func:`predict` applies it to the test split;
    :func:`clipbias.methods.compose.fit_ltc` chains it with other corrections."""
    from clipbias.metrics import predict as zero_shot

    if insight not in INSIGHT:
        raise ValueError(f"insight must be one of {INSIGHT}, got {insight!r}")
    located = ctx.located[heads_from]
    s, y = heads_of(located)
    s = s if ablate else []
    y = y if project else []
    means = ctx.ablation_means(ablation_stats) if s and ablation == "mean" else None
    meta: dict[str, Any] = {
        "heads_from": heads_from,
        "spurious": s,
        "salient": y,
        "ablation_stats": ablation_stats if s else None,
        "ablation": ablation,
        "scale_preserving": scale_preserving,
        "insight": insight,
    }
    if project and insight == "per_class":
        plan = class_plan_from_context(ctx, located, y)
        n_rows = dict.fromkeys(("ok", "fallback_heads", "no_partner", "no_texts", "unlocated"), 0)
        meta["per_class"] = {
            "rows": n_rows,
            "classes": [{k: v for k, v in step.items() if k != "basis"} for step in plan.values()],
        }

        def edit_per_class(heads, rest, idx):
            base = heads.sum(axis=(1, 2), dtype=np.float64) + rest
            pseudo = zero_shot(base, ctx.classifier, ctx.candidates(idx))
            for c in pseudo:
                n_rows[plan[int(c)]["status"] if int(c) in plan else "unlocated"] += 1
            return ltc_correct_per_class(
                heads, rest, ctx.layers, s, pseudo, plan, means, ablation, scale_preserving,
                renormalize_after_edit,
            )  # fmt: skip

        return edit_per_class, meta

    q = ctx.basis("accept_pos", "accept_neg") if y else None
    if y and q is None:
        raise ValueError("LTC's accept projection needs insight_pairs.accept in the text file")
    if y and len(ctx.class_names) > 2 and not ctx.dataset_meta.get("candidate_columns"):
        log.warning(
            "LTC with one insight pair list on %d classes: the accept update makes each Y head "
            "a unit vector along the first pair's direction, pushing every image towards the "
            "two classes that pair separates (docs/DESIGN.md, 'LTC on more than two "
            "classes'); the reference's multi-class path is insight: per_class",
            len(ctx.class_names),
        )

    def edit(heads, rest, idx):
        return ltc_correct(
            heads, rest, ctx.layers, s, y, q, means, ablation, scale_preserving,
            renormalize_after_edit,
        )  # fmt: skip

    return edit, meta


def predict(ctx: Any, **params: Any) -> Any:
    """LTC correct (METHODS §4.6-4.7) on the test split; the registry's variants fix
    ``heads_from`` (``ltc`` or ``ltc_full``), ``ablate`` (mean-ablate S), ``project``
    (accept-project Y), ``ablation_stats`` and ``scale_preserving``.

    ``insight``: ``global`` (one basis from ``insight_pairs.accept`` for every image, the
    reference's binary path) or ``per_class`` (the reference's multi-class path: per
    pseudo-class Y heads and the basis of the class and its most-confused class,
    :func:`per_class_plan`). Parameters: :func:`ltc_edit`."""
    from clipbias.methods.api import MethodOutput

    edit, meta = ltc_edit(ctx, **params)
    pred = ctx.predict(edit)
    rows = (meta.get("per_class") or {}).get("rows") or {}
    if rows.get("no_partner", 0) + rows.get("no_texts", 0) + rows.get("unlocated", 0):
        log.warning("LTC per_class: test rows without a projection: %s", rows)
    return MethodOutput(pred, meta)
