"""Head ids and array helpers shared by the method modules (pure numpy).

Array conventions (docs/DESIGN.md, "Array conventions for methods"):

* ``heads``: ``[N, L, H, D]`` head contributions of the stored layers ``layers`` (real numbers);
* ``rest``: ``[N, D]``, everything else, so ``embedding = heads.sum((1, 2)) + rest``;
* ``classifier``: ``[D, C]`` unit-norm class text embeddings;
* head ids are ``(layer, head)`` tuples with the real layer number, serialised ``"L{l}H{h}"``.

Re-exported lazily by :mod:`clipbias.methods` (``from clipbias.methods import head_str``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import numpy as np

HeadId = tuple[int, int]

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


def head_str(head: HeadId) -> str:
    """``(10, 3) -> "L10H3"``."""
    return f"L{int(head[0])}H{int(head[1])}"


def parse_head(text: str | Sequence[int]) -> HeadId:
    """``"L10H3" -> (10, 3)``; tuples/lists pass through as ints."""
    if isinstance(text, str):
        m = _HEAD_RE.match(text.strip())
        if not m:
            raise ValueError(f"not a head id: {text!r} (expected 'L<layer>H<head>')")
        return int(m.group(1)), int(m.group(2))
    layer, head = text
    return int(layer), int(head)


def parse_heads(items: Iterable[str | Sequence[int]]) -> list[HeadId]:
    return [parse_head(x) for x in items]


def all_heads(layers: Sequence[int], n_heads: int) -> list[HeadId]:
    """All head ids of the stored layers, in storage order (layer-major)."""
    return [(int(layer), h) for layer in layers for h in range(n_heads)]


def head_position(head: HeadId, layers: Sequence[int]) -> tuple[int, int]:
    """Position ``(layer_index, head)`` of a head id in a ``[N, L, H, D]`` array."""
    layer, h = parse_head(head)
    layers = [int(x) for x in layers]
    if layer not in layers:
        raise ValueError(f"head {head_str((layer, h))} is not in the stored layers {layers}")
    return layers.index(layer), h


def embeddings_from(heads: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """``heads.sum((1, 2)) + rest`` -> [N, D]."""
    return heads.sum(axis=(1, 2)) + rest


def resource_path(name: str):
    """Traversable path of a data file shipped in ``clipbias/resources/``."""
    return resources.files("clipbias").joinpath("resources", name)


def load_resource_yaml(name: str) -> Any:
    """Parse a YAML file shipped in ``clipbias/resources/`` (e.g. ``waterbirds_texts.yaml``)."""
    import yaml

    return yaml.safe_load(resource_path(name).read_text(encoding="utf-8"))


def load_resource_lines(name: str) -> list[str]:
    """Non-empty, stripped lines of a text file in ``clipbias/resources/`` (lines starting
    with ``#`` are comments)."""
    text = resource_path(name).read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


__all__ = [
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
]
