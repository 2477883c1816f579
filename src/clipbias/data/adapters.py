"""Adapters: unpacked raw dataset -> dataset folder (``index.parquet`` + ``dataset.json``).

Each adapter reads the layout folder of one dataset (``source``) and returns
``(index DataFrame, dataset.json dict)``. Images are not copied: ``path`` is relative to the
dataset folder (``dataset_root``) and may lead into the raw extraction, e.g.
``extracted/waterbird_complete95_forest2water2/001.Black_footed_Albatross/x.jpg``.
:func:`build_index` runs an adapter, validates and writes the result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipbias.data.index import write_index
from clipbias.data.registry import DatasetEntry

log = logging.getLogger(__name__)

AdapterResult = tuple[pd.DataFrame, dict[str, Any]]
Adapter = Callable[..., AdapterResult]

# torchvision ImageFolder's IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

WATERBIRDS_SPLITS = {0: "train", 1: "val", 2: "test"}  # [GDRO] cub_dataset.py split_dict
WATERBIRDS_PLACE_CATEGORIES = ["bamboo_forest", "forest", "lake", "ocean"]
CELEBA_SPLITS = {0: "train", 1: "val", 2: "test"}  # list_eval_partition.txt 0/1/2

# ImageNet-1k indices of the 200 classes, in sorted-wnid (= ImageFolder) order.
# Source: DATASETS.md §8, from hendrycks/imagenet-r eval.py and natural-adv-examples eval.py.
IMAGENET_R_1K_INDICES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97,
    99, 100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161,
    162, 163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245,
    247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293,
    296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340,
    341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407,
    413, 414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476,
    483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629,
    637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820, 824,
    833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945,
    947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
)  # fmt: skip
IMAGENET_A_1K_INDICES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96,
    97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254,
    277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319,
    323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402,
    404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472,
    483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569,
    572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677,
    682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779,
    780, 786, 792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850,
    859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945,
    947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
)  # fmt: skip


class AdapterError(ValueError):
    """The raw files do not look as the adapter expects; the message names file and column."""


# --------------------------------------------------------------------------- helpers


def _rel_prefix(source: Path, dataset_root: Path) -> str:
    """POSIX path of ``source`` relative to ``dataset_root`` ('' when identical)."""
    rel = os.path.relpath(Path(source).resolve(), Path(dataset_root).resolve())
    rel = rel.replace(os.sep, "/")
    return "" if rel == "." else rel + "/"


def _join(prefix: str, rel: pd.Series) -> pd.Series:
    rel = rel.astype(str).str.replace("\\", "/", regex=False).str.lstrip("/")
    return prefix + rel if prefix else rel


def _require_columns(df: pd.DataFrame, columns: Sequence[str], file: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AdapterError(f"{file}: missing column(s) {missing}; found {list(df.columns)}")


def _minority_by_count(group: np.ndarray, split: np.ndarray, n_groups: int) -> list[int]:
    """Groups with fewer than half the average train-split group size."""
    mask = split == "train"
    counts = np.bincount(group[mask & (group >= 0)], minlength=n_groups)
    if counts.sum() == 0:
        return []
    return [int(g) for g in np.flatnonzero(counts < 0.5 * counts.mean())]


def _split_counts(split: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in split.value_counts(sort=False).items()}


# --------------------------------------------------------------------------- waterbirds


def place_category(place_filename: str) -> str:
    """Places category of a Waterbirds ``place_filename`` (``/b/bamboo_forest/x.jpg`` -> bamboo_forest).

    The path is Places-style ``/<letter>/<category>[/<subcategory>]/<file>``; [LTC] reads
    ``split('/')[2]``. Returns '' when the path has no such component.
    """
    parts = [p for p in str(place_filename).split("/") if p]
    if len(parts) >= 3 and len(parts[0]) == 1:
        return parts[1]
    return parts[0] if len(parts) >= 2 else ""


def waterbirds(source: str | os.PathLike, dataset_root: str | os.PathLike) -> AdapterResult:
    """Waterbirds from ``metadata.csv`` (img_id,img_filename,y,split,place,place_filename).

    label = y (landbird, waterbird); attr_place = place (land, water); attr_place_category
    from place_filename; group = 2*y + place; minority groups [1, 2]; split 0/1/2 ->
    train/val/test.
    """
    source = Path(source)
    meta_file = source / "metadata.csv"
    if not meta_file.is_file():
        raise AdapterError(f"waterbirds: {meta_file} not found")
    raw = pd.read_csv(meta_file)
    _require_columns(raw, ["img_id", "img_filename", "y", "split", "place"], meta_file)
    for c in ("y", "place"):
        bad = ~raw[c].isin([0, 1])
        if bad.any():
            raise AdapterError(
                f"{meta_file}: column '{c}' must be 0/1; e.g. {raw.loc[bad, c].head(3).tolist()}"
            )
    bad = ~raw["split"].isin(list(WATERBIRDS_SPLITS))
    if bad.any():
        raise AdapterError(
            f"{meta_file}: column 'split' must be 0/1/2; e.g. {raw.loc[bad, 'split'].head(3).tolist()}"
        )

    y = raw["y"].astype("int64")
    place = raw["place"].astype("int64")
    if "place_filename" in raw.columns:
        cats = raw["place_filename"].map(place_category)
        lookup = {c: i for i, c in enumerate(WATERBIRDS_PLACE_CATEGORIES)}
        place_cat = cats.map(lambda c: lookup.get(c, -1)).astype("int64")
        unknown = sorted(set(cats[place_cat < 0]))
        if unknown:
            log.warning("waterbirds: unknown place categories %s -> -1", unknown[:5])
    else:
        place_cat = pd.Series(-1, index=raw.index, dtype="int64")

    df = pd.DataFrame(
        {
            "image_id": raw["img_id"].astype(str),
            "path": _join(_rel_prefix(source, Path(dataset_root)), raw["img_filename"]),
            "split": raw["split"].map(WATERBIRDS_SPLITS).astype(str),
            "label": y,
            "group": 2 * y + place,
            "attr_place": place,
            "attr_place_category": place_cat,
        }
    )
    meta = {
        "name": "waterbirds",
        "classes": ["landbird", "waterbird"],
        "attributes": {"place": ["land", "water"], "place_category": WATERBIRDS_PLACE_CATEGORIES},
        "spurious_attribute": "place",
        "protected_attribute": None,
        "group_by": ["label", "place"],
        "group_names": [
            "landbird on land",
            "landbird on water",
            "waterbird on land",
            "waterbird on water",
        ],
        "minority_groups": [1, 2],
        "splits": _split_counts(df["split"]),
        "source": "clipbias.data.adapters.waterbirds (metadata.csv, Sagawa et al. 2020)",
    }
    return df, meta


# --------------------------------------------------------------------------- celeba


def _read_celeba_attrs(source: Path) -> pd.DataFrame:
    txt, csv = source / "list_attr_celeba.txt", source / "list_attr_celeba.csv"
    if txt.is_file():
        with open(txt) as f:
            f.readline()  # image count
            names = f.readline().split()
        df = pd.read_csv(txt, sep=r"\s+", skiprows=2, header=None, names=["image_id", *names])
    elif csv.is_file():  # Kaggle / WILDS variant
        df = pd.read_csv(csv)
    else:
        raise AdapterError(f"celeba: neither {txt} nor {csv} found")
    return df


def _read_celeba_partition(source: Path) -> pd.DataFrame:
    txt, csv = source / "list_eval_partition.txt", source / "list_eval_partition.csv"
    if txt.is_file():
        return pd.read_csv(txt, sep=r"\s+", header=None, names=["image_id", "partition"])
    if csv.is_file():
        return pd.read_csv(csv)
    raise AdapterError(f"celeba: neither {txt} nor {csv} found")


def _attr_values(attr: str) -> list[str]:
    return ["female", "male"] if attr == "Male" else [f"not_{attr.lower()}", attr.lower()]


def celeba(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    target: str = "Blond_Hair",
    attribute: str = "Male",
    extra_attributes: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    minority_groups: Sequence[int] | None = None,
    image_dir: str = "img_align_celeba",
) -> AdapterResult:
    """CelebA from ``list_attr_celeba.txt`` + ``list_eval_partition.txt`` (or the Kaggle CSVs).

    label = ``target`` (±1 -> 0/1), ``attr_<attribute>`` (default Male: female/male),
    group = 2*label + attribute. ``extra_attributes`` become more ``attr_`` columns.
    Minority groups default to the groups with fewer than half the average train group size
    (Blond_Hair/Male: [3], blond males).
    """
    source = Path(source)
    attrs = _read_celeba_attrs(source)
    part = _read_celeba_partition(source)
    attr_file = source / "list_attr_celeba.txt"
    for name in (target, attribute, *extra_attributes):
        if name not in attrs.columns:
            raise AdapterError(
                f"celeba: attribute '{name}' not in {attr_file.name}; have {list(attrs.columns[1:])}"
            )
    _require_columns(part, ["image_id", "partition"], source / "list_eval_partition.txt")
    df = attrs.merge(part, on="image_id", how="left", validate="one_to_one")
    missing = df["partition"].isna()
    if missing.any():
        raise AdapterError(
            f"celeba: {int(missing.sum())} image(s) have no partition, e.g. "
            f"{df.loc[missing, 'image_id'].head(3).tolist()}"
        )
    bad = ~df["partition"].isin(list(CELEBA_SPLITS))
    if bad.any():
        raise AdapterError("celeba: column 'partition' must be 0/1/2")

    def binary(name: str) -> pd.Series:
        col = df[name]
        badv = ~col.isin([-1, 1, 0])
        if badv.any():
            raise AdapterError(
                f"celeba: column '{name}' must be -1/1; e.g. {col[badv].head(3).tolist()}"
            )
        return (col == 1).astype("int64")

    label = binary(target)
    a = binary(attribute)
    attr_key = attribute.lower()
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str),
            "path": _join(
                _rel_prefix(source, Path(dataset_root)),
                image_dir + "/" + df["image_id"].astype(str),
            ),
            "split": df["partition"].astype("int64").map(CELEBA_SPLITS).astype(str),
            "label": label,
            "group": 2 * label + a,
            f"attr_{attr_key}": a,
        }
    )
    attributes = {attr_key: _attr_values(attribute)}
    for name in extra_attributes:
        if name.lower() in attributes:
            continue
        out[f"attr_{name.lower()}"] = binary(name)
        attributes[name.lower()] = _attr_values(name)
    cls = list(classes) if classes is not None else _attr_values(target)
    a0, a1 = attributes[attr_key]
    c0, c1 = cls
    if minority_groups is None:
        minority_groups = _minority_by_count(out["group"].to_numpy(), out["split"].to_numpy(), 4)
    meta = {
        "name": "celeba",
        "classes": cls,
        "attributes": attributes,
        "spurious_attribute": attr_key,
        "protected_attribute": attr_key if attribute == "Male" else None,
        "group_by": ["label", attr_key],
        "group_names": [f"{c0} {a0}", f"{c0} {a1}", f"{c1} {a0}", f"{c1} {a1}"],
        "minority_groups": [int(g) for g in minority_groups],
        "splits": _split_counts(out["split"]),
        "target": target,
        "source": f"clipbias.data.adapters.celeba (target {target}, attribute {attribute})",
    }
    return out, meta


# --------------------------------------------------------------------------- ImageNet-R / -A


def image_folder(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    name: str,
    split: str = "test",
    imagenet_1k_indices: Sequence[int] | None = None,
) -> AdapterResult:
    """A torchvision-ImageFolder layout (``<class folder>/<image>``), classes in sorted order.

    Class names are the folder names (wnids). Non-folder entries at the top (README files)
    and non-image files are skipped. When the folder count matches ``imagenet_1k_indices``,
    ``dataset.json`` records the ImageNet-1k index of every class.
    """
    source = Path(source)
    if not source.is_dir():
        raise AdapterError(f"{name}: folder {source} not found")
    classes = sorted(
        e.name for e in os.scandir(source) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise AdapterError(f"{name}: no class folders in {source}")
    rel, labels = [], []
    for i, c in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(source / c, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    p = Path(dirpath, fn).relative_to(source).as_posix()
                    rel.append(p)
                    labels.append(i)
    if not rel:
        raise AdapterError(f"{name}: no images under {source}")
    rel_s = pd.Series(rel, dtype=str)
    label = pd.Series(labels, dtype="int64")
    df = pd.DataFrame(
        {
            "image_id": rel_s,
            "path": _join(_rel_prefix(source, Path(dataset_root)), rel_s),
            "split": split,
            "label": label,
            "group": pd.Series(-1, index=label.index, dtype="int64"),
        }
    )
    meta: dict[str, Any] = {
        "name": name,
        "classes": classes,
        "attributes": {},
        "spurious_attribute": None,
        "protected_attribute": None,
        "group_by": [],
        "group_names": [],
        "minority_groups": [],
        "splits": _split_counts(df["split"]),
        "source": f"clipbias.data.adapters.image_folder ({name})",
    }
    if imagenet_1k_indices is not None:
        if len(imagenet_1k_indices) == len(classes):
            meta["imagenet_1k_indices"] = [int(i) for i in imagenet_1k_indices]
        else:
            log.warning(
                "%s: %d class folders but %d known ImageNet-1k indices; not recording them",
                name,
                len(classes),
                len(imagenet_1k_indices),
            )
    return df, meta


def imagenet_r(source: str | os.PathLike, dataset_root: str | os.PathLike) -> AdapterResult:
    """ImageNet-R: ``imagenet-r/<wnid>/<file>.jpg``, 200 classes, test split."""
    return image_folder(
        source, dataset_root, name="imagenet_r", imagenet_1k_indices=IMAGENET_R_1K_INDICES
    )


def imagenet_a(source: str | os.PathLike, dataset_root: str | os.PathLike) -> AdapterResult:
    """ImageNet-A: ``imagenet-a/<wnid>/<file>.jpg``, 200 classes, test split."""
    return image_folder(
        source, dataset_root, name="imagenet_a", imagenet_1k_indices=IMAGENET_A_1K_INDICES
    )


# --------------------------------------------------------------------------- registry glue

ADAPTERS: dict[str, Adapter] = {
    "waterbirds": waterbirds,
    "celeba": celeba,
    "imagenet_r": imagenet_r,
    "imagenet_a": imagenet_a,
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise NotImplementedError(
            f"no adapter '{name}' yet; implemented: {', '.join(sorted(ADAPTERS))}"
        ) from None


def build_index(
    entry: DatasetEntry | str,
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    check_files: bool = True,
    **options: Any,
) -> Path:
    """Run the adapter of ``entry`` on ``source`` and write the dataset folder ``dataset_root``.

    ``entry`` is a registry entry (its ``adapter`` and ``adapter_options`` are used; ``options``
    override them) or an adapter name. Returns the path of ``index.parquet``.
    """
    if isinstance(entry, DatasetEntry):
        name, opts = entry.adapter, {**entry.adapter_options, **options}
    else:
        name, opts = entry, dict(options)
    df, meta = get_adapter(name)(Path(source), Path(dataset_root), **opts)
    return write_index(df, meta, dataset_root, check_files=check_files)


def adapter_names() -> list[str]:
    return sorted(ADAPTERS)
