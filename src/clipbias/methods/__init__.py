"""Methods on stored head decompositions, and the method registry.

* :mod:`.heads` — head ids (``(layer, head)`` tuples, serialised ``"L{l}H{h}"``) and small
  array helpers shared by the method modules (docs/DESIGN.md, "Array conventions");
* :mod:`.registry` — which methods exist, what each needs and where its code lives (pure
  Python, importable by the Snakefile without numpy);
* one module per method family: :mod:`.zero_shot`, :mod:`.ortho_cali`, :mod:`.roboshot`,
  :mod:`.textspan_ablation`, :mod:`.ltc` (LTC and its ablations), :mod:`.ltc_random`; the
  algorithms they share live in :mod:`.ltc` and :mod:`.textspan`.

This package module stays free of numpy so that ``clipbias.methods.registry`` can be imported
by the workflow itself; the helpers of :mod:`.heads` are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_HEADS_NAMES = (
    "HeadId",
    "all_heads",
    "embeddings_from",
    "head_position",
    "head_str",
    "load_resource_lines",
    "load_resource_yaml",
    "parse_head",
    "parse_heads",
    "resource_path",
)


def __getattr__(name: str) -> Any:
    if name in _HEADS_NAMES:
        return getattr(importlib.import_module(".heads", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_HEADS_NAMES)
