"""Derived datasets: one dataset folder built from the prepared folders of others.

RefineCLIP's edit-locality settings (METHODS §5.8) classify over a task that no single
download is: Waterbirds' two bird classes plus the 18 ImageNet-R classes with the most
cartoon images as one 20-way task, or the 10 largest ImageNet-A classes. A registry entry
with a ``derive`` key (instead of ``files``/``adapter``) describes such a task::

    derive:
      components:
        - dataset: waterbirds              # every class and split
        - dataset: imagenet_r
          top_classes: 18                  # the 18 classes with the most files ...
          count_files: "cartoon_*"         # ... whose name matches this pattern
      holdout: {per_class: 10, from_split: test, to_split: train, seed: 0}

:func:`derive_index` reads each component's ``index.parquet``/``dataset.json`` (made by its
own adapter), keeps the chosen classes (and splits), and concatenates them:

* ``image_id`` = ``<component>/<image_id>``; ``path`` leads from the derived folder into the
  component's files (``../imagenet_r/extracted/...``); no image is copied.
* labels are renumbered in component order (classes keep their order inside a component);
  ``classes`` and ``class_prompt_names`` are the components' (a name may occur only once).
* attributes are the union of the components' (same name → same values, else an error);
  a row of a component without the attribute gets -1.
* groups keep each component's group ids, shifted past the groups of earlier components
  (``group_names`` concatenated, ``group_by`` empty); rows without a group stay -1. So a
  Waterbirds-first task keeps Waterbirds' 4 groups with their ids, and worst-group metrics
  are over them.
* ``holdout`` moves ``per_class`` rows of every class (seeded, uniformly) from one split to
  another, e.g. the few shots of a test-only dataset, so the shots are never scored.

Components must classify among their own classes (not CounterAnimal's ImageNet-1k space)
and give every image all classes as candidates (not GenderBias-VL).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.data.index import read_index, write_index
from clipbias.labels import classifier_class_names

log = logging.getLogger(__name__)


class DeriveError(ValueError):
    """A derived dataset cannot be built as specified; the message says what to change."""


def top_classes(index: pd.DataFrame, n: int, count_files: str = "*") -> list[int]:
    """Labels of the ``n`` classes with the most rows whose file name matches ``count_files``
    (fnmatch on the last path component), ties to the lower label; returned in label order."""
    names = index["path"].astype(str).map(posixpath.basename)
    match = names.map(lambda f: fnmatch.fnmatchcase(f, count_files)).to_numpy(bool)
    labels = index["label"].to_numpy(np.int64)
    present = np.unique(labels)
    counts = np.array([int(np.sum(match & (labels == c))) for c in present])
    if n > len(present):
        raise DeriveError(f"top_classes {n}: the dataset has only {len(present)} classes")
    order = np.lexsort((present, -counts))
    chosen = present[order[:n]]
    if counts[order[n - 1]] == 0:
        raise DeriveError(
            f"top_classes {n} with count_files {count_files!r}: fewer than {n} classes have a "
            "matching file; check the pattern"
        )
    return sorted(int(c) for c in chosen)


def _component_classes(meta: Mapping[str, Any], index: pd.DataFrame, spec: Mapping) -> list[int]:
    """Labels a component keeps (``classes`` xor ``top_classes`` is checked by the registry)."""
    if spec.get("classes"):
        names = list(meta["classes"])
        unknown = [c for c in spec["classes"] if c not in names]
        if unknown:
            raise DeriveError(
                f"component {spec['dataset']!r}: classes {unknown} are not among its classes "
                f"{names[:10]}{'...' if len(names) > 10 else ''}"
            )
        return sorted(names.index(c) for c in dict.fromkeys(spec["classes"]))
    if spec.get("top_classes"):
        return top_classes(index, int(spec["top_classes"]), spec.get("count_files") or "*")
    return list(range(len(meta["classes"])))


def _check_component(name: str, meta: Mapping[str, Any]) -> None:
    if (meta.get("classifier_classes") or "dataset") != "dataset":
        raise DeriveError(
            f"component {name!r} is classified among {meta['classifier_classes']} classes, "
            "not its own; it cannot be part of a derived task"
        )
    if meta.get("candidate_columns"):
        raise DeriveError(
            f"component {name!r} gives every image its own candidate classes; it cannot be "
            "part of a derived task"
        )


def holdout_split(
    df: pd.DataFrame, per_class: int, from_split: str, to_split: str, seed: int = 0
) -> pd.DataFrame:
    """Move ``per_class`` rows of every class from split ``from_split`` to ``to_split``
    (drawn uniformly without replacement with ``default_rng(seed)``, classes in label
    order). A class with too few rows in ``from_split`` is an error."""
    out = df.copy()
    rng = np.random.default_rng(int(seed))
    split = out["split"].to_numpy(object)
    labels = out["label"].to_numpy(np.int64)
    for c in np.unique(labels):
        pool = np.flatnonzero((labels == c) & (split == from_split))
        if len(pool) < per_class:
            raise DeriveError(
                f"holdout: class {int(c)} has {len(pool)} rows in split {from_split!r}, "
                f"{per_class} needed; lower per_class"
            )
        split[rng.choice(pool, size=int(per_class), replace=False)] = to_split
    out["split"] = split.astype(str)
    return out


def derive_index(
    name: str,
    spec: Mapping[str, Any],
    component_roots: Mapping[str, str | os.PathLike],
    out_root: str | os.PathLike,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(index, dataset.json) of the derived dataset ``name`` (module docstring) from the
    prepared folders ``component_roots`` {component name: folder}; paths are made relative
    to ``out_root``."""
    out_root = Path(out_root)
    frames, classes, prompts = [], [], []
    attributes: dict[str, list[str]] = {}
    spurious = protected = None
    group_names: list[str] = []
    minority: list[int] = []
    record = []
    for comp in spec["components"]:
        cname = comp["dataset"]
        if cname not in component_roots:
            raise DeriveError(f"no prepared folder given for component {cname!r}")
        root = Path(component_roots[cname])
        df, meta = read_index(root)
        _check_component(cname, meta)
        keep = _component_classes(meta, df, comp)
        rows = df[df["label"].isin(keep)]
        if comp.get("splits"):
            rows = rows[rows["split"].isin(list(comp["splits"]))]
        if rows.empty:
            raise DeriveError(f"component {cname!r}: no rows left after the class/split choice")
        relabel = {old: len(classes) + k for k, old in enumerate(keep)}
        names, pnames = list(meta["classes"]), classifier_class_names(meta)
        for old in keep:
            if names[old] in classes:
                raise DeriveError(
                    f"class name {names[old]!r} of component {cname!r} is already a class of an "
                    "earlier component; class names must be unique"
                )
            classes.append(names[old])
            prompts.append(pnames[old])
        for a, values in (meta.get("attributes") or {}).items():
            if a in attributes and attributes[a] != list(values):
                raise DeriveError(
                    f"attribute {a!r} has values {values} in {cname!r} but {attributes[a]} in an "
                    "earlier component"
                )
            attributes.setdefault(a, list(values))
        spurious = spurious or meta.get("spurious_attribute")
        protected = protected or meta.get("protected_attribute")
        offset = len(group_names)
        comp_groups = list(meta.get("group_names") or [])
        group_names += [f"{cname}: {g}" for g in comp_groups]
        minority += [offset + int(g) for g in meta.get("minority_groups") or []]
        prefix = posixpath.relpath(root.resolve().as_posix(), out_root.resolve().as_posix())
        group = rows["group"].to_numpy(np.int64)
        part = pd.DataFrame(
            {
                "image_id": cname + "/" + rows["image_id"].astype(str),
                "path": [posixpath.normpath(posixpath.join(prefix, p)) for p in rows["path"]],
                "split": rows["split"].astype(str).to_numpy(),
                "label": rows["label"].map(relabel).to_numpy(np.int64),
                "group": np.where((group >= 0) & bool(comp_groups), group + offset, -1),
            }
        )
        for a in (meta.get("attributes") or {}).keys():
            part[f"attr_{a}"] = rows[f"attr_{a}"].to_numpy(np.int64)
        frames.append(part)
        record.append({"dataset": cname, "classes": [names[k] for k in keep], "n": len(part)})
    df = pd.concat(frames, ignore_index=True)
    for a in attributes:  # NaN where a component lacks the attribute
        df[f"attr_{a}"] = df[f"attr_{a}"].fillna(-1).astype(np.int64)
    hold = spec.get("holdout")
    if hold:
        df = holdout_split(
            df, int(hold["per_class"]), hold["from_split"], hold["to_split"], hold.get("seed", 0)
        )
    meta_out: dict[str, Any] = {
        "name": name,
        "classes": classes,
        "class_prompt_names": prompts,
        "attributes": attributes,
        "spurious_attribute": spurious,
        "protected_attribute": protected,
        "group_by": [],
        "group_names": group_names,
        "minority_groups": minority,
        "splits": {str(k): int(v) for k, v in df["split"].value_counts(sort=False).items()},
        "source": "clipbias.data.derive.derive_index",
        "components": record,
    }
    if hold:
        meta_out["holdout"] = dict(hold)
    return df, meta_out


def build_derived(
    name: str,
    spec: Mapping[str, Any],
    component_roots: Mapping[str, str | os.PathLike],
    out_root: str | os.PathLike,
    *,
    check_files: bool = True,
) -> Path:
    """:func:`derive_index`, then validate and write ``out_root`` (atomically per file)."""
    df, meta = derive_index(name, spec, component_roots, out_root)
    log.info(
        "%s: %d images, %d classes from %s",
        name, len(df), len(meta["classes"]), [c["dataset"] for c in meta["components"]],
    )  # fmt: skip
    return write_index(df, meta, out_root, check_files=check_files)
