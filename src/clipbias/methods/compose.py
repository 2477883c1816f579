"""Compositions: chain a head-level correction with embedding-level ones (docs/DESIGN.md,
"Compositions").

A composition is configured as ``{name: compose, id: ltc_then_prism_mini, steps: [ltc,
{name: prism_mini}]}``: a list of registered methods (names, or mappings with their
parameters) that expose a fitted :class:`~clipbias.methods.api.Correction` (registry field
``correction``). Each step is fitted on the locate split exactly as when it runs alone (from
the stored, unedited features), then the corrections are applied in order to every
evaluation batch: the first step's head edit (if any) builds the embedding, every step's
embedding transform follows in turn, and the decision is that of the one step that sets a
classifier or a decision rule (else zero-shot's classifier). What can chain is checked at
config time (:func:`clipbias.methods.registry.check_steps`): a head edit only as the first
step, a decision rule only as the last, at most one step that changes the classifier.

This module also holds the ``fit`` functions of the existing methods that can be a step
(LTC and its ablations; the other composable methods have their own ``fit``, which
their ``predict`` applies):
each rebuilds what the method's own ``predict`` applies, so alone and in a chain they are
the same correction (``tests/unit/test_methods.py`` checks both paths agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipbias.methods.api import Correction, MethodContext, MethodOutput, apply_correction


def chain(steps: Sequence[tuple[str, Correction]]) -> Correction:
    """One :class:`Correction` applying ``steps`` ((id, correction) pairs) in order."""
    if not steps:
        raise ValueError("a composition needs at least one step")
    for i, (name, c) in enumerate(steps):
        if c.heads is not None and i > 0:
            raise ValueError(f"step {name!r} edits heads: it can only be the first step")
        if c.classify is not None and i < len(steps) - 1:
            raise ValueError(f"step {name!r} has its own decision rule: it must be the last step")
    deciders = [n for n, c in steps if c.classifier is not None or c.classify is not None]
    if len(deciders) > 1:
        raise ValueError(f"steps {deciders} both change the classifier; keep one of them")
    transforms = [c.transform for _, c in steps if c.transform is not None]

    def transform(emb, idx):
        for t in transforms:
            emb = t(emb, idx)
        return emb

    last = next((c for _, c in steps if c.classifier is not None or c.classify is not None), None)
    return Correction(
        heads=steps[0][1].heads,
        transform=transform if transforms else None,
        classifier=None if last is None else last.classifier,
        classify=None if last is None else last.classify,
        meta={"steps": [{"id": n, "meta": c.meta} for n, c in steps]},
    )


def fit_steps(ctx: MethodContext, steps: Sequence[Any]) -> Correction:
    """Fit every step (a registered name or ``{name, <param>: ...}``) and chain them."""
    from clipbias.methods import registry

    fitted = []
    for entry in steps:
        name, overrides = registry.step_entry(entry)
        spec = registry.get(name)
        fitted.append((name, spec.load_fit()(ctx, **spec.resolve_params(overrides))))
    return chain(fitted)


def predict(ctx: MethodContext, steps: Sequence[Any] = ()) -> MethodOutput:
    return apply_correction(ctx, fit_steps(ctx, steps))


# --------------------------------------------------------------------------------------------
# fit functions of the existing methods (their predict functions are unchanged)
# --------------------------------------------------------------------------------------------


def fit_ltc(ctx: MethodContext, **params: Any) -> Correction:
    """LTC's head edit (:func:`clipbias.methods.ltc.ltc_edit`, the edit its ``predict``
    applies; METHODS §4.6-4.7)."""
    from clipbias.methods.ltc import ltc_edit

    edit, meta = ltc_edit(ctx, **params)
    return Correction(heads=edit, meta=meta)
