"""What each paper table reports: the metrics of every evaluation protocol, which of them
are better when lower, and the k of the protocols' top-k quantities.

Pure Python (no numpy or pandas): the workflow reads it at start-up to plan the seeds summary
and the grid table. :mod:`clipbias.protocols` computes the metrics; the rehearsal
(``benchmarks/rehearse.py``) checks that every configured method has every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Metrics summarised over seeds for every cell (accuracies of the evaluation split).
SEED_METRICS = ("avg_acc", "avg_group_acc", "worst_group_acc", "gap")
#: Metrics that need the dataset's groups (not applicable to a dataset without them, such as
#: ImageNet-A's edit task).
GROUP_METRICS = ("worst_group_acc", "avg_group_acc", "gap")

#: k of the protocols' top-k quantities as the papers define them (METHODS §4.11). A metric
#: keeps its paper name (``top10_bias``, ``worst10_counter_acc``, ``maxskew_uniform@1000``)
#: whatever the data: when a split has fewer occupations, classes or images than k, its value
#: is NaN and its ``note`` says why, instead of a silently smaller k.
GENDERBIAS_TOP_K = 10
COUNTERANIMAL_WORST_K = 10
MAXSKEW_K = 1000

#: The metrics each protocol's paper table reports (metrics.csv names, table order): LTC's
#: Waterbirds/CelebA and RefineCLIP's tables (worst group, average, gap), GenderBias-VL
#: (overall and top-10 bias), CounterAnimal (counter and common accuracy, their gap,
#: worst-10-class counter accuracy), FairFace (MaxSkew@1000, both priors).
TABLE_METRICS: Mapping[str, tuple[str, ...]] = {
    "none": ("worst_group_acc", "avg_acc", "gap"),
    "genderbias": ("overall_bias", f"top{GENDERBIAS_TOP_K}_bias", "avg_acc"),
    "counteranimal": (
        "counter_acc", "common_acc", "common_counter_gap",
        f"worst{COUNTERANIMAL_WORST_K}_counter_acc",
    ),
    "fairface": (f"maxskew_uniform@{MAXSKEW_K}", f"maxskew_empirical@{MAXSKEW_K}"),
}  # fmt: skip
#: Further table metrics of a dataset's setting: RefineCLIP's edit tasks (METHODS §5.8), and
#: the fairness audit's Cramér's V of the protected attribute (§6.8).
EDIT_METRICS = ("edit_success", "locality")
PROTECTED_METRICS = ("protected_v", "protected_v_excess")


def table_metrics(protocol: str, edit_targets: bool = False, protected: bool = False) -> list[str]:
    """The metrics a cell's paper table shows: its protocol's, then the edit-task and
    protected-attribute metrics when the dataset has edit targets / a protected attribute."""
    if protocol not in TABLE_METRICS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {list(TABLE_METRICS)}")
    names = list(TABLE_METRICS[protocol])
    if protected:
        names += [*PROTECTED_METRICS, *(["avg_acc"] if "avg_acc" not in names else [])]
    if edit_targets:
        names += list(EDIT_METRICS)
    return names


#: Metrics where lower is better (a method "beats zero-shot" with a smaller value): the
#: accuracy gaps, the GenderBias biases, MaxSkew and Cramér's V of the protected attribute.
LOWER_IS_BETTER = (
    "gap", "common_counter_gap", "overall_bias", f"top{GENDERBIAS_TOP_K}_bias",
    f"maxskew_uniform@{MAXSKEW_K}", f"maxskew_empirical@{MAXSKEW_K}", *PROTECTED_METRICS,
)  # fmt: skip
