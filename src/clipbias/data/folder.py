"""Your own images: a local image folder and an index table -> the dataset folder.

A dataset of ``kind: folder`` (docs/OWN_DATA.md) is a folder of images plus an index table,
a CSV or Parquet file with one row per image::

    image,split,label,background,colour
    images/val/circle_0001.png,val,circle,land,red
    images/test/triangle_0002.png,test,triangle,water,yellow

Columns: ``image`` (path relative to the folder), ``split`` (any names; the config's
``locate_split``, ``test_split`` and ``eval_splits`` must be among them), ``label`` (a
class name of ``folder.classes``, or an integer index into it), optionally ``group`` (a
group name, or an integer id; empty = none) and one column per attribute declared in
``folder.attributes`` (value names; empty = unknown). The config block
(``datasets[].folder``, ``workflow/schemas/config.schema.yaml``)::

    folder:
      path: my_images
      index: my_images/index.csv
      classes: [circle, triangle]
      prompt_names: []               # names in the zero-shot prompts; [] = class names
      attributes:
        - {name: background, values: [land, water]}
        - {name: colour, values: [red, yellow]}
      spurious_attribute: background # groups = label x background unless group_by is set
      protected_attribute: colour    # the fairness audit's attribute
      group_by: []
      minority_groups: []            # group names; [] = the small groups of the locate split

:func:`scan_folder` reads and checks all of it and returns the resolved table; the workflow
calls it at start-up (``workflow/rules/common.smk``), so a missing file, an unknown column, a
split without images, a label without a class name or a file that is not an image stops the
run before any job with one message that names the file and what to do.
:func:`build_folder_dataset` (rule ``prepare_folder_dataset``) repeats the scan, decodes
every image, and writes the standard dataset folder of docs/DESIGN.md ("Dataset folder"):
``index.parquet`` and ``dataset.json``, image paths relative to the dataset folder (the images
are not copied). This module imports only the standard library at module level.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REQUIRED = ("image", "split", "label")
GROUP = "group"
DEFAULT_INDEX = "index.csv"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
#: Leading bytes of the image formats PIL reads that an image folder typically holds.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
)
_INT = re.compile(r"^-?\d+$")


class FolderDatasetError(ValueError):
    """The image folder, its index table or its config block is unusable; the message names
    the file (and line) and says what to do."""


@dataclass
class FolderScan:
    """The resolved content of a folder dataset (:func:`scan_folder`).

    ``rows``: per row the image path (relative to ``root``), split, label index, group id
    and attribute value indices (-1 unknown)."""

    name: str
    root: Path
    index_file: Path
    classes: list[str]
    prompt_names: list[str]
    attributes: dict[str, list[str]]
    spurious_attribute: str | None
    protected_attribute: str | None
    group_by: list[str]
    group_names: list[str]
    minority_groups: list[int]
    images: list[str] = field(repr=False)
    splits: list[str] = field(repr=False)
    labels: list[int] = field(repr=False)
    groups: list[int] = field(repr=False)
    attr_codes: dict[str, list[int]] = field(repr=False)

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(self.splits))


def index_path(folder: Mapping[str, Any]) -> Path:
    """The index table of a ``folder`` config block (default ``<path>/index.csv``)."""
    return Path(folder.get("index") or Path(folder.get("path") or ".") / DEFAULT_INDEX)


def _line(index_file: Path, i: int) -> str:
    """Where data row ``i`` (0-based) is: a CSV line (the header is line 1) or a row."""
    return f"line {i + 2}" if index_file.suffix == ".csv" else f"row {i + 1}"


def _lines(index_file: Path, rows: Sequence[int], n: int = 3) -> str:
    """``line 5`` or ``lines 5, 6, 8 and 29 more`` (``row`` for a Parquet table)."""
    if len(rows) == 1:
        return _line(index_file, rows[0])
    csv_file = index_file.suffix == ".csv"
    shown = ", ".join(str(i + 2 if csv_file else i + 1) for i in rows[:n])
    more = f" and {len(rows) - n} more" if len(rows) > n else ""
    return f"{'lines' if csv_file else 'rows'} {shown}{more}"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    import difflib

    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def read_table(index_file: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a CSV (UTF-8, header line) or Parquet index table; every value as
    a string, missing values as ``""``."""
    index_file = Path(index_file)
    if index_file.suffix == ".csv":
        with open(index_file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [
                {c.strip(): (v or "").strip() for c, v in r.items() if c is not None}
                for r in reader
            ]
        return columns, rows
    import pyarrow.parquet as pq

    table = pq.read_table(index_file)
    columns = list(table.column_names)
    rows = [
        {c: "" if v is None else str(v).strip() for c, v in r.items()} for r in table.to_pylist()
    ]
    return columns, rows


def image_kind(path: str | os.PathLike) -> str | None:
    """The image format of a file from its first bytes (:data:`MAGIC`, WebP), or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def _config_attributes(folder: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in folder.get("attributes") or []:
        name = str(a.get("name", "")) if isinstance(a, Mapping) else str(a)
        values = [str(v) for v in (a.get("values") or [])] if isinstance(a, Mapping) else []
        if name in (*REQUIRED, GROUP) or not name:
            raise FolderDatasetError(
                f"{where}.attributes: {name!r} is not an attribute name (image, split, label "
                "and group are the index's own columns)"
            )
        if name in out:
            raise FolderDatasetError(f"{where}.attributes: {name!r} is listed twice")
        if len(set(values)) != len(values):
            raise FolderDatasetError(f"{where}.attributes: the values of {name!r} repeat")
        out[name] = values
    return out


def scan_folder(
    name: str,
    folder: Mapping[str, Any],
    *,
    splits: Sequence[str] = (),
    locate_split: str | None = None,
    check_files: bool = True,
) -> FolderScan:
    """Read and check the folder dataset ``name`` (its ``datasets[].folder`` block).

    ``splits``: splits that must hold images (the dataset's locate, test and eval splits);
    ``locate_split``: where the default minority groups are counted; ``check_files``: every
    listed image exists and starts like an image file (:func:`image_kind`). Raises
    :class:`FolderDatasetError` at the first problem."""
    where = f"config datasets '{name}' folder"
    if not folder.get("path"):
        raise FolderDatasetError(
            f"{where}.path is empty: set it to the folder that holds your images (docs/OWN_DATA.md)"
        )
    root = Path(folder["path"])
    if not root.is_dir():
        raise FolderDatasetError(
            f"{where}.path: folder {root} not found; give the folder of your images (relative "
            "to the directory you run snakemake in, or absolute)"
        )
    index_file = index_path(folder)
    if index_file.suffix not in TABLE_SUFFIXES:
        raise FolderDatasetError(
            f"{where}.index: {index_file} is neither a .csv nor a .parquet file"
        )
    if not index_file.is_file():
        raise FolderDatasetError(
            f"{where}.index: {index_file} not found; write a CSV with columns image, split, "
            f"label (one row per image; docs/OWN_DATA.md) there, or set folder.index"
        )
    attributes = _config_attributes(folder, where)
    columns, rows = read_table(index_file)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise FolderDatasetError(
            f"{index_file}: missing column(s) {missing}; found {columns}. Required: image "
            "(path relative to folder.path), split, label (class name or index)"
        )
    known = [*REQUIRED, GROUP, *attributes]
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise FolderDatasetError(
            f"{index_file}: unknown column {unknown[0]!r}{_did_you_mean(unknown[0], known)}. "
            f"Columns allowed: {', '.join(known)}; declare an attribute column under "
            f"datasets[].folder.attributes (or remove the column)"
        )
    for a in attributes:
        if a not in columns:
            raise FolderDatasetError(
                f"{where}.attributes: {a!r} has no column in {index_file} (columns: {columns})"
            )
    if not rows:
        raise FolderDatasetError(f"{index_file}: no rows; list one image per row")
    for c in REQUIRED:
        empty = [i for i, r in enumerate(rows) if not r.get(c)]
        if empty:
            raise FolderDatasetError(
                f"{index_file}: empty {c!r} at {_lines(index_file, empty)}; every row needs "
                "image, split and label"
            )

    images = [r["image"].replace("\\", "/") for r in rows]
    bad = [i for i, p in enumerate(images) if p.startswith("/") or re.match(r"^[A-Za-z]:", p)]
    if bad:
        raise FolderDatasetError(
            f"{index_file}: image {images[bad[0]]!r} ({_line(index_file, bad[0])}) is an "
            f"absolute path; give paths relative to folder.path ({root})"
        )
    seen: dict[str, int] = {}
    for i, p in enumerate(images):
        if p in seen:
            raise FolderDatasetError(
                f"{index_file}: image {p!r} is listed twice ({_line(index_file, seen[p])} and "
                f"{_line(index_file, i)}); one row per image"
            )
        seen[p] = i

    # labels: class names of folder.classes, or integer indices into it
    classes = [str(c) for c in folder.get("classes") or []]
    raw = [r["label"] for r in rows]
    as_int = all(_INT.match(v) for v in raw)
    if as_int:
        if not classes:
            raise FolderDatasetError(
                f"{where}.classes is empty but {index_file} has integer labels; list the class "
                "names in label order (label 0 first)"
            )
        labels = [int(v) for v in raw]
        out = [i for i, v in enumerate(labels) if not 0 <= v < len(classes)]
        if out:
            raise FolderDatasetError(
                f"{index_file}: label {labels[out[0]]} ({_lines(index_file, out)}) has no class "
                f"name: folder.classes has {len(classes)} ({', '.join(classes)}), labels 0 to "
                f"{len(classes) - 1}; add the name or fix the rows"
            )
    else:
        if not classes:
            classes = sorted(set(raw))
        pos = {c: k for k, c in enumerate(classes)}
        out = [i for i, v in enumerate(raw) if v not in pos]
        if out:
            v = raw[out[0]]
            raise FolderDatasetError(
                f"{index_file}: label {v!r} ({_lines(index_file, out)}) is not a class name of "
                f"folder.classes {classes}{_did_you_mean(v, classes)}; add it to "
                "datasets[].folder.classes or fix the rows"
            )
        labels = [pos[v] for v in raw]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise FolderDatasetError(f"{where}.classes: need two or more distinct names, got {classes}")
    prompt_names = [str(p) for p in folder.get("prompt_names") or []]
    if prompt_names and len(prompt_names) != len(classes):
        raise FolderDatasetError(
            f"{where}.prompt_names has {len(prompt_names)} names for {len(classes)} classes; "
            "give one per class (or none: the class names)"
        )

    # attribute columns: value names (empty = unknown, -1)
    attr_codes: dict[str, list[int]] = {}
    for a, values in attributes.items():
        col = [r.get(a, "") for r in rows]
        if not values:
            values = sorted({v for v in col if v})
            attributes[a] = values
            if not values:
                raise FolderDatasetError(f"{index_file}: column {a!r} has no values")
        pos = {v: k for k, v in enumerate(values)}
        out = [i for i, v in enumerate(col) if v and v not in pos]
        if out:
            v = col[out[0]]
            raise FolderDatasetError(
                f"{index_file}: {a} value {v!r} ({_lines(index_file, out)}) is not among the "
                f"values {values} of datasets[].folder.attributes{_did_you_mean(v, values)}; "
                "add it there or fix the rows (an empty cell = unknown)"
            )
        attr_codes[a] = [pos[v] if v else -1 for v in col]
    spurious = folder.get("spurious_attribute") or None
    protected = folder.get("protected_attribute") or None
    for key, val in (("spurious_attribute", spurious), ("protected_attribute", protected)):
        if val is not None and val not in attributes:
            raise FolderDatasetError(
                f"{where}.{key}: {val!r} is not one of folder.attributes {list(attributes)}"
            )

    # groups: a group column, else group_by (default [label, spurious_attribute]), else none
    group_by = [str(g) for g in folder.get("group_by") or []]
    if GROUP in columns:
        if group_by:
            raise FolderDatasetError(
                f"{where}.group_by is set and {index_file} has a group column; use one of them"
            )
        group_names, groups = _group_column([r.get(GROUP, "") for r in rows], index_file)
    else:
        if not group_by and spurious:
            group_by = ["label", spurious]
        for g in group_by:
            if g != "label" and g not in attributes:
                raise FolderDatasetError(
                    f"{where}.group_by: {g!r} is neither 'label' nor one of folder.attributes "
                    f"{list(attributes)}"
                )
        group_names, groups = _groups_by(group_by, classes, attributes, labels, attr_codes)

    split_list = [r["split"] for r in rows]
    counts = Counter(split_list)
    for s in splits:
        if not counts.get(s):
            found = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))
            raise FolderDatasetError(
                f"{index_file}: split {s!r} has no images (splits in the file: {found}); the "
                f"dataset's locate_split, test_split and eval_splits must be splits of the "
                f"file: set them in datasets '{name}' or add rows{_did_you_mean(s, list(counts))}"
            )
    minority = _minority(
        folder.get("minority_groups") or [],
        group_names,
        groups,
        split_list,
        locate_split,
        where,
    )
    if check_files:
        _check_images(root, images, index_file)
    return FolderScan(
        name=name,
        root=root,
        index_file=index_file,
        classes=classes,
        prompt_names=prompt_names,
        attributes=attributes,
        spurious_attribute=spurious,
        protected_attribute=protected,
        group_by=group_by,
        group_names=group_names,
        minority_groups=minority,
        images=images,
        splits=split_list,
        labels=labels,
        groups=groups,
        attr_codes=attr_codes,
    )


def _group_column(col: list[str], index_file: Path) -> tuple[list[str], list[int]]:
    """Group names and ids of a ``group`` column (integer ids or names; empty = -1)."""
    given = [v for v in col if v]
    if given and all(_INT.match(v) for v in given):
        ids = [int(v) if v else -1 for v in col]
        bad = [i for i, g in enumerate(ids) if g < -1]
        if bad:
            raise FolderDatasetError(
                f"{index_file}: group {ids[bad[0]]} ({_lines(index_file, bad)}) is below -1 "
                "(-1 or an empty cell = no group)"
            )
        n = max(ids) + 1
        return [f"group {k}" for k in range(n)], ids
    names = sorted(set(given))
    pos = {g: k for k, g in enumerate(names)}
    return names, [pos[v] if v else -1 for v in col]


def _groups_by(
    group_by: list[str],
    classes: list[str],
    attributes: Mapping[str, list[str]],
    labels: list[int],
    attr_codes: Mapping[str, list[int]],
) -> tuple[list[str], list[int]]:
    """Mixed-radix group ids over ``group_by`` (clipbias.data.index.expected_groups) and
    their names ("circle / land"); -1 where an attribute is unknown."""
    if not group_by:
        return [], [-1] * len(labels)
    import itertools

    axes = [classes if g == "label" else attributes[g] for g in group_by]
    names = [" / ".join(parts) for parts in itertools.product(*axes)]
    groups = []
    for i in range(len(labels)):
        g = 0
        for key, axis in zip(group_by, axes, strict=True):
            v = labels[i] if key == "label" else attr_codes[key][i]
            if v < 0:
                g = -1
                break
            g = g * len(axis) + v
        groups.append(g)
    return names, groups


def _minority(
    given: Sequence[str],
    group_names: list[str],
    groups: list[int],
    splits: list[str],
    locate_split: str | None,
    where: str,
) -> list[int]:
    """Minority groups: the named ones, else groups of the locate split (all rows without
    one) with fewer than half the mean count of its groups (the adapters' rule)."""
    if given:
        unknown = [g for g in given if g not in group_names]
        if unknown:
            raise FolderDatasetError(
                f"{where}.minority_groups: {unknown} are not group names {group_names}"
            )
        return [group_names.index(g) for g in given]
    if not group_names:
        return []
    counts = [0] * len(group_names)
    for g, s in zip(groups, splits, strict=True):
        if g >= 0 and (locate_split is None or s == locate_split):
            counts[g] += 1
    total = sum(counts)
    if not total:
        return []
    mean = total / len(counts)
    return [k for k, c in enumerate(counts) if c < 0.5 * mean]


def _check_images(root: Path, images: list[str], index_file: Path) -> None:
    missing = [i for i, p in enumerate(images) if not (root / p).is_file()]
    if missing:
        shown = ", ".join(repr(images[i]) for i in missing[:3])
        raise FolderDatasetError(
            f"{index_file}: {len(missing)} image(s) not found under {root}, e.g. {shown} "
            f"({_lines(index_file, missing)}); fix the paths (relative to folder.path) or "
            "remove the rows"
        )
    for i, p in enumerate(images):
        if image_kind(root / p) is None:
            raise FolderDatasetError(
                f"{index_file}: {root / p} ({_line(index_file, i)}) is not an image file (not "
                "PNG, JPEG, GIF, BMP, TIFF, PGM/PPM or WebP); replace the file or remove its row"
            )


def decode_images(root: str | os.PathLike, images: Sequence[str], index_file: Path) -> None:
    """Decode every image (JPEGs at reduced scale: the whole stream is still read), so a
    truncated or corrupt file stops the dataset rule naming it, not the feature extraction."""
    from PIL import Image

    root = Path(root)
    for i, p in enumerate(images):
        try:
            with Image.open(root / p) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (64, 64))
                img.load()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise FolderDatasetError(
                f"{index_file}: image {root / p} ({_line(index_file, i)}) cannot be read: "
                f"{err}; replace the file or remove its row"
            ) from None


def build_folder_dataset(
    name: str,
    folder: Mapping[str, Any],
    dataset_root: str | os.PathLike,
    *,
    splits: Sequence[str] = (),
    locate_split: str | None = None,
) -> Path:
    """Rule ``prepare_folder_dataset``: scan the folder (:func:`scan_folder`), decode every
    image (:func:`decode_images`) and write ``index.parquet`` + ``dataset.json`` to
    ``dataset_root`` (docs/DESIGN.md, "Dataset folder"); image paths lead from there into the
    folder. Returns the path of ``index.parquet``."""
    import hashlib

    import pandas as pd

    from clipbias.data.adapters import _join, _rel_prefix
    from clipbias.data.index import write_index

    scan = scan_folder(name, folder, splits=splits, locate_split=locate_split)
    decode_images(scan.root, scan.images, scan.index_file)
    dataset_root = Path(dataset_root)
    dataset_root.mkdir(parents=True, exist_ok=True)
    image = pd.Series(scan.images, dtype=str)
    df = pd.DataFrame(
        {
            "image_id": image,
            "path": _join(_rel_prefix(scan.root, dataset_root), image),
            "split": pd.Series(scan.splits, dtype=str),
            "label": pd.Series(scan.labels, dtype="int64"),
            "group": pd.Series(scan.groups, dtype="int64"),
        }
    )
    for a, codes in scan.attr_codes.items():
        df[f"attr_{a}"] = pd.Series(codes, dtype="int64")
    prompts = scan.prompt_names or [c.replace("_", " ") for c in scan.classes]
    sha = hashlib.sha256(scan.index_file.read_bytes()).hexdigest()
    meta: dict[str, Any] = {
        "name": name,
        "classes": scan.classes,
        "attributes": scan.attributes,
        "spurious_attribute": scan.spurious_attribute,
        "protected_attribute": scan.protected_attribute,
        "group_by": scan.group_by,
        "group_names": scan.group_names,
        "minority_groups": scan.minority_groups,
        "splits": scan.split_counts(),
        "source": f"clipbias.data.folder: {scan.index_file.name} (sha256 {sha[:16]})",
        "folder": {"path": str(folder["path"]), "index": str(scan.index_file)},
    }
    if prompts != scan.classes:
        meta["class_prompt_names"] = prompts
    out = write_index(df, meta, dataset_root)
    log.info(
        "%s: %d images, %d classes, splits %s -> %s",
        name,
        len(df),
        len(scan.classes),
        meta["splits"],
        out,
    )
    return out
