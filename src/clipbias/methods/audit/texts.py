"""Audit texts and attribute codes (METHODS §6.1, §6.4 concept texts, §3.7 bias texts).

:func:`audit_texts` validates the ``protected_attributes`` text spec (documented at the top of
``config/texts/facet.yaml``), :func:`text_table` flattens it for the text encoder;
:func:`value_codes` and :func:`recode_attr` map the text file's value names onto the dataset's
attribute codes (``-1`` = unknown / excluded from every attribute statistic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .params import DEFAULTS

_ATTR_KEYS = ("values", "bias_texts", "axis", "description")


def _text_list(obj: Any, where: str) -> list[str]:
    if isinstance(obj, str) or not isinstance(obj, Sequence):
        raise ValueError(f"{where} must be a list of strings, got {type(obj).__name__}")
    out = []
    for i, t in enumerate(obj):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{where}[{i}] must be a non-empty string, got {t!r}")
        out.append(t.strip())
    dup = sorted({t for t in out if out.count(t) > 1})
    if dup:
        raise ValueError(f"{where} lists a text more than once: {dup}")
    return out


def audit_texts(
    spec: Mapping[str, Any],
    min_concept_texts: int = DEFAULTS["min_concept_texts"],
    min_bias_texts: int = DEFAULTS["min_bias_texts"],
) -> dict[str, dict[str, Any]]:
    """Validate the audit text spec (the ``protected_attributes`` structure documented at the
    top of ``config/texts/facet.yaml``; METHODS §6.4 concept texts, §3.7 bias texts).

    Returns ``{attribute: {"values": {value: [texts]}, "bias_texts": [texts],
    "bias_texts_by_value": {value: [texts]} or None, "axis": [pos, neg],
    "description": str}}``, texts stripped. Raises ``ValueError`` naming the offending key
    when the structure is wrong, a value has fewer than ``min_concept_texts`` texts, an
    attribute has fewer than ``min_bias_texts`` bias texts, or the axis names unknown values.
    Bias texts given by value must be balanced (counts differ by at most one).
    """
    if not isinstance(spec, Mapping) or "protected_attributes" not in spec:
        raise ValueError(
            "audit text spec needs a top-level 'protected_attributes:' mapping "
            "(see the header of config/texts/facet.yaml)"
        )
    attrs = spec["protected_attributes"]
    if not isinstance(attrs, Mapping) or not attrs:
        raise ValueError("'protected_attributes' must map attribute names to their texts")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in attrs.items():
        where = f"protected_attributes.{name}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with keys {list(_ATTR_KEYS)}")
        unknown = sorted(set(entry) - set(_ATTR_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_ATTR_KEYS)}")
        for key in ("values", "bias_texts"):
            if key not in entry:
                raise ValueError(f"{where} is missing '{key}:'")
        values = entry["values"]
        if not isinstance(values, Mapping) or len(values) < 2:
            raise ValueError(f"{where}.values must map >= 2 value names to concept texts")
        vals: dict[str, list[str]] = {}
        for v, texts in values.items():
            vals[str(v)] = _text_list(texts, f"{where}.values.{v}")
            if len(vals[str(v)]) < min_concept_texts:
                raise ValueError(
                    f"{where}.values.{v} has {len(vals[str(v)])} concept texts; "
                    f"METHODS §6.4 asks for >= {min_concept_texts}"
                )
        bt = entry["bias_texts"]
        by_value = None
        if isinstance(bt, Mapping):
            extra = sorted(set(map(str, bt)) - set(vals))
            if extra:
                raise ValueError(
                    f"{where}.bias_texts names value(s) {extra} not in values {list(vals)}"
                )
            by_value = {str(v): _text_list(t, f"{where}.bias_texts.{v}") for v, t in bt.items()}
            counts = [len(t) for t in by_value.values()]
            if len(by_value) < len(vals) or max(counts) - min(counts) > 1:
                raise ValueError(
                    f"{where}.bias_texts must be balanced across values "
                    f"{list(vals)}: got counts {dict(zip(by_value, counts, strict=True))}"
                )
            bias = [t for ts in by_value.values() for t in ts]
            _text_list(bias, f"{where}.bias_texts (all values)")
        else:
            bias = _text_list(bt, f"{where}.bias_texts")
        if len(bias) < min_bias_texts:
            raise ValueError(
                f"{where}.bias_texts has {len(bias)} texts; METHODS §3.7 asks for "
                f">= {min_bias_texts}"
            )
        if "axis" in entry:
            axis = entry["axis"]
            if (
                isinstance(axis, str)
                or not isinstance(axis, Sequence)
                or len(axis) != 2
                or axis[0] == axis[1]
            ):
                raise ValueError(f"{where}.axis must be two different value names, got {axis!r}")
            axis = [str(a) for a in axis]
            missing = [a for a in axis if a not in vals]
            if missing:
                raise ValueError(f"{where}.axis names {missing}, not in values {list(vals)}")
        elif len(vals) == 2:
            axis = list(vals)
        else:
            raise ValueError(
                f"{where} has {len(vals)} values; give 'axis: [<value>, <value>]' for the CAV"
            )
        out[str(name)] = {
            "values": vals,
            "bias_texts": bias,
            "bias_texts_by_value": by_value,
            "axis": axis,
            "description": str(entry.get("description", "")).strip(),
        }
    return out


TEXT_TABLE_COLUMNS = ["attribute", "role", "value", "text"]


def text_table(texts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """All audit texts of :func:`audit_texts` output, one row per (attribute, role, value, text)
    with role ``"concept"`` or ``"bias"`` (``value`` empty for bias texts given as a list):
    the list to send through the text tower (no templates)."""
    rows = []
    for attr, entry in texts.items():
        for v, ts in entry["values"].items():
            rows += [(attr, "concept", v, t) for t in ts]
        if entry.get("bias_texts_by_value"):
            for v, ts in entry["bias_texts_by_value"].items():
                rows += [(attr, "bias", v, t) for t in ts]
        else:
            rows += [(attr, "bias", "", t) for t in entry["bias_texts"]]
    return pd.DataFrame(rows, columns=TEXT_TABLE_COLUMNS)


def value_codes(value_names: Iterable[str], dataset_values: Sequence[str]) -> dict[str, int]:
    """Map text-spec value names to the dataset's value indices (``dataset.json``
    ``attributes[<name>]`` order); raises if a name is not a dataset value."""
    ds = [str(v) for v in dataset_values]
    out = {}
    for v in value_names:
        if str(v) not in ds:
            raise ValueError(
                f"attribute value {v!r} of the audit texts is not a dataset value {ds}; "
                "rename it in the text file to match dataset.json"
            )
        out[str(v)] = ds.index(str(v))
    return out


def recode_attr(attr: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Attribute codes restricted to ``keep`` (in that order -> 0, 1, ...); other codes -> -1.

    E.g. FACET gender values ``[masc, fem, non_binary, na]`` with ``keep=[0, 1]`` leaves the
    binary analysis of METHODS §6.1 (non-binary / unknown excluded from V)."""
    a = np.asarray(attr, dtype=np.int64)
    out = np.full(a.shape, -1, dtype=np.int64)
    for new, old in enumerate(keep):
        out[a == int(old)] = new
    return out
