"""Per-dataset evaluation protocols of the papers' tables, and the published reference data.

Pure numpy / pandas functions on per-image outcomes (correctness, scores, attribute codes).
Every metric function returns a tidy DataFrame with columns ``metric, value, group_name``
(``group_name`` empty for dataset-level rows) that the metrics tables can append.

* GenderBias-VL (METHODS §4.4, §4.11, §9 #20-21): per-occupation bias |acc_f − acc_m|,
  overall and top-10 bias (top-10 set fixed from the baseline), retrieval skew (MaxSkew with
  the occupation's empirical gender prior).
* FairFace (§4.11, §9 #21): MaxSkew@k with the uniform prior and with the empirical prior.
* CounterAnimal (§4.11, §9 #22): common and counter accuracy, gap, worst-10-class accuracy
  (the 10 classes with the largest baseline common→counter drop).
* Reference head lists (Appendix B) with :func:`jaccard` / :func:`compare_with_reference`, and
  the papers' numbers (:func:`load_published_numbers`).

CelebA protocols (Blond_Hair for LTC; Young/Old with age × Male groups for RefineCLIP Table 2)
are index views: :data:`clipbias.data.adapters.CELEBA_PROTOCOLS` and
:func:`clipbias.data.adapters.celeba_protocol_view`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import yaml

from clipbias.methods import head_str, parse_head, resource_path
from clipbias.tables import (  # noqa: F401  (re-exported: the metrics of each protocol)
    COUNTERANIMAL_WORST_K,
    EDIT_METRICS,
    GENDERBIAS_TOP_K,
    MAXSKEW_K,
    PROTECTED_METRICS,
    TABLE_METRICS,
    table_metrics,
)

log = logging.getLogger(__name__)

TIDY_COLUMNS = ["metric", "value", "group_name", "note"]
MODEL_ALIASES = {"B16": "ViT-B-16", "L14": "ViT-L-14", "H14": "ViT-H-14"}


def table_rows(metrics: pd.DataFrame, split: str, names: Sequence[str]) -> pd.DataFrame:
    """The dataset-level rows of ``names`` on ``split`` of a tidy metrics table: per-item rows
    (one per occupation, concept or group) are left out, a protocol's ``"mean"`` row and the
    protected attribute's V rows kept."""
    m = metrics[(metrics["split"] == split) & metrics["metric"].isin(list(names))]
    group = m["group_name"].fillna("").astype(str)
    dataset_level = group.isin(["", "mean"]) | m["metric"].isin(PROTECTED_METRICS)
    return m[dataset_level]


def missing_table_metrics(
    metrics: pd.DataFrame, split: str, methods: Sequence[str], names: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(method, metric, why) for every table metric a method lacks on ``split``: no row, or a
    NaN value without a ``note`` saying why it cannot be computed. A NaN with a note (e.g.
    MaxSkew@1000 on a split of 300 images) counts as reported."""
    rows = table_rows(metrics, split, names)
    has_note = rows["note"].fillna("").astype(str).str.len() > 0 if "note" in rows else False
    ok = rows[rows["value"].notna() | has_note]
    out = []
    for method in methods:
        got = set(ok.loc[ok["method"] == method, "metric"])
        present = set(rows.loc[rows["method"] == method, "metric"])
        for name in names:
            if name not in got:
                why = "NaN without a note" if name in present else "no row"
                out.append((method, name, why))
    return out


def tidy_rows(rows: Iterable[tuple]) -> pd.DataFrame:
    """Tidy rows ``(metric, value, group_name[, note])`` as a frame (public: the evaluation
    writes rows of metrics it cannot compute with it)."""
    return _tidy(rows)


def _tidy(rows: Iterable[tuple]) -> pd.DataFrame:
    """Tidy rows ``(metric, value, group_name[, note])``."""
    rows = [tuple(r) + ("",) * (4 - len(r)) for r in rows]
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    df["value"] = df["value"].astype(float)
    df["group_name"] = df["group_name"].astype(str)
    df["note"] = df["note"].astype(str)
    return df


def _as_1d(name: str, x: Any, n: int | None = None, dtype: Any = None) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries, expected {n} (one per image)")
    return a


def _name(names: Sequence[str] | None, i: int) -> str:
    return str(names[i]) if names is not None else str(i)


# --------------------------------------------------------------------------- GenderBias-VL


def genderbias_occupation_bias(
    correct: Any, occupation: Any, gender: Any, female: int = 0, male: int = 1
) -> pd.DataFrame:
    """Per-occupation accuracy by gender and bias_o = |acc_female − acc_male| (METHODS §4.11).

    ``correct`` [N] (bool: the image's two-way prediction is right), ``occupation`` [N] (class
    index), ``gender`` [N] (``attr_gender``). Only occupations with images of both genders are
    listed. Columns: ``occupation, n_female, n_male, acc_female, acc_male, bias``, sorted by
    occupation.
    """
    correct = _as_1d("correct", correct, dtype=bool)
    occupation = _as_1d("occupation", occupation, len(correct)).astype(np.int64)
    gender = _as_1d("gender", gender, len(correct)).astype(np.int64)
    rows = []
    for occ in np.unique(occupation):
        m = occupation == occ
        f, mm = m & (gender == female), m & (gender == male)
        if not f.any() or not mm.any():
            continue
        acc_f, acc_m = correct[f].mean(), correct[mm].mean()
        rows.append((int(occ), int(f.sum()), int(mm.sum()), acc_f, acc_m, abs(acc_f - acc_m)))
    cols = ["occupation", "n_female", "n_male", "acc_female", "acc_male", "bias"]
    return pd.DataFrame(rows, columns=cols)


def genderbias_top_occupations(
    correct: Any, occupation: Any, gender: Any, k: int = 10
) -> list[int]:
    """The ``k`` occupations with the largest bias_o, from the *baseline* predictions.

    This set is fixed once (zero-shot baseline on the test split) and reused for every
    method's top-k bias and retrieval skew (METHODS §4.11). Ties: smaller occupation index
    first.
    """
    table = genderbias_occupation_bias(correct, occupation, gender)
    table = table.sort_values(["bias", "occupation"], ascending=[False, True], kind="stable")
    return [int(o) for o in table["occupation"].head(k)]


def genderbias_bias(
    correct: Any,
    occupation: Any,
    gender: Any,
    top_occupations: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    k: int = GENDERBIAS_TOP_K,
) -> pd.DataFrame:
    """GenderBias-VL bias metrics (METHODS §4.11).

    Rows: ``overall_bias`` = mean bias_o over occupations with both genders;
    ``top{k}_bias`` (default k = :data:`GENDERBIAS_TOP_K`) = mean bias_o over ``top_occupations``
    (from :func:`genderbias_top_occupations` on the baseline; NaN with a note when fewer than k
    occupations have both genders); one ``occupation_bias`` row per occupation
    (``group_name`` = class name or index). Values are fractions.
    """
    table = genderbias_occupation_bias(correct, occupation, gender)
    if table.empty:
        raise ValueError("no occupation has images of both genders; cannot compute the bias")
    rows = [("overall_bias", table["bias"].mean(), "")]
    if top_occupations is not None:
        top = [int(o) for o in top_occupations]
        by_occ = table.set_index("occupation")["bias"]
        missing = [o for o in top if o not in by_occ.index]
        if missing:
            raise ValueError(
                f"top occupations {missing} have no images of both genders in this evaluation; "
                "fix the top set from the same split's baseline"
            )
        name = f"top{k}_bias"
        if len(top) < k:
            why = f"{len(table)} occupations with both genders < {k}"
            rows.append((name, float("nan"), "", why))
        else:
            rows.append((name, float(by_occ.loc[top].mean()), ""))
    rows += [
        ("occupation_bias", b, _name(class_names, o))
        for o, b in zip(table["occupation"], table["bias"], strict=True)
    ]
    return _tidy(rows)


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores (ties: lower index first)."""
    return np.argsort(-score, kind="stable")[:k]


def _max_skew(top_attr: np.ndarray, prior: np.ndarray, k: int, smooth_zero: bool) -> float:
    """max_g log(p_top(g) / prior(g)) over values g with prior(g) > 0."""
    counts = np.bincount(top_attr, minlength=len(prior)).astype(np.float64)
    p_top = counts / k
    if smooth_zero:
        p_top = np.where(counts == 0, 1.0 / k, p_top)
    use = prior > 0
    with np.errstate(divide="ignore"):
        skew = np.log(p_top[use]) - np.log(prior[use])
    return float(skew.max())


def retrieval_skew(
    true_scores: Any,
    occupation: Any,
    gender: Any,
    top_occupations: Sequence[int] | None = None,
    k: int = 10,
    min_images: int = 10,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """GenderBias-VL retrieval skew (METHODS §4.11; MaxSkew_empirical, §9 #21).

    For each occupation with at least ``min_images`` images: rank its images by
    ``true_scores`` (the logit of the image's own occupation), take the top ``k``, and compute
    max over genders g of log(p_top(g) / p_occ(g)), where p_occ is the gender share among the
    occupation's images and a zero p_top is replaced by 1/k. Rows: one ``retrieval_skew`` per
    occupation, ``retrieval_skew_all`` (mean over them) and, with ``top_occupations``,
    ``retrieval_skew_top{n}`` (mean over those of them that have enough images).
    """
    score = _as_1d("true_scores", true_scores, dtype=np.float64)
    occupation = _as_1d("occupation", occupation, len(score)).astype(np.int64)
    gender = _as_1d("gender", gender, len(score)).astype(np.int64)
    if (gender < 0).any():
        raise ValueError("gender has unknown (-1) entries; drop those images first")
    n_values = int(gender.max()) + 1 if len(gender) else 2
    per_occ: dict[int, float] = {}
    for occ in np.unique(occupation):
        idx = np.flatnonzero(occupation == occ)
        if len(idx) < min_images:
            continue
        prior = np.bincount(gender[idx], minlength=n_values) / len(idx)
        top = idx[_top_k(score[idx], k)]
        per_occ[int(occ)] = _max_skew(gender[top], prior, k, smooth_zero=True)
    if not per_occ:
        raise ValueError(f"no occupation has at least {min_images} images")
    rows = [("retrieval_skew_all", float(np.mean(list(per_occ.values()))), "")]
    if top_occupations is not None:
        vals = [per_occ[int(o)] for o in top_occupations if int(o) in per_occ]
        if vals:
            rows.append((f"retrieval_skew_top{len(top_occupations)}", float(np.mean(vals)), ""))
    rows += [("retrieval_skew", v, _name(class_names, o)) for o, v in per_occ.items()]
    return _tidy(rows)


# --------------------------------------------------------------------------- MaxSkew (FairFace)


def _maxskew(
    scores: Any,
    attribute: Any,
    n_values: int,
    k: int,
    concepts: Sequence[str] | None,
    prior: Sequence[float] | None,
    smooth_zero: bool,
    name: str,
) -> pd.DataFrame:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"scores must be [N] or [N, concepts], got shape {s.shape}")
    attr = _as_1d("attribute", attribute, s.shape[0]).astype(np.int64)
    if (attr >= n_values).any():
        raise ValueError(f"attribute has values >= n_values ({n_values})")
    known = attr >= 0
    if not known.all():
        log.info("%s: %d image(s) with unknown attribute left out", name, int((~known).sum()))
    s, attr = s[known], attr[known]
    if k > len(attr):
        raise ValueError(f"k = {k} is larger than the number of images ({len(attr)})")
    if concepts is not None and len(concepts) != s.shape[1]:
        raise ValueError(f"{len(concepts)} concept names for {s.shape[1]} score columns")
    if prior is None:
        p = np.bincount(attr, minlength=n_values) / len(attr)
    else:
        p = np.asarray(prior, dtype=np.float64)
        if p.shape != (n_values,):
            raise ValueError(f"prior must have {n_values} entries")
    vals = [_max_skew(attr[_top_k(s[:, c], k)], p, k, smooth_zero) for c in range(s.shape[1])]
    metric = f"{name}@{k}"
    rows = [(metric, float(np.mean(vals)), "mean")]
    rows += [(metric, v, _name(concepts, c)) for c, v in enumerate(vals)]
    return _tidy(rows)


def maxskew_uniform(
    scores: Any,
    attribute: Any,
    n_values: int = 2,
    k: int = 1000,
    concepts: Sequence[str] | None = None,
) -> pd.DataFrame:
    """MaxSkew@k with the uniform prior (FairFace, METHODS §4.11, §9 #21).

    For each concept (column of ``scores`` [N, C], e.g. cosine scores for "A photo of a
    {concept} person"): the ``k`` images with the highest score; per attribute value g,
    log((count_g / k) / (1 / n_values)); max over g. A value absent from the top k gives
    log 0 = −inf and never wins the max (as in the reference). Rows ``maxskew_uniform@k``:
    ``group_name`` "mean" (mean over concepts) and one per concept. Images with an unknown
    attribute (−1) are left out before ranking.
    """
    prior = np.full(int(n_values), 1.0 / n_values)
    return _maxskew(scores, attribute, n_values, k, concepts, prior, False, "maxskew_uniform")


def maxskew_empirical(
    scores: Any,
    attribute: Any,
    n_values: int = 2,
    k: int = 1000,
    concepts: Sequence[str] | None = None,
    prior: Sequence[float] | None = None,
) -> pd.DataFrame:
    """MaxSkew@k with the empirical prior (METHODS §9 #21).

    As :func:`maxskew_uniform`, but the prior of value g is its share among the ranked images
    (or ``prior``), and a value absent from the top k counts as 1/k (the GenderBias
    smoothing). Values with a zero prior are skipped.
    """
    return _maxskew(scores, attribute, n_values, k, concepts, prior, True, "maxskew_empirical")


# --------------------------------------------------------------------------- CounterAnimal


def _class_accuracy(correct: np.ndarray, label: np.ndarray) -> dict[int, float]:
    return {int(c): float(correct[label == c].mean()) for c in np.unique(label)}


def counteranimal_worst_classes(
    correct_common: Any,
    label_common: Any,
    correct_counter: Any,
    label_counter: Any,
    k: int = 10,
) -> list[int]:
    """The ``k`` classes with the largest per-class accuracy drop common → counter (baseline).

    Fixed once from the zero-shot baseline and reused for every method (METHODS §4.11;
    reference: ``acc_common(c) − acc_counter(c)`` sorted descending). Only classes present in
    both splits; ties: smaller class index first.
    """
    cc = _as_1d("correct_common", correct_common, dtype=bool)
    lc = _as_1d("label_common", label_common, len(cc)).astype(np.int64)
    cn = _as_1d("correct_counter", correct_counter, dtype=bool)
    ln = _as_1d("label_counter", label_counter, len(cn)).astype(np.int64)
    acc_c, acc_n = _class_accuracy(cc, lc), _class_accuracy(cn, ln)
    drop = sorted(
        ((acc_c[c] - acc_n[c], c) for c in acc_c if c in acc_n), key=lambda t: (-t[0], t[1])
    )
    return [c for _, c in drop[:k]]


def counteranimal_metrics(
    correct_common: Any,
    label_common: Any,
    correct_counter: Any,
    label_counter: Any,
    worst_classes: Sequence[int],
    k: int = COUNTERANIMAL_WORST_K,
) -> pd.DataFrame:
    """CounterAnimal metrics (METHODS §4.11, §9 #22), all three quantities reported.

    ``correct_*`` [N] is whether the 1,000-way zero-shot prediction equals the image's
    ImageNet index (``dataset.json`` ``imagenet_1k_indices[label]``); ``label_*`` the dataset
    class. Rows: ``common_acc`` and ``counter_acc`` (sample-weighted), ``gap`` = common_acc −
    counter_acc (``common_counter_gap``; not ``gap``, which is the group gap of the split),
    ``worst{k}_counter_acc`` (default k = :data:`COUNTERANIMAL_WORST_K`) = sample-weighted counter
    accuracy over the images of ``worst_classes`` (the reference's computed-but-unprinted
    number), and ``worst{k}_common_acc`` = mean per-class common accuracy of those classes;
    both NaN with a note when fewer than k classes are in both splits.
    """
    cc = _as_1d("correct_common", correct_common, dtype=bool)
    lc = _as_1d("label_common", label_common, len(cc)).astype(np.int64)
    cn = _as_1d("correct_counter", correct_counter, dtype=bool)
    ln = _as_1d("label_counter", label_counter, len(cn)).astype(np.int64)
    if not len(cc) or not len(cn):
        raise ValueError("both the common and the counter split need images")
    worst = [int(c) for c in worst_classes]
    in_worst = np.isin(ln, worst)
    if worst and not in_worst.any():
        raise ValueError(f"no counter image belongs to the worst classes {worst}")
    acc_c = _class_accuracy(cc, lc)
    rows = [
        ("common_acc", cc.mean(), ""),
        ("counter_acc", cn.mean(), ""),
        ("common_counter_gap", cc.mean() - cn.mean(), ""),
    ]
    if len(worst) < k:
        why = f"{len(worst)} classes in both splits < {k}"
        rows.append((f"worst{k}_counter_acc", float("nan"), "", why))
        rows.append((f"worst{k}_common_acc", float("nan"), "", why))
    else:
        rows.append((f"worst{k}_counter_acc", cn[in_worst].mean(), ""))
        rows.append((f"worst{k}_common_acc", float(np.mean([acc_c[c] for c in worst])), ""))
    return _tidy(rows)


# --------------------------------------------------------------------------- reference heads


def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets (ids ``"L{l}H{h}"`` or ``(l, h)``); 1.0 if both empty."""
    sa = {head_str(parse_head(x)) for x in a}
    sb = {head_str(parse_head(x)) for x in b}
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


@cache
def load_reference_heads() -> dict[str, Any]:
    """``src/clipbias/resources/reference_heads.yaml`` (METHODS Appendix B, RefineCLIP Table 4)."""
    return yaml.safe_load(resource_path("reference_heads.yaml").read_text(encoding="utf-8"))


def _model_key(model: str) -> str:
    m = MODEL_ALIASES.get(model, model)
    return m[: -len("-quickgelu")] if m.endswith("-quickgelu") else m


def reference_heads(dataset: str, model: str, list_name: str) -> list[str]:
    """The reference list ``list_name`` of ``dataset`` x ``model`` as ``"L{l}H{h}"`` ids."""
    heads = load_reference_heads()["heads"]
    key = _model_key(model)
    try:
        return list(heads[dataset][key][list_name])
    except KeyError:
        have = {d: {m: sorted(v) for m, v in ms.items()} for d, ms in heads.items()}
        raise KeyError(
            f"no reference list {list_name!r} for dataset {dataset!r}, model {model!r}; "
            f"available: {have}"
        ) from None


def compare_with_reference(
    located: Iterable[Any],
    dataset: str,
    model: str,
    list_name: str,
    pretrained: str | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Compare located heads with a reference list (acceptance: Jaccard >= 0.5, METHODS §4.12).

    Returns ``{"dataset", "model", "list", "weights", "comparable", "located", "reference",
    "intersection", "only_located", "only_reference", "jaccard", "threshold", "passes"}``.
    ``comparable`` is False when ``pretrained`` is given and differs from the weights the
    reference was computed with; ``passes`` is then None (no verdict on other weights).
    """
    ref = reference_heads(dataset, model, list_name)
    loc = [head_str(parse_head(x)) for x in located]
    weights = load_reference_heads()["weights"].get(_model_key(model))
    comparable = pretrained is None or pretrained == weights
    j = jaccard(loc, ref)
    s_loc, s_ref = set(loc), set(ref)
    return {
        "dataset": dataset,
        "model": _model_key(model),
        "list": list_name,
        "weights": weights,
        "comparable": comparable,
        "located": loc,
        "reference": ref,
        "intersection": sorted(s_loc & s_ref),
        "only_located": sorted(s_loc - s_ref),
        "only_reference": sorted(s_ref - s_loc),
        "jaccard": j,
        "threshold": threshold,
        "passes": (j >= threshold) if comparable else None,
    }


# --------------------------------------------------------------------------- published numbers

PUBLISHED_COLUMNS = [
    "paper", "table", "dataset", "model", "method", "metric", "value",
    "sd", "unit", "method_printed", "printed", "qualifier", "note",
]  # fmt: skip


def load_published_numbers(records: Sequence[Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The papers' numbers (METHODS §4.12, §5.9, §6) as a tidy DataFrame.

    Columns ``paper, table, dataset, model, method, metric, value`` first, then ``sd, unit,
    method_printed, printed, qualifier, note``. Percentages are converted to fractions
    (``value`` and ``sd`` / 100, ``unit`` "fraction") so they sit beside the pipeline's metrics;
    ratios (Cramér's V) are unchanged. ``records`` defaults to
    ``src/clipbias/resources/published_numbers.yaml``.
    """
    if records is None:
        text = resource_path("published_numbers.yaml").read_text(encoding="utf-8")
        records = yaml.safe_load(text)["records"]
    df = pd.DataFrame(list(records)).reindex(columns=PUBLISHED_COLUMNS)
    bad = ~df["unit"].isin(["percent", "ratio"])
    if bad.any():
        raise ValueError(f"published numbers: unknown unit(s) {sorted(set(df.loc[bad, 'unit']))}")
    pct = df["unit"] == "percent"
    df["value"] = df["value"].astype(float)
    df["sd"] = df["sd"].astype(float)
    df.loc[pct, "value"] = df.loc[pct, "value"] / 100.0
    df.loc[pct, "sd"] = df.loc[pct, "sd"] / 100.0
    df.loc[pct, "unit"] = "fraction"
    return df
