"""The dataset index (docs/DESIGN.md, "Dataset folder"): schema, validation, I/O.

Shard cutting lives in :func:`clipbias.features.shard_bounds`.

A dataset folder holds ``index.parquet`` (one row per image) and ``dataset.json``
(classes, attributes, groups, splits). Image paths are relative to the dataset folder
(POSIX separators); they may lead into a raw extraction elsewhere (``../extracted/...``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipbias.io import atomic_path

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
META_FILE = "dataset.json"
STRING_COLUMNS = ("image_id", "path", "split")
INT_COLUMNS = ("label", "group")
REQUIRED_COLUMNS = STRING_COLUMNS + INT_COLUMNS
REQUIRED_META = ("name", "classes", "attributes")
# Optional person-crop box (clipbias.data.crops): all four or none, int64, PIL convention.
CROP_COLUMNS = ("crop_x0", "crop_y0", "crop_x1", "crop_y1")


class IndexValidationError(ValueError):
    """The index or its metadata breaks the contract; the message names the column/key."""


def index_schema(attributes: Iterable[str] = (), crops: bool = False) -> pa.Schema:
    """Arrow schema of ``index.parquet``: required columns, ``attr_<name>``, crop box (int64)."""
    fields = [pa.field(c, pa.string(), nullable=False) for c in STRING_COLUMNS]
    fields += [pa.field(c, pa.int64(), nullable=False) for c in INT_COLUMNS]
    fields += [pa.field(f"attr_{a}", pa.int64(), nullable=False) for a in attributes]
    if crops:
        fields += [pa.field(c, pa.int64(), nullable=False) for c in CROP_COLUMNS]
    return pa.schema(fields)


def _examples(df: pd.DataFrame, mask: Any, cols: Iterable[str], n: int = 3) -> str:
    rows = df.loc[np.asarray(mask), [c for c in ["image_id", *cols] if c in df.columns]]
    return rows.head(n).to_dict("records").__repr__()


def _err(column: str, message: str) -> IndexValidationError:
    return IndexValidationError(f"index column '{column}': {message}")


def validate_meta(meta: Mapping[str, Any]) -> None:
    """Check ``dataset.json`` content; errors name the key."""
    for key in REQUIRED_META:
        if key not in meta:
            raise IndexValidationError(f"dataset.json: missing key '{key}'")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise IndexValidationError("dataset.json: 'classes' must be a non-empty list of strings")
    attrs = meta["attributes"]
    if not isinstance(attrs, Mapping):
        raise IndexValidationError("dataset.json: 'attributes' must be a mapping name -> values")
    for name, values in attrs.items():
        if not isinstance(values, list) or not values:
            raise IndexValidationError(
                f"dataset.json: 'attributes.{name}' must be a non-empty list of value names"
            )
    for key in ("spurious_attribute", "protected_attribute"):
        val = meta.get(key)
        if val is not None and val not in attrs:
            raise IndexValidationError(
                f"dataset.json: '{key}' is {val!r}, not one of the attributes {list(attrs)}"
            )
    group_by = meta.get("group_by") or []
    for g in group_by:
        if g != "label" and g not in attrs:
            raise IndexValidationError(
                f"dataset.json: 'group_by' entry {g!r} is neither 'label' nor an attribute"
            )


def expected_groups(df: pd.DataFrame, meta: Mapping[str, Any]) -> np.ndarray | None:
    """Group ids implied by ``group_by`` (mixed radix over label and attributes), or None.

    For ``["label", a]`` this is ``label * n_values(a) + attr_a`` (DESIGN.md); rows with an
    unknown (-1) attribute get -1.
    """
    group_by = list(meta.get("group_by") or [])
    if not group_by:
        return None
    attrs = meta["attributes"]
    g = np.zeros(len(df), dtype=np.int64)
    unknown = np.zeros(len(df), dtype=bool)
    for key in group_by:
        if key == "label":
            n, col = len(meta["classes"]), df["label"].to_numpy(np.int64)
        else:
            n, col = len(attrs[key]), df[f"attr_{key}"].to_numpy(np.int64)
        unknown |= col < 0
        g = g * n + col
    g[unknown] = -1
    return g


def validate_index(
    df: pd.DataFrame,
    meta: Mapping[str, Any],
    root: str | os.PathLike | None = None,
    *,
    check_files: bool = True,
) -> None:
    """Check an index against the contract; raise :class:`IndexValidationError` naming the column.

    Checks: required columns and types (strings; integer without nulls), unique non-empty
    ``image_id``, relative POSIX ``path``, ``label`` in range, every ``attr_<name>`` matches
    ``meta["attributes"]`` and is in ``[-1, n_values)``, ``group`` consistent with ``group_by``
    (or in range of ``group_names``), split counts equal ``meta["splits"]`` when given and,
    with ``root`` and ``check_files``, that every image file exists.
    """
    validate_meta(meta)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise IndexValidationError(
            f"index: missing required column(s) {missing}; have {list(df.columns)}"
        )
    for c in STRING_COLUMNS:
        col = df[c]
        if col.isna().any():
            raise _err(
                c,
                f"has {int(col.isna().sum())} null value(s), e.g. {_examples(df, col.isna(), [c])}",
            )
        if not (pd.api.types.is_string_dtype(col) or col.dtype == object) or not all(
            isinstance(v, str) for v in col.head(1000)
        ):
            raise _err(c, f"must hold strings, got dtype {col.dtype}")
        if (col.str.len() == 0).any():
            raise _err(c, "has empty strings")
    present_crops = [c for c in CROP_COLUMNS if c in df.columns]
    if present_crops and len(present_crops) != len(CROP_COLUMNS):
        missing_crops = [c for c in CROP_COLUMNS if c not in df.columns]
        raise _err(
            missing_crops[0], f"missing; a crop box needs all of {list(CROP_COLUMNS)} or none"
        )
    int_cols = list(INT_COLUMNS) + [c for c in df.columns if c.startswith("attr_")]
    int_cols += present_crops
    for c in int_cols:
        col = df[c]
        if col.isna().any():
            raise _err(c, f"has {int(col.isna().sum())} null value(s)")
        if not pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise _err(c, f"must be an integer (int64) column, got dtype {col.dtype}")

    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        raise _err(
            "image_id",
            f"must be unique; {int(dup.sum())} rows share an id, e.g. "
            f"{sorted(df.loc[dup, 'image_id'].unique()[:3].tolist())}",
        )

    paths = df["path"]
    bad = (
        paths.str.startswith("/")
        | paths.str.contains("\\\\", regex=True)
        | paths.str.match(r"^[A-Za-z]:")
    )
    if bad.any():
        raise _err("path", f"must be relative POSIX paths, e.g. {_examples(df, bad, ['path'])}")

    n_classes = len(meta["classes"])
    label = df["label"].to_numpy(np.int64)
    bad = (label < 0) | (label >= n_classes)
    if bad.any():
        raise _err(
            "label",
            f"must be in [0, {n_classes}) (classes {meta['classes'][:5]}...); "
            f"{int(bad.sum())} rows out of range, e.g. {_examples(df, bad, ['label'])}",
        )

    attrs = meta["attributes"]
    attr_cols = {c[5:] for c in df.columns if c.startswith("attr_")}
    for name in attrs:
        if name not in attr_cols:
            raise _err(
                f"attr_{name}", f"missing, but '{name}' is listed in dataset.json attributes"
            )
    for name in sorted(attr_cols - set(attrs)):
        raise _err(f"attr_{name}", f"has no entry '{name}' in dataset.json attributes")
    for name, values in attrs.items():
        c = f"attr_{name}"
        v = df[c].to_numpy(np.int64)
        bad = (v < -1) | (v >= len(values))
        if bad.any():
            raise _err(
                c,
                f"must be in [-1, {len(values)}) (values {values}); "
                f"{int(bad.sum())} rows out of range, e.g. {_examples(df, bad, [c])}",
            )

    if present_crops:
        x0, y0, x1, y1 = (df[c].to_numpy(np.int64) for c in CROP_COLUMNS)
        bad = (x0 < 0) | (y0 < 0) | (x1 <= x0) | (y1 <= y0)
        if bad.any():
            raise _err(
                "crop_x0",
                "crop boxes must satisfy 0 <= crop_x0 < crop_x1 and 0 <= crop_y0 < crop_y1; "
                f"{int(bad.sum())} rows do not, e.g. {_examples(df, bad, CROP_COLUMNS)}",
            )

    group = df["group"].to_numpy(np.int64)
    expected = expected_groups(df, meta)
    if expected is not None:
        bad = group != expected
        if bad.any():
            cols = ["label", "group"] + [f"attr_{k}" for k in meta["group_by"] if k != "label"]
            raise _err(
                "group",
                f"inconsistent with group_by {meta['group_by']} "
                f"(group = label * n_values + attribute); {int(bad.sum())} rows differ, "
                f"e.g. {_examples(df, bad, cols)}",
            )
    names = meta.get("group_names")
    if names:
        bad = (group < -1) | (group >= len(names))
        if bad.any():
            raise _err(
                "group",
                f"must be in [-1, {len(names)}) (group_names); "
                f"e.g. {_examples(df, bad, ['group'])}",
            )
    elif expected is None:
        bad = group < -1
        if bad.any():
            raise _err("group", "must be >= -1")
    for g in meta.get("minority_groups") or []:
        if names and not (0 <= g < len(names)):
            raise IndexValidationError(f"dataset.json: minority group {g} is not a valid group id")

    splits = meta.get("splits")
    if splits:
        counts = df["split"].value_counts().to_dict()
        if {k: int(v) for k, v in counts.items()} != {k: int(v) for k, v in splits.items()}:
            raise _err("split", f"counts {counts} differ from dataset.json splits {dict(splits)}")

    if root is not None and check_files:
        root = Path(root)
        # normpath: a path into another dataset's folder ("../imagenet_r/...") is checked
        # before this folder exists (a derived dataset, clipbias.data.derive)
        missing_files = [p for p in paths if not os.path.isfile(os.path.normpath(root / p))]
        if missing_files:
            raise _err(
                "path",
                f"{len(missing_files)} file(s) not found under {root}, e.g. {missing_files[:3]}",
            )


def to_table(df: pd.DataFrame, meta: Mapping[str, Any]) -> pa.Table:
    """Arrow table with the explicit index schema (extra columns follow, types inferred)."""
    schema = index_schema(meta["attributes"], crops=all(c in df.columns for c in CROP_COLUMNS))
    extra = [c for c in df.columns if c not in schema.names]
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    for c in extra:
        table = table.append_column(c, pa.array(df[c].to_numpy(), from_pandas=True))
    return table.replace_schema_metadata({b"clipbias.dataset": json.dumps(dict(meta)).encode()})


def write_index(
    df: pd.DataFrame,
    meta: Mapping[str, Any],
    root: str | os.PathLike,
    *,
    check_files: bool = True,
) -> Path:
    """Validate, then write ``<root>/index.parquet`` and ``<root>/dataset.json`` atomically."""
    root = Path(root)
    validate_index(df, meta, root, check_files=check_files)
    table = to_table(df, meta)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / INDEX_FILE) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(root / META_FILE) as tmp:
        tmp.write_text(json.dumps(dict(meta), indent=2) + "\n")
    log.info("wrote %s (%d rows) and %s", root / INDEX_FILE, len(df), META_FILE)
    return root / INDEX_FILE


def read_index(root: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(index DataFrame, dataset.json dict)`` of a dataset folder."""
    root = Path(root)
    df = pq.read_table(root / INDEX_FILE).to_pandas()
    meta = json.loads((root / META_FILE).read_text())
    return df, meta
