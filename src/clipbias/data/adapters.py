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
import re
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
    protocol: str | None = None,
) -> AdapterResult:
    """CelebA from ``list_attr_celeba.txt`` + ``list_eval_partition.txt`` (or the Kaggle CSVs).

    label = ``target`` (±1 -> 0/1), ``attr_<attribute>`` (default Male: female/male),
    group = 2*label + attribute. ``extra_attributes`` become more ``attr_`` columns.
    Minority groups default to the groups with fewer than half the average train group size
    (Blond_Hair/Male: [3], blond males). ``protocol`` (a key of :data:`CELEBA_PROTOCOLS`)
    sets target, attribute, class names and prompt names of that protocol instead; an index
    built for one protocol is re-targeted to another by :func:`celeba_protocol_view`.
    """
    source = Path(source)
    prompt_names = None
    if protocol is not None:
        if protocol not in CELEBA_PROTOCOLS:
            raise AdapterError(
                f"unknown CelebA protocol {protocol!r}; known: {sorted(CELEBA_PROTOCOLS)}"
            )
        spec = CELEBA_PROTOCOLS[protocol]
        target, attribute = spec["target"], spec["attribute"]
        classes, prompt_names = spec["classes"], spec["class_prompt_names"]
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
    if prompt_names is not None:
        meta["class_prompt_names"] = list(prompt_names)
        meta["protocol"] = protocol
    return out, meta


# CelebA protocols (METHODS §2.2, §8, §9 #16). "ltc_blond_hair": the LTC code's setup (and the
# spurious-correlation literature's): target Blond_Hair, groups hair x Male. "refineclip_young":
# RefineCLIP Table 2, classes "old"/"young" from the Young attribute; the paper leaves the
# groups undefined, METHODS §9 #16 fixes them as age x Male [RECON].
CELEBA_PROTOCOLS: dict[str, dict[str, Any]] = {
    "ltc_blond_hair": {
        "target": "Blond_Hair",
        "attribute": "Male",
        "classes": ["not_blond_hair", "blond_hair"],
        "class_prompt_names": ["person with dark hair", "person with blond hair"],
    },
    "refineclip_young": {
        "target": "Young",
        "attribute": "Male",
        "classes": ["old", "young"],
        "class_prompt_names": ["old", "young"],
    },
}


def celeba_protocol_view(
    df: pd.DataFrame, meta: dict[str, Any], protocol: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Re-target a CelebA index (or feature-shard index columns) to one of :data:`CELEBA_PROTOCOLS`.

    Needs the protocol's target and attribute as columns: ``label`` when the index was built
    with that target, else ``attr_<target lower>`` (the registry builds CelebA with target
    Blond_Hair and ``extra_attributes: [Young]``, so one extraction serves both protocols).
    Returns a new ``(df, meta)``: ``label`` = target, ``attr_<attribute>``, ``group =
    2 * label + attribute``, the previous label kept as ``attr_<previous target>``, class and
    group names of the protocol, minority groups by the train-split count rule.
    """
    if protocol not in CELEBA_PROTOCOLS:
        raise AdapterError(
            f"unknown CelebA protocol {protocol!r}; known: {', '.join(sorted(CELEBA_PROTOCOLS))}"
        )
    spec = CELEBA_PROTOCOLS[protocol]
    target, attribute = spec["target"], spec["attribute"]
    t_key, a_key = target.lower(), attribute.lower()
    old_target = str(meta.get("target", ""))
    attrs = dict(meta.get("attributes") or {})
    out = df.copy()
    if old_target != target:
        if f"attr_{t_key}" not in out.columns:
            raise AdapterError(
                f"celeba protocol {protocol!r} needs column 'attr_{t_key}' (or an index built "
                f"with target {target}); rebuild CelebA with extra_attributes: [{target}]"
            )
        if old_target:
            out[f"attr_{old_target.lower()}"] = out["label"].astype("int64")
            attrs[old_target.lower()] = _attr_values(old_target)
        out["label"] = out.pop(f"attr_{t_key}").astype("int64")
        attrs.pop(t_key, None)
    if f"attr_{a_key}" not in out.columns:
        raise AdapterError(f"celeba protocol {protocol!r} needs column 'attr_{a_key}'")
    out["group"] = 2 * out["label"].astype("int64") + out[f"attr_{a_key}"].astype("int64")
    c0, c1 = spec["classes"]
    a0, a1 = attrs.get(a_key, _attr_values(attribute))
    attrs[a_key] = [a0, a1]
    minority = (
        _minority_by_count(out["group"].to_numpy(), out["split"].to_numpy(), 4)
        if "split" in out.columns
        else []
    )
    new_meta = {
        **meta,
        "classes": list(spec["classes"]),
        "class_prompt_names": list(spec["class_prompt_names"]),
        "attributes": attrs,
        "spurious_attribute": a_key,
        "protected_attribute": a_key if attribute == "Male" else None,
        "group_by": ["label", a_key],
        "group_names": [f"{c0} {a0}", f"{c0} {a1}", f"{c1} {a0}", f"{c1} {a1}"],
        "minority_groups": [int(g) for g in minority],
        "target": target,
        "protocol": protocol,
    }
    return out, new_meta


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
    and non-image files are skipped. When every folder is an ImageNet-1k wnid
    (``resources/imagenet_wnids.txt``), ``dataset.json`` records each class's ImageNet-1k
    index (``imagenet_1k_indices``) and its readable name (``class_prompt_names``, from
    ``resources/imagenet_classnames.txt``), so the zero-shot prompts say "a photo of a
    goldfish", not "a photo of a n01443537". ``imagenet_1k_indices`` (the published list of
    the dataset's 200 classes) is a cross-check: a folder set of that size that maps to other
    indices is not the dataset it claims to be.
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
    wnid_index = imagenet_wnid_index()
    unknown = [c for c in classes if c not in wnid_index]
    if unknown:
        log.warning(
            "%s: %d class folder(s) are not ImageNet-1k wnids (e.g. %s); prompts use the folder "
            "names", name, len(unknown), unknown[:3],
        )  # fmt: skip
        return df, meta
    indices = [wnid_index[c] for c in classes]
    if (
        imagenet_1k_indices is not None
        and len(imagenet_1k_indices) == len(classes)
        and list(imagenet_1k_indices) != indices
    ):
        raise AdapterError(
            f"{name}: the {len(classes)} class folders of {source} are not the dataset's "
            "published class list (their ImageNet-1k indices differ); check the download"
        )
    from clipbias.labels import imagenet_class_names

    names = imagenet_class_names()
    meta["imagenet_1k_indices"] = indices
    meta["class_prompt_names"] = [names[i] for i in indices]
    return df, meta


def imagenet_wnid_index() -> dict[str, int]:
    """ImageNet-1k wnid -> class index (``resources/imagenet_wnids.txt``)."""
    from clipbias.methods.heads import load_resource_lines

    wnids = load_resource_lines("imagenet_wnids.txt")
    if len(wnids) != 1000:
        raise AdapterError(f"resources/imagenet_wnids.txt has {len(wnids)} wnids, not 1000")
    return {w: i for i, w in enumerate(wnids)}


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


# --------------------------------------------------------------------------- CounterAnimal

_CA_CLASS_DIR = re.compile(r"^(\d+) (.+)$")


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, sorted), relative to ``folder`` (POSIX)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                out.append(Path(dirpath, fn).relative_to(folder).as_posix())
    return out


def counteranimal(source: str | os.PathLike, dataset_root: str | os.PathLike) -> AdapterResult:
    """CounterAnimal: ``<ImageNet index> <name>/{common-<bg>,counter-<bg>}/<image>``.

    One folder per class named ``"<ImageNet-1k index> <class name>"`` holding exactly one
    subfolder whose name contains ``common`` and one containing ``counter`` (the reference
    loader's layout, METHODS §8). Classes are ordered by ImageNet index; ``label`` is the
    position among the dataset's classes (45 in the release) and ``dataset.json``
    ``imagenet_1k_indices[label]`` is the ImageNet-1k index, so the 1,000-way ImageNet
    classifier can be used (METHODS §4.8): logits over 1,000 classes, prediction correct when
    ``argmax == imagenet_1k_indices[label]``. ``attr_background`` (common, counter) is also the
    split (``common``: locate, ``counter``: test, METHODS §4.2); ``attr_background_name`` is
    the background word after the dash (``common-grass`` -> grass). Loose files at the top
    (``imagenet_names.txt``) are ignored.
    """
    source = Path(source)
    if not source.is_dir():
        raise AdapterError(f"counteranimal: folder {source} not found")
    class_dirs = []
    for e in sorted(os.scandir(source), key=lambda e: e.name):
        if not e.is_dir() or e.name.startswith("."):
            continue
        m = _CA_CLASS_DIR.match(e.name)
        if not m:
            raise AdapterError(
                f"counteranimal: folder {source / e.name} is not named "
                "'<ImageNet index> <class name>' (e.g. '100 black swan')"
            )
        class_dirs.append((int(m.group(1)), m.group(2).strip(), e.name))
    if not class_dirs:
        raise AdapterError(f"counteranimal: no class folders in {source}")
    class_dirs.sort()
    dup = sorted({i for i, _, _ in class_dirs if [c[0] for c in class_dirs].count(i) > 1})
    if dup:
        raise AdapterError(f"counteranimal: ImageNet index used by several folders: {dup}")
    bg_names: list[str] = []
    rows = []
    for label, (_, _, folder) in enumerate(class_dirs):
        subdirs = [e.name for e in os.scandir(source / folder) if e.is_dir()]
        for b, kind in enumerate(("common", "counter")):
            found = sorted(d for d in subdirs if kind in d.lower())
            if len(found) != 1:
                raise AdapterError(
                    f"counteranimal: {source / folder} must hold exactly one subfolder whose "
                    f"name contains '{kind}'; found {found or 'none'} among {sorted(subdirs)}"
                )
            sub = found[0]
            bg = sub.split("-", 1)[1].strip() if "-" in sub else sub
            if bg not in bg_names:
                bg_names.append(bg)
            files = _image_files(source / folder / sub)
            if not files:
                raise AdapterError(f"counteranimal: no images in {source / folder / sub}")
            for f in files:
                rows.append((f"{folder}/{sub}/{f}", label, b, bg))
    bg_names.sort()
    bg_index = {b: i for i, b in enumerate(bg_names)}
    rel = pd.Series([r[0] for r in rows], dtype=str)
    label = pd.Series([r[1] for r in rows], dtype="int64")
    background = pd.Series([r[2] for r in rows], dtype="int64")
    df = pd.DataFrame(
        {
            "image_id": rel,
            "path": _join(_rel_prefix(source, Path(dataset_root)), rel),
            "split": background.map({0: "common", 1: "counter"}).astype(str),
            "label": label,
            "group": 2 * label + background,
            "attr_background": background,
            "attr_background_name": pd.Series([bg_index[r[3]] for r in rows], dtype="int64"),
        }
    )
    classes = [name for _, name, _ in class_dirs]
    prompt_names = [name.replace("_", " ") for name in classes]
    meta = {
        "name": "counteranimal",
        "classes": classes,
        "class_prompt_names": prompt_names,
        "imagenet_1k_indices": [i for i, _, _ in class_dirs],
        "classifier_classes": "imagenet_1k",
        "attributes": {"background": ["common", "counter"], "background_name": bg_names},
        "spurious_attribute": "background",
        "protected_attribute": None,
        "group_by": ["label", "background"],
        "group_names": [f"{c} {b}" for c in classes for b in ("common", "counter")],
        "minority_groups": [2 * c + 1 for c in range(len(classes))],
        "splits": _split_counts(df["split"]),
        "source": "clipbias.data.adapters.counteranimal (Wang et al. 2024, LAION-final layout)",
    }
    return df, meta


# --------------------------------------------------------------------------- GenderBias-VL

# METHODS Appendix C: the 25 locate occupations of the LTC code ("val" there).
GENDERBIAS_LOCATE_OCCUPATIONS = (
    "Supervisor of personal care and service workers",
    "Printing press operator",
    "Public relations specialist",
    "Fast food and counter worker",
    "Logistician",
    "Artist",
    "Food service manager",
    "Translator",
    "Loan officer",
    "Ophthalmic medical technician",
    "Paralegal",
    "Psychiatric technician",
    "Medical assistant",
    "Supervisor of transportation and material moving workers",
    "First-line supervisor of office and administrative support workers",
    "Computer hardware engineer",
    "Management analyst",
    "Accountant",
    "Operations research analyst",
    "Computer numerically controlled tool operator",
    "Phlebotomist",
    "Secondary school teacher",
    "Entertainment and recreation manager",
    "Social and community service manager",
    "Occupational health and safety specialist",
)
GENDERBIAS_GENDERS = ("female", "male")  # folder names; attr_gender 0 = female, 1 = male
GENDERBIAS_PAIR_COLUMNS = ("job_male", "job_female", "job_male_ratio", "job_female_ratio")


def occupation_counterparts(pairs: pd.DataFrame) -> dict[str, str]:
    """Each occupation's gender counterpart from the pairing table (METHODS Appendix C).

    ``pairs`` has one row per candidate pair ``(job_male, job_female)`` with workforce
    percentages ``job_male_ratio`` and ``job_female_ratio``, both read as the *female* share
    (as the reference code does). A job listed as male-dominated gets the ``job_female`` of
    its row with the highest ``job_female_ratio``; a job listed as female-dominated gets the
    ``job_male`` of its row with the lowest ``job_male_ratio`` (the most stereotyped
    counterpart either way). Ties go to the first row in file order. A job listed in both
    columns takes its female-dominated counterpart (the reference overwrites in that order).
    """
    missing = [c for c in GENDERBIAS_PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise AdapterError(
            f"pairing table: missing column(s) {missing}; found {list(pairs.columns)}"
        )
    df = pairs.reset_index(drop=True)
    for c in ("job_male_ratio", "job_female_ratio"):
        df[c] = pd.to_numeric(df[c], errors="raise")
    both = sorted(set(df["job_male"]) & set(df["job_female"]))
    if both:
        log.warning("pairing table: %d job(s) in both columns, e.g. %s", len(both), both[:3])
    out: dict[str, str] = {}
    for job, rows in df.groupby("job_male", sort=False):
        out[str(job)] = str(df.at[rows["job_female_ratio"].idxmax(), "job_female"])
    for job, rows in df.groupby("job_female", sort=False):
        out[str(job)] = str(df.at[rows["job_male_ratio"].idxmin(), "job_male"])
    return out


def genderbias_vl(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    image_dir: str = "xl_generate_base",
    pairs_file: str = "occ_merge_filter_sim.csv",
    locate_occupations: Sequence[str] = GENDERBIAS_LOCATE_OCCUPATIONS,
) -> AdapterResult:
    """GenderBias-VL: ``<image_dir>/<Occupation_with_underscores>/{female,male}/<image>``.

    Occupation names are the folder names with ``_`` -> space. Occupations lacking either
    gender folder (or images in it) are dropped, and so are occupations the pairing table
    (``pairs_file``, METHODS Appendix C) does not list. ``classes`` are all occupations of the
    table plus the kept folders, sorted; ``label`` is the image's occupation; the per-image
    two-way classifier is ``[label, attr_counterpart]`` (METHODS §2.3: the image's own
    occupation and its gender counterpart, :func:`occupation_counterparts`), recorded in
    ``dataset.json`` as ``candidate_columns``. ``attr_gender`` (female, male); ``group = 2 *
    label + gender``. Split ``locate`` = the 25 occupations of Appendix C, ``test`` = the rest.
    """
    source = Path(source)
    images = source / image_dir
    pairs_path = source / pairs_file
    if not images.is_dir():
        raise AdapterError(f"genderbias_vl: image folder {images} not found")
    if not pairs_path.is_file():
        raise AdapterError(
            f"genderbias_vl: pairing table {pairs_path} not found (the registry downloads it "
            "next to the images; see config/datasets.yaml)"
        )
    counterpart = occupation_counterparts(pd.read_csv(pairs_path))
    kept: dict[str, dict[str, list[str]]] = {}
    dropped_gender, dropped_unpaired = [], []
    for e in sorted(os.scandir(images), key=lambda e: e.name):
        if not e.is_dir() or e.name.startswith("."):
            continue
        occ = e.name.replace("_", " ")
        files = {
            g: _image_files(images / e.name / g) if (images / e.name / g).is_dir() else []
            for g in GENDERBIAS_GENDERS
        }
        if not all(files.values()):
            dropped_gender.append(occ)
            continue
        if occ not in counterpart:
            dropped_unpaired.append(occ)
            continue
        kept[occ] = {g: [f"{e.name}/{g}/{f}" for f in fs] for g, fs in files.items()}
    if dropped_gender:
        log.info(
            "genderbias_vl: %d occupation(s) lack a gender: %s",
            len(dropped_gender),
            dropped_gender[:5],
        )
    if dropped_unpaired:
        log.warning(
            "genderbias_vl: %d occupation(s) not in %s, dropped: %s",
            len(dropped_unpaired),
            pairs_file,
            dropped_unpaired[:5],
        )
    if not kept:
        raise AdapterError(f"genderbias_vl: no occupation with both genders under {images}")
    classes = sorted(set(counterpart) | set(counterpart.values()) | set(kept))
    cidx = {c: i for i, c in enumerate(classes)}
    locate = set(locate_occupations)
    missing_locate = sorted(locate - set(kept))
    if missing_locate:
        log.warning(
            "genderbias_vl: %d locate occupation(s) not present: %s",
            len(missing_locate),
            missing_locate[:5],
        )
    rel, label, gender, other, split = [], [], [], [], []
    for occ, by_gender in kept.items():
        for g, files in by_gender.items():
            rel += files
            label += [cidx[occ]] * len(files)
            gender += [GENDERBIAS_GENDERS.index(g)] * len(files)
            other += [cidx[counterpart[occ]]] * len(files)
            split += ["locate" if occ in locate else "test"] * len(files)
    rel_s = pd.Series(rel, dtype=str)
    label_s = pd.Series(label, dtype="int64")
    gender_s = pd.Series(gender, dtype="int64")
    df = pd.DataFrame(
        {
            "image_id": rel_s,
            "path": _join(_rel_prefix(images, Path(dataset_root)), rel_s),
            "split": pd.Series(split, dtype=str),
            "label": label_s,
            "group": 2 * label_s + gender_s,
            "attr_gender": gender_s,
            "attr_counterpart": pd.Series(other, dtype="int64"),
        }
    )
    meta = {
        "name": "genderbias_vl",
        "classes": classes,
        "class_prompt_names": list(classes),
        "attributes": {"gender": list(GENDERBIAS_GENDERS), "counterpart": list(classes)},
        "spurious_attribute": "gender",
        "protected_attribute": "gender",
        "group_by": ["label", "gender"],
        "group_names": [f"{c} {g}" for c in classes for g in GENDERBIAS_GENDERS],
        "minority_groups": [],
        "candidate_columns": ["label", "attr_counterpart"],
        # LTC locates on the worse gender of the 10 most biased locate occupations (§4.4)
        "ltc_locate": {"policy": "worst_gender", "attribute": "gender", "top_k": 10},
        "counterparts": {occ: counterpart[occ] for occ in sorted(kept)},
        "locate_occupations": sorted(locate & set(kept)),
        "splits": _split_counts(df["split"]),
        "source": f"clipbias.data.adapters.genderbias_vl ({image_dir}, pairs {pairs_file})",
    }
    return df, meta


# --------------------------------------------------------------------------- FairFace

# Value order of the LTC FairFace loader for age and race [CODE]; gender female/male as in
# the other datasets. CSV spellings [FF-HFSCRIPT].
FAIRFACE_VALUES: dict[str, list[str]] = {
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
    "gender": ["Female", "Male"],
    "race": [
        "White",
        "Latino_Hispanic",
        "Indian",
        "East Asian",
        "Black",
        "Southeast Asian",
        "Middle Eastern",
    ],
}
# LTC retrieval concepts and template for MaxSkew@1000 (METHODS §2.2).
FAIRFACE_CONCEPTS = (
    "good", "evil", "smart", "dumb", "attractive", "unattractive", "lawful", "criminal",
    "friendly", "unfriendly",
)  # fmt: skip


def _value_name(attr: str, value: str) -> str:
    return value.lower().replace("_", " ") if attr != "age" else value


def fairface(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    splits: Sequence[str] = ("val",),
    label_attribute: str = "gender",
) -> AdapterResult:
    """FairFace from ``fairface_label_<split>.csv`` (``file,age,gender,race,service_test``).

    ``file`` is the image path relative to the unpacked folder (``val/1.jpg``). Attributes
    ``attr_age`` (9 bins), ``attr_gender`` (female, male), ``attr_race`` (7 groups), value
    names lower-case with spaces; ``label`` = ``label_attribute`` (default gender, the
    attribute of the gender classifier and of MaxSkew), ``group`` = gender. Only the
    validation CSV is indexed by default (the LTC protocol evaluates on it, METHODS §4.2);
    the split is named ``val``. ``dataset.json`` also lists the LTC retrieval concepts.
    """
    source = Path(source)
    if label_attribute not in FAIRFACE_VALUES:
        raise AdapterError(
            f"fairface: label_attribute must be one of {sorted(FAIRFACE_VALUES)}, "
            f"got {label_attribute!r}"
        )
    frames = []
    for split in splits:
        csv = source / f"fairface_label_{split}.csv"
        if not csv.is_file():
            raise AdapterError(f"fairface: {csv} not found (splits are 'train' and 'val')")
        raw = pd.read_csv(csv, dtype=str)
        _require_columns(raw, ["file", "age", "gender", "race"], csv)
        part = pd.DataFrame({"image_id": raw["file"].astype(str), "split": split})
        for attr, values in FAIRFACE_VALUES.items():
            lookup = {v: i for i, v in enumerate(values)}
            col = raw[attr].astype(str).str.strip()
            idx = col.map(lookup)
            bad = idx.isna()
            if bad.any():
                raise AdapterError(
                    f"{csv}: column '{attr}' has unknown value(s) "
                    f"{sorted(col[bad].unique())[:5]}; expected {values}"
                )
            part[f"attr_{attr}"] = idx.astype("int64")
        frames.append(part)
    df = pd.concat(frames, ignore_index=True)
    df.insert(1, "path", _join(_rel_prefix(source, Path(dataset_root)), df["image_id"]))
    df.insert(3, "label", df[f"attr_{label_attribute}"].astype("int64"))
    df.insert(4, "group", df["attr_gender"].astype("int64"))
    attributes = {a: [_value_name(a, v) for v in values] for a, values in FAIRFACE_VALUES.items()}
    meta = {
        "name": "fairface",
        "classes": list(attributes[label_attribute]),
        "class_prompt_names": list(attributes[label_attribute]),
        "attributes": attributes,
        "spurious_attribute": None,
        "protected_attribute": "gender",
        "group_by": ["gender"],
        "group_names": list(attributes["gender"]),
        "minority_groups": [],
        "retrieval_concepts": list(FAIRFACE_CONCEPTS),
        "retrieval_template": "A photo of a {} person",
        "splits": _split_counts(df["split"]),
        "source": "clipbias.data.adapters.fairface (fairface_label_<split>.csv, padding 1.25)",
    }
    return df, meta


# --------------------------------------------------------------------------- FACET

FACET_GENDER_COLUMNS = (  # -> attr_gender values feminine, masculine, non_binary
    "gender_presentation_fem",
    "gender_presentation_masc",
    "gender_presentation_non_binary",
)
FACET_AGE_COLUMNS = ("age_presentation_young", "age_presentation_middle", "age_presentation_older")
FACET_REQUIRED = (
    "person_id", "filename", "class1", "bounding_box",
    *FACET_GENDER_COLUMNS, "gender_presentation_na", *FACET_AGE_COLUMNS, "age_presentation_na",
)  # fmt: skip


def facet_presentation(counts: np.ndarray, na: np.ndarray) -> np.ndarray:
    """Value index per row from FACET's one-column-per-value annotation, or -1 (unknown).

    ``counts`` [N, V] holds the 0/1 flags (or annotator counts) of the V values, ``na`` [N]
    the "not applicable / cannot tell" column. A row gets value v when v alone has the
    largest count, that count is positive and exceeds ``na``; otherwise -1 (unknown, kept in
    the index, excluded by the metrics; METHODS §6.1).
    """
    counts = np.asarray(counts, dtype=np.float64)
    na = np.asarray(na, dtype=np.float64)
    best = counts.max(axis=1)
    arg = counts.argmax(axis=1)
    unique = (counts == best[:, None]).sum(axis=1) == 1
    ok = unique & (best > 0) & (best > na)
    return np.where(ok, arg, -1).astype(np.int64)


def stratified_split(
    strata: Sequence[Any] | np.ndarray,
    seed: int,
    names: tuple[str, str] = ("locate", "evaluate"),
    fraction: float = 0.5,
) -> np.ndarray:
    """Assign each row to ``names[0]`` or ``names[1]``, ``fraction`` of every stratum to the first.

    Within each stratum (equal values of ``strata``) the rows are shuffled with
    ``numpy.random.default_rng(seed)`` and the first ``round(fraction * n)`` go to
    ``names[0]``; with ``fraction`` 0.5 an odd stratum's extra row goes to either half by a
    seeded coin, so both halves keep the same expected size. Deterministic for a given seed
    and row order (strata are visited in sorted key order).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    keys = pd.Series(list(strata) if not isinstance(strata, np.ndarray) else strata)
    codes, uniques = pd.factorize(keys.astype(str), sort=True)
    rng = np.random.default_rng(seed)
    first = np.zeros(len(keys), dtype=bool)
    for k in range(len(uniques)):
        rows = np.flatnonzero(codes == k)
        perm = rng.permutation(rows)
        exact = fraction * len(rows)
        n_first = int(np.floor(exact))
        if exact - n_first > 0 and rng.random() < exact - n_first:
            n_first += 1
        first[perm[:n_first]] = True
    return np.where(first, names[0], names[1])


def load_facet_professions(spec: str | os.PathLike | Sequence[str] | None) -> dict[str, Any]:
    """The profession rule: ``{"classes": [52], "professions": [kept], "dropped": [...]}``.

    ``spec`` is the YAML written as ``config/facet_professions.yaml`` (a relative path is taken
    from the working directory, the workflow root) or an explicit list of kept classes.
    """
    import yaml

    if spec is None:
        raise AdapterError(
            "facet: no profession list; pass professions=<path to config/facet_professions.yaml>"
        )
    if not isinstance(spec, str | os.PathLike):
        kept = [str(c) for c in spec]
        return {"classes": kept, "professions": kept, "dropped": [], "rule": "explicit list"}
    path = Path(spec)
    if not path.is_file():
        raise AdapterError(
            f"facet: profession list {path} not found (relative to {Path.cwd()}); run from the "
            "workflow root or give an absolute path"
        )
    data = yaml.safe_load(path.read_text())
    for key in ("classes", "professions", "dropped"):
        if not isinstance(data.get(key), list):
            raise AdapterError(f"{path}: key '{key}' must be a list")
    dropped = [d["class"] if isinstance(d, dict) else d for d in data["dropped"]]
    classes, kept = list(data["classes"]), list(data["professions"])
    if sorted(set(kept) | set(dropped)) != sorted(classes) or set(kept) & set(dropped):
        raise AdapterError(
            f"{path}: 'professions' and 'dropped' must split 'classes' exactly; "
            f"unaccounted: {sorted(set(classes) - set(kept) - set(dropped))}, "
            f"unknown: {sorted((set(kept) | set(dropped)) - set(classes))}"
        )
    return {
        "classes": classes,
        "professions": kept,
        "dropped": dropped,
        "rule": str(data.get("rule", "")).strip(),
        "file": str(path),
    }


def facet(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    *,
    professions: str | os.PathLike | Sequence[str] | None = "config/facet_professions.yaml",
    annotations: str = "annotations/annotations.csv",
    image_dirs: Sequence[str] = ("imgs_1", "imgs_2", "imgs_3"),
    crop: str = "person",
    margin: float = 0.1,
    stratify_by: str = "gender",
    seed: int = 42,
) -> AdapterResult:
    """FACET person instances (one row per ``person_id`` of ``annotations.csv``).

    Rows whose ``class1`` is not one of the kept professions are dropped (the 42-profession
    rule of ``config/facet_professions.yaml``, METHODS §6.1); a ``class1`` outside the 52
    known classes is an error. ``label`` = profession (alphabetical), ``attr_gender``
    (feminine, masculine, non_binary) and ``attr_age`` (young, middle, older) from the
    perceived-presentation columns, -1 when unknown (:func:`facet_presentation`).
    ``group = 3 * label + gender`` (-1 where gender is unknown).

    Crops (``crop="person"``): ``bounding_box`` (JSON ``{"x", "y", "width", "height"}`` in
    pixels) enlarged by ``margin`` of its size on each side and clipped to the image
    (:func:`clipbias.data.crops.enlarge_box`), stored as ``crop_x0..crop_y1``; the feature
    extractor crops with :func:`clipbias.data.crops.apply_crop`. ``crop="full_single"``
    keeps only persons alone in their image (all annotated classes counted) and uses the
    whole image. Split: stratified (class x ``stratify_by``) 50/50 into ``locate`` and
    ``evaluate`` with ``seed`` (:func:`stratified_split`).
    """
    import json

    from PIL import Image

    from clipbias.data.crops import enlarge_box

    source = Path(source)
    if crop not in ("person", "full_single"):
        raise AdapterError(f"facet: crop must be 'person' or 'full_single', got {crop!r}")
    ann_path = source / annotations
    if not ann_path.is_file():
        raise AdapterError(f"facet: {ann_path} not found")
    raw = pd.read_csv(ann_path)
    _require_columns(raw, FACET_REQUIRED, ann_path)
    rule = load_facet_professions(professions)
    unknown = sorted(set(raw["class1"].astype(str)) - set(rule["classes"]))
    if unknown:
        raise AdapterError(
            f"{ann_path}: class1 value(s) {unknown[:5]} are not among the {len(rule['classes'])} "
            f"FACET classes of {rule.get('file', 'the profession list')}; update that file"
        )
    if stratify_by not in ("gender", "age"):
        raise AdapterError(f"facet: stratify_by must be 'gender' or 'age', got {stratify_by!r}")

    persons_per_image = raw["filename"].astype(str).value_counts()
    keep = raw["class1"].astype(str).isin(rule["professions"]).to_numpy()
    if crop == "full_single":
        keep = keep & (raw["filename"].astype(str).map(persons_per_image) == 1).to_numpy()
    n_dropped = int((~keep).sum())
    raw = raw.loc[keep].reset_index(drop=True)
    if raw.empty:
        raise AdapterError(f"facet: no person of the kept professions in {ann_path}")
    dup = raw["person_id"].astype(str).duplicated()
    if dup.any():
        raise AdapterError(
            f"{ann_path}: person_id not unique, e.g. {raw.loc[dup, 'person_id'][:3]}"
        )

    located: dict[str, str] = {}
    for d in image_dirs:
        folder = source / d
        if folder.is_dir():
            for e in os.scandir(folder):
                if e.is_file():
                    located.setdefault(e.name, f"{d}/{e.name}")
    names = raw["filename"].astype(str)
    rel = names.map(lambda n: located.get(n) or located.get(f"{n}.jpg"))
    if rel.isna().any():
        missing = sorted(names[rel.isna()].unique())
        raise AdapterError(
            f"facet: {len(missing)} image(s) named in {ann_path.name} not found in "
            f"{list(image_dirs)} under {source}, e.g. {missing[:3]}"
        )
    sizes: dict[str, tuple[int, int]] = {}
    for r in rel.unique():
        with Image.open(source / r) as im:  # reads the header only
            sizes[r] = im.size
    boxes = np.zeros((len(raw), 4), dtype=np.int64)
    for i, (r, text) in enumerate(zip(rel, raw["bounding_box"].astype(str), strict=True)):
        w_img, h_img = sizes[r]
        if crop == "full_single":
            boxes[i] = (0, 0, w_img, h_img)
            continue
        try:
            b = json.loads(text)
            boxes[i] = enlarge_box(
                float(b["x"]), float(b["y"]), float(b["width"]), float(b["height"]),
                w_img, h_img, margin,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterError(
                f"{ann_path}: person {raw.at[i, 'person_id']}: bad bounding_box {text!r} "
                f"for a {w_img}x{h_img} image ({exc})"
            ) from exc

    classes = sorted(rule["professions"])
    cidx = {c: i for i, c in enumerate(classes)}
    label = raw["class1"].astype(str).map(cidx).astype("int64")
    gender = facet_presentation(
        raw[list(FACET_GENDER_COLUMNS)].to_numpy(), raw["gender_presentation_na"].to_numpy()
    )
    age = facet_presentation(
        raw[list(FACET_AGE_COLUMNS)].to_numpy(), raw["age_presentation_na"].to_numpy()
    )
    strat_attr = gender if stratify_by == "gender" else age
    split = stratified_split([f"{a}|{b}" for a, b in zip(label, strat_attr, strict=True)], seed)
    group = np.where(gender >= 0, label.to_numpy() * 3 + gender, -1)
    rel_s = rel.astype(str)
    df = pd.DataFrame(
        {
            "image_id": raw["person_id"].astype(str),
            "path": _join(_rel_prefix(source, Path(dataset_root)), rel_s),
            "split": pd.Series(split, dtype=str),
            "label": label,
            "group": pd.Series(group, dtype="int64"),
            "attr_gender": pd.Series(gender, dtype="int64"),
            "attr_age": pd.Series(age, dtype="int64"),
        }
    )
    for j, c in enumerate(("crop_x0", "crop_y0", "crop_x1", "crop_y1")):
        df[c] = boxes[:, j]
    genders = ["feminine", "masculine", "non_binary"]
    meta = {
        "name": "facet",
        "classes": classes,
        "class_prompt_names": [c.replace("_", " ") for c in classes],
        "attributes": {"gender": genders, "age": ["young", "middle", "older"]},
        "spurious_attribute": None,
        "protected_attribute": "gender",
        "group_by": ["label", "gender"],
        "group_names": [f"{c} {g}" for c in classes for g in genders],
        "minority_groups": [],
        "crop": {
            "mode": crop,
            "margin": margin if crop == "person" else 0.0,
            "columns": ["crop_x0", "crop_y0", "crop_x1", "crop_y1"],
        },
        "split_rule": {"stratify_by": ["label", stratify_by], "seed": seed, "fraction": 0.5},
        "professions_rule": rule["rule"],
        "dropped_classes": list(rule["dropped"]),
        "n_dropped_persons": n_dropped,
        "splits": _split_counts(df["split"]),
        "source": f"clipbias.data.adapters.facet ({annotations}, crop {crop})",
    }
    return df, meta


# --------------------------------------------------------------------------- registry glue

ADAPTERS: dict[str, Adapter] = {
    "waterbirds": waterbirds,
    "celeba": celeba,
    "counteranimal": counteranimal,
    "genderbias_vl": genderbias_vl,
    "fairface": fairface,
    "facet": facet,
    "imagenet_r": imagenet_r,
    "imagenet_a": imagenet_a,
}


def get_adapter(name: str) -> Adapter:
    """The adapter function called ``name`` (the registry's ``adapter`` key)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise AdapterError(
            f"no adapter named {name!r}; known: {', '.join(sorted(ADAPTERS))}"
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
