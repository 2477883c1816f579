"""Mean-ablate the heads selected by the fairness audit (METHODS §6.6-6.7).

Registered as ``audit_ablation`` (the top-k set, k = 4 by default) and
``audit_ablation_greedy`` (the greedy set); both read the located-heads file of the ``audit``
rule (``heads/{cell}/audit.json``, :func:`clipbias.stages.audit.locator_json`). Parameters:

* ``attribute``: the protected attribute whose heads are ablated; ``""`` = the dataset's
  ``protected_attribute`` (``dataset.json``);
* ``variant``: ``"split"`` (heads selected on the locate split) or ``"single_pool"`` (heads
  selected on locate ∪ test, as the paper appears to do: test-set selection);
* ``ablation_stats``: ``"locate"`` (means over the images the heads were selected on: the
  locate split, or for ``single_pool`` locate ∪ test, the means of the audit's own
  single-pool rows) or ``"test"`` (transductive).

An empty greedy set (no head lowered V enough on the locate half) leaves the embedding
unchanged: the predictions are zero-shot's.
"""

from __future__ import annotations

from typing import Any

from clipbias.methods.api import Correction, MethodContext, MethodOutput, apply_correction
from clipbias.methods.heads import parse_head

HEAD_SETS = ("top_k", "greedy")


def selected_heads(
    located: dict[str, Any],
    dataset_meta: dict[str, Any],
    attribute: str,
    variant: str,
    head_set: str,
) -> tuple[str, list[str]]:
    """(attribute, head ids) of the audit's ``head_set`` for ``attribute`` / ``variant``."""
    if head_set not in HEAD_SETS:
        raise ValueError(f"head_set must be one of {HEAD_SETS}, got {head_set!r}")
    attr = attribute or dataset_meta.get("protected_attribute") or ""
    if not attr:
        raise ValueError(
            "the dataset has no protected_attribute in dataset.json: set the method's "
            "'attribute' parameter (e.g. {name: audit_ablation, attribute: gender})"
        )
    attrs = located.get("attributes", {})
    if attr not in attrs:
        raise ValueError(
            f"the audit has no results for attribute {attr!r} (audited: {sorted(attrs)}); add "
            "it to protected_attributes of the dataset's text file or change 'attribute'"
        )
    entry = attrs[attr]
    if variant not in entry:
        raise ValueError(
            f"audit variant {variant!r} was not run for {attr!r} (have: "
            f"{[k for k in entry if isinstance(entry[k], dict)]}); variant is 'split' or "
            "'single_pool' (config audit.single_pool: true)"
        )
    return attr, [str(h) for h in entry[variant][head_set]]


def fit(
    ctx: MethodContext,
    attribute: str = "",
    variant: str = "split",
    ablation_stats: str = "locate",
    head_set: str = "top_k",
) -> Correction:
    """The ablation as a fitted :class:`Correction` (alone, and as a composition's step)."""
    from clipbias.methods.ltc import ltc_correct

    attr, heads = selected_heads(
        ctx.located["audit"], ctx.dataset_meta, attribute, variant, head_set
    )
    missing = [h for h in heads if parse_head(h)[0] not in ctx.layers]
    if missing:
        raise ValueError(f"audit heads {missing} are not in the stored layers {ctx.layers}")
    # ablation means over the rows the audit averaged for this variant's heads
    if ablation_stats not in ("locate", "test"):
        raise ValueError(f"ablation_stats must be 'locate' or 'test', got {ablation_stats!r}")
    if ablation_stats == "test":
        mean_splits = [ctx.test_split]
    elif variant == "single_pool":  # located on the pool locate ∪ test
        mean_splits = list(dict.fromkeys([ctx.locate_split, ctx.test_split]))
    else:
        mean_splits = [ctx.locate_split]
    meta = {
        "heads": heads,
        "attribute": attr,
        "variant": variant,
        "head_set": head_set,
        "ablation_stats": ablation_stats,
        "mean_splits": mean_splits,
    }
    if not heads:
        return Correction(meta=meta)
    means = ctx.head_means(mean_splits)

    def edit(h, rest, idx):
        return ltc_correct(h, rest, ctx.layers, heads, [], None, means, "mean")

    return Correction(heads=edit, meta=meta)


def predict(ctx: MethodContext, **params: Any) -> MethodOutput:
    return apply_correction(ctx, fit(ctx, **params))
