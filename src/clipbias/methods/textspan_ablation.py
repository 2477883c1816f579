"""TextSpan ablation baseline (METHODS §3.6, §4.9): mean-ablate every head whose top TextSpan
descriptions name a word of the spurious attribute (the dataset's ``spurious_words``).

The original work chose these heads by reading the texts; here the choice is automatic and
reproducible (a whole-word match among each head's ``top_k`` texts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from clipbias.methods.api import Correction, MethodContext, MethodOutput, apply_correction
from clipbias.methods.heads import HeadId, head_str
from clipbias.methods.ltc import ltc_correct


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    alts = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not alts:
        raise ValueError("no words given")
    body = "|".join(re.escape(w) for w in alts)
    return re.compile(rf"\b(?:{body})(?:s|es)?\b", re.IGNORECASE)


def select_textspan_heads(
    table: pd.DataFrame, words: Iterable[str], top_k: int = 10
) -> list[HeadId]:
    """Heads whose top-``top_k`` TextSpan texts mention any of ``words``.

    ``table`` is a :func:`clipbias.methods.textspan.textspan_heads` table. A text mentions a
    word if it contains it as a whole word, case-insensitively, optionally followed by a plural
    "s"/"es" ("lake" matches "Lakes at dawn" but not "lakeside"). Returns ``(layer, head)``
    sorted by layer then head.
    """
    pat = _word_pattern(words)
    top = table[table["rank"] <= top_k]
    hit = top["text"].map(lambda t: bool(pat.search(str(t))))
    heads = {(int(r.layer), int(r.head)) for r in top[hit].itertuples()}
    return sorted(heads)


def textspan_ablation(
    heads: np.ndarray,
    rest: np.ndarray,
    layers: Sequence[int],
    head_list: Iterable[str | HeadId],
    means: np.ndarray | None,
    ablation: str = "mean",
) -> np.ndarray:
    """TextSpan baseline: mean-ablate ``head_list`` (Appendix B or :func:`select_textspan_heads`)."""
    return ltc_correct(heads, rest, layers, head_list, [], None, means, ablation)


def fit(ctx: MethodContext, top_k: int = 5, ablation: str = "mean") -> Correction:
    """The ablation as a fitted :class:`Correction` (alone, and as a composition's step)."""
    words = list(ctx.text_spec.get("spurious_words", []))
    if not words:
        raise ValueError("TextSpan ablation needs spurious_words in the dataset text file")
    heads = select_textspan_heads(ctx.located["textspan"], words, top_k)
    means = ctx.head_means() if ablation == "mean" else None

    def edit(h, rest, idx):
        return textspan_ablation(h, rest, ctx.layers, heads, means, ablation)

    meta = {"heads": [head_str(h) for h in heads], "top_k": int(top_k), "spurious_words": words}
    return Correction(heads=edit, meta=meta)


def predict(ctx: MethodContext, top_k: int = 5, ablation: str = "mean") -> MethodOutput:
    return apply_correction(ctx, fit(ctx, top_k, ablation))
