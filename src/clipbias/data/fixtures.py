"""Fixture-scale copies of the registry datasets in their real on-disk layout.

For every registry dataset with files of its own (not the derived tasks), this module builds
the files that unpacking the real downloads leaves in ``resources/datasets/<name>/extracted/``
(same folders, file names, CSV/TXT columns and value spellings, JPEG where the dataset has
JPEG, PNG where PNG), with a few dozen to ~200 generated images instead of thousands, so that
``check_layout`` passes and the dataset's real adapter (:func:`clipbias.data.adapters.build_index`)
indexes them. Images are noise plus a few shapes and colours, deterministic from ``seed`` and
the file's path, ``image_size`` pixels square (FACET: ``image_factor`` times larger, with the
person boxes drawn inside). The rehearsal of the paper configurations (issue 24) runs every
protocol on these copies; the adapter tests build their hand-made layouts with the same
builders.

Entry points:

* :func:`write_extracted` ``(dataset, extracted, image_size=224, seed=0, scale=None)``: write
  the extracted folder atomically (built in a temporary sibling, then renamed; an existing
  folder is never overwritten), plus the marker :data:`FIXTURE_MARKER` (a hidden JSON file
  at its top that no adapter reads: :func:`fixture_info` tells fixture data from a real
  download).
* :func:`members` and the per-dataset builders ``<dataset>_members(...)`` return
  ``{path relative to extracted/: bytes}``; :func:`raw_files` packs such members into the
  registry's raw files (zip / tar / tar.gz archives and plain files) for tests that go
  through ``fetch_dataset``; :func:`write_members` writes them to a folder.

Each builder takes its counts from one frozen dataclass (``<Dataset>Scale``; pass another
instance as ``scale`` for a different size) or, where a test asserts exact values, explicit
rows / layouts. What the shipped experiment configs (``config/experiments/*.yaml``) need of
each dataset, and the default counts that provide it:

waterbirds (:class:`WaterbirdsScale`, 104 JPEGs)
    All three splits hold the 4 groups (landbird/waterbird x land/water) and the 4 Places
    categories (``place_filename``). Train: 32 per class (24 majority, 8 bias-conflicting per
    class): RefineCLIP Tables 1/3/6 draw n = 10/20/30 shots per class from train, LTC locates
    on train's bias-conflicting groups 1 and 2 (minority by the adapter's count rule), its
    correct and wrong samples come from whatever the model predicts. Val 4, test 6 per group
    (Ours* selects on val; every method is scored per group on test).
celeba, celeba_young (:class:`CelebAScale`, 58 JPEGs; the same files)
    ``list_attr_celeba.txt`` (all 40 attributes, -1/1), ``list_eval_partition.txt`` and
    ``img_align_celeba/``. Every split holds the 4 Blond_Hair x Male groups and, with Young
    alternating inside each group, the 4 old/young x Male groups of RefineCLIP Table 2's view.
    Train groups (8, 8, 8, 2): blond males are the minority group that LTC locates on (on val,
    by the train-count rule), and train has >= 10 images of every class of both views
    (refineclip_table2 draws 10 shots per class from train).
counteranimal (:class:`CounterAnimalScale`, 72 JPEGs)
    ``LAION-final/<ImageNet index> <name>/{common-<bg>,counter-<bg>}/`` for 12 ImageNet animal
    classes (real indices, CLIP's ImageNet names) with 3 images in each subset:
    the protocol's worst-10-class accuracy needs >= 10 classes present in both subsets.
    ``imagenet_names.txt`` (``<idx>\\t<name>``, all 1,000) beside them, as in the release.
genderbias_vl (:class:`GenderBiasScale`, 167 PNGs)
    ``xl_generate_base/<Occupation>/<female|male>/<gender>_<Occupation>_<n>.png`` and the
    pairing table ``occ_merge_filter_sim.csv`` in the real columns. 11 of the 25 Appendix C
    locate occupations and 11 test occupations with both genders (LTC locates on the worse
    gender of the 10 most biased locate occupations; the protocol's top-10 bias is over the
    test split), every occupation paired in the table (its two-way classifier needs a
    counterpart); 3 images per (occupation, gender), 5 for every third occupation so that the
    retrieval skew (occupations with >= 10 images) has some to rank; one occupation with a
    single gender folder (dropped by the adapter, as in the release).
fairface (:class:`FairFaceScale`, 77 JPEGs)
    ``fairface_label_{train,val}.csv`` (``file,age,gender,race,service_test``) and
    ``train/``, ``val/``; val has all 9 age bins, both genders and all 7 races. MaxSkew@1000
    needs 1,000 images per ranking and cannot be computed on a fixture.
facet (:class:`FacetScale`, 178 persons on 45 JPEGs of 2 x image_size)
    ``annotations/annotations.csv`` (one row per person, the real columns) and
    ``imgs_1/ .. imgs_3/``, 4 persons per image. 4 of the 42 professions with 20 feminine and
    20 masculine persons each (2 x ``audit.min_per_group``): the adapter's stratified
    class x gender halves then hold exactly 10 of each gender per class on both the locate and
    the evaluate half (within-class CAV scores, stereotyped classes, Cramér's V). Inside a
    class x gender stratum all persons share one age group (a different pairing per class),
    so the halves also hold exactly 10 of that age: the age audit's within-class young-older
    score has 2 classes to average (the ranking fails when none qualifies). Plus per class one
    non-binary and one unknown-gender person (unknown age), a fifth profession with 3 + 3
    persons (too few for the within-class scores) and 4 persons of two classes outside the 42
    (dropped by the profession rule).
imagenet_r (:class:`ImageNetRScale`, 73 JPEGs)
    ``imagenet-r/<wnid>/<style>_<n>.jpg`` for 22 of ImageNet-R's 200 wnids; 20 classes with
    1-3 ``cartoon_*`` files and 2 with none: waterbirds_imagenet_r takes the 18 classes with
    the most cartoon files.
imagenet_a (:class:`ImageNetAScale`, 139 JPEGs)
    ``imagenet-a/<wnid>/<file>.jpg`` (names with spaces) for 12 of ImageNet-A's 200 wnids and
    a loose ``README.txt``: the 10 largest classes have 12-14 images, so imagenet_a_top10 can
    move 10 per class into its train shot pool and keep >= 2 test images per class; the edit
    targets are its 2 worst classes with 4 shots each.

The derived tasks (``waterbirds_imagenet_r``, ``imagenet_a_top10``) have no files: rule
``derive_dataset`` builds them from the prepared fixture folders of their components.
Pure Python + numpy / pandas / PIL (no torch).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from clipbias.data.adapters import (
    FAIRFACE_VALUES,
    GENDERBIAS_LOCATE_OCCUPATIONS,
    IMAGENET_A_1K_INDICES,
    IMAGENET_R_1K_INDICES,
)
from clipbias.io import atomic_path

Members = dict[str, bytes]

FIXTURE_MARKER = ".clipbias-fixture.json"


class FixtureError(ValueError):
    """A fixture cannot be built as asked; the message says what to change."""


# --------------------------------------------------------------------------- images and files


def fixture_image(
    key: str,
    size: int | tuple[int, int],
    fmt: str = "JPEG",
    *,
    seed: int = 0,
    tint: Sequence[int] | None = None,
    boxes: Iterable[Sequence[float]] = (),
) -> bytes:
    """Encoded bytes of one generated RGB image of ``size`` (``(width, height)`` or square).

    Deterministic from ``(seed, key)``: a ``tint`` (or random) background with Gaussian
    noise, 1-3 random ellipses / rectangles, and a filled rectangle per box of ``boxes``
    (``(x0, y0, x1, y1)`` pixels; FACET persons). ``fmt`` is a PIL format (JPEG, PNG).
    """
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w < 1 or h < 1:
        raise FixtureError(f"image size must be positive, got {w}x{h}")
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    base = np.asarray(tint if tint is not None else rng.integers(40, 216, 3), dtype=np.float32)
    arr = base + rng.normal(0.0, 24.0, (h, w, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), fill=colour)
    for box in boxes:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle(tuple(float(v) for v in box), fill=colour)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def _check_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in name:
        raise FixtureError(f"member path {name!r} must be relative, without '..' or '\\'")
    return p


def write_members(files: Mapping[str, bytes], root: str | os.PathLike) -> None:
    """Write ``{relative POSIX path: bytes}`` under the folder ``root`` (created if needed)."""
    root = Path(root)
    for name, data in files.items():
        path = root.joinpath(*_check_member(name).parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def archive_bytes(files: Mapping[str, bytes], kind: str) -> bytes:
    """A ``zip``, ``tar`` or ``tar.gz`` archive of ``files`` (fixed timestamps: the same
    members give the same bytes)."""
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                _check_member(name)
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    elif kind in ("tar", "tar.gz"):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files.items():
                _check_member(name)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        if kind == "tar":
            return raw.getvalue()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(raw.getvalue())
    else:
        raise FixtureError(f"unknown archive kind {kind!r}; expected zip, tar or tar.gz")
    return buf.getvalue()


def _archive_stem(filename: str) -> str:
    for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
        if filename.endswith(ext):
            return filename[: -len(ext)]
    return filename


def raw_files(entry: Any, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Pack extracted-folder ``files`` into the registry entry's raw files ``{filename: bytes}``.

    ``fetch_dataset`` unpacks the result into the same folder: a plain file (``archive:
    none``) is the member of its name; an archive takes the members under the top folder of
    its own name (``imgs_1.zip`` -> ``imgs_1/``, ``xl_generate_base.tar.gz`` ->
    ``xl_generate_base/``), and the one archive without such a folder takes the rest.
    Optional files without members are left out.
    """
    remaining = dict(files)
    out: dict[str, bytes] = {}
    archives = []
    for spec in entry.files:
        if spec.archive == "none":
            if spec.filename in remaining:
                out[spec.filename] = remaining.pop(spec.filename)
            elif not spec.optional:
                raise FixtureError(f"{entry.name}: no member for the plain file {spec.filename}")
        else:
            archives.append(spec)
    claimed: dict[str, Members] = {}
    for spec in archives:
        stem = _archive_stem(spec.filename)
        own = {n: d for n, d in remaining.items() if n.split("/", 1)[0] == stem}
        if own:
            claimed[spec.filename] = own
            for n in own:
                del remaining[n]
    rest = [s for s in archives if s.filename not in claimed]
    if remaining:
        if len(rest) != 1:
            raise FixtureError(
                f"{entry.name}: cannot tell which of {[s.filename for s in rest]} holds "
                f"{sorted(remaining)[:3]}"
            )
        claimed[rest[0].filename] = remaining
    for spec in archives:
        if spec.filename in claimed:
            out[spec.filename] = archive_bytes(claimed[spec.filename], spec.archive)
        elif not spec.optional:
            raise FixtureError(f"{entry.name}: no member for the archive {spec.filename}")
    return out


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


# --------------------------------------------------------------------------- waterbirds

WATERBIRDS_LAYOUT = "waterbird_complete95_forest2water2"
# CUB-200-2011 species folders (img_filename = <folder>/<file>.jpg)
WATERBIRDS_SPECIES = {
    0: ("010.Red_winged_Blackbird", "011.Rusty_Blackbird", "012.Yellow_headed_Blackbird"),
    1: ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"),
}
# Places folders of place_filename, per place (0 land, 1 water)
WATERBIRDS_PLACES = {
    0: ("/b/bamboo_forest", "/f/forest/broadleaf"),
    1: ("/o/ocean", "/l/lake/natural"),
}
WATERBIRDS_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")


@dataclass(frozen=True)
class WaterbirdsScale:
    """Images per group (landbird-land, landbird-water, waterbird-land, waterbird-water)."""

    train: tuple[int, int, int, int] = (24, 8, 8, 24)
    val: tuple[int, int, int, int] = (4, 4, 4, 4)
    test: tuple[int, int, int, int] = (6, 6, 6, 6)


def waterbirds_rows(scale: WaterbirdsScale | None = None) -> list[tuple]:
    """``metadata.csv`` rows (:data:`WATERBIRDS_COLUMNS`) of the default fixture."""
    scale = scale or WaterbirdsScale()
    rows, img_id = [], 1
    for split, counts in enumerate((scale.train, scale.val, scale.test)):
        for g, n in enumerate(counts):
            y, place = g // 2, g % 2
            for k in range(n):
                folder = WATERBIRDS_SPECIES[y][k % len(WATERBIRDS_SPECIES[y])]
                species = folder.split(".", 1)[1]
                fn = f"{folder}/{species}_{img_id:04d}_{k}.jpg"
                pf = f"{WATERBIRDS_PLACES[place][k % 2]}/{img_id:08d}.jpg"
                rows.append((img_id, fn, y, split, place, pf))
                img_id += 1
    return rows


def waterbirds_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: WaterbirdsScale | None = None,
    rows: Sequence[Sequence[Any]] | None = None,
) -> Members:
    """``waterbird_complete95_forest2water2/{metadata.csv, <species>/<file>.jpg}``.

    ``rows``: explicit ``metadata.csv`` rows (:data:`WATERBIRDS_COLUMNS`), else
    :func:`waterbirds_rows` of ``scale``.
    """
    rows = list(rows) if rows is not None else waterbirds_rows(scale)
    df = pd.DataFrame(rows, columns=list(WATERBIRDS_COLUMNS))
    out = {f"{WATERBIRDS_LAYOUT}/metadata.csv": df.to_csv(index=False).encode()}
    for fn, place in zip(df["img_filename"], df["place"], strict=True):
        path = f"{WATERBIRDS_LAYOUT}/{fn}"
        tint = (90, 130, 60) if int(place) == 0 else (50, 90, 160)
        out[path] = fixture_image(path, image_size, "JPEG", seed=seed, tint=tint)
    return out


# --------------------------------------------------------------------------- CelebA

# list_attr_celeba.txt header order (DATASETS.md §3, [TFDS] ATTR_HEADINGS)
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


@dataclass(frozen=True)
class CelebAScale:
    """Images per Blond_Hair x Male group (not blond F, not blond M, blond F, blond M); Young
    alternates inside each group (first image young)."""

    train: tuple[int, int, int, int] = (8, 8, 8, 2)
    val: tuple[int, int, int, int] = (4, 4, 4, 4)
    test: tuple[int, int, int, int] = (4, 4, 4, 4)


def celeba_rows(scale: CelebAScale | None = None, seed: int = 0) -> list[tuple]:
    """Rows ``(file, *values in CELEBA_ATTRIBUTES order, partition)`` of the default fixture;
    attributes other than Blond_Hair, Male and Young are random -1/1."""
    scale = scale or CelebAScale()
    rng = _rng(seed, "celeba")
    blond, male, young = (CELEBA_ATTRIBUTES.index(a) for a in ("Blond_Hair", "Male", "Young"))
    rows, n = [], 1
    for part, counts in enumerate((scale.train, scale.val, scale.test)):
        for g, count in enumerate(counts):
            for k in range(count):
                values = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
                values[blond] = 1 if g >= 2 else -1
                values[male] = 1 if g % 2 else -1
                values[young] = 1 if k % 2 == 0 else -1
                rows.append((f"{n:06d}.jpg", *(int(v) for v in values), part))
                n += 1
    return rows


def celeba_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: CelebAScale | None = None,
    rows: Sequence[Sequence[Any]] | None = None,
    attributes: Sequence[str] = CELEBA_ATTRIBUTES,
) -> Members:
    """``list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/<file>``
    in the release's formats (count line, attribute-name line, ``file v1 .. vK`` with values
    right-aligned in 2 characters). ``rows``: ``(file, *values in attributes order,
    partition)``, else :func:`celeba_rows`."""
    rows = list(rows) if rows is not None else celeba_rows(scale, seed)
    attributes = list(attributes)
    for r in rows:
        if len(r) != len(attributes) + 2:
            raise FixtureError(
                f"celeba row {r[:2]}...: {len(r)} fields, expected file + {len(attributes)} "
                "attribute values + partition"
            )
    lines = [str(len(rows)), " ".join(attributes) + " "]
    lines += [f"{r[0]} " + " ".join(f"{int(v):2d}" for v in r[1:-1]) for r in rows]
    out = {
        "list_attr_celeba.txt": ("\n".join(lines) + "\n").encode(),
        "list_eval_partition.txt": "".join(f"{r[0]} {int(r[-1])}\n" for r in rows).encode(),
    }
    for r in rows:
        path = f"img_align_celeba/{r[0]}"
        out[path] = fixture_image(path, image_size, "JPEG", seed=seed)
    return out


# --------------------------------------------------------------------------- CounterAnimal

COUNTERANIMAL_LAYOUT = "LAION-final"
COUNTERANIMAL_COMMON = ("grass", "water", "tree", "sky")
COUNTERANIMAL_COUNTER = ("snow", "sand", "rock", "earth", "hand")


class CounterAnimalClass(NamedTuple):
    """One class folder ``"<index> <name>"`` with ``common-<common>`` / ``counter-<counter>``."""

    index: int
    name: str
    common: str
    counter: str
    n_common: int
    n_counter: int


@dataclass(frozen=True)
class CounterAnimalScale:
    """ImageNet-1k indices of the classes (animals; names from CLIP's ImageNet list) and
    images per subset."""

    indices: tuple[int, ...] = (9, 100, 130, 144, 150, 291, 296, 340, 345, 349, 386, 388)
    n_common: int = 3
    n_counter: int = 3


def counteranimal_classes(scale: CounterAnimalScale | None = None) -> list[CounterAnimalClass]:
    from clipbias.labels import imagenet_class_names

    scale = scale or CounterAnimalScale()
    names = imagenet_class_names()
    return [
        CounterAnimalClass(
            i,
            names[i],
            COUNTERANIMAL_COMMON[k % len(COUNTERANIMAL_COMMON)],
            COUNTERANIMAL_COUNTER[k % len(COUNTERANIMAL_COUNTER)],
            scale.n_common,
            scale.n_counter,
        )
        for k, i in enumerate(scale.indices)
    ]


def counteranimal_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: CounterAnimalScale | None = None,
    classes: Sequence[CounterAnimalClass] | None = None,
    names: Mapping[int, str] | None = None,
) -> Members:
    """``LAION-final/imagenet_names.txt`` and
    ``LAION-final/<index> <name>/{common-<bg>,counter-<bg>}/<nnn>.jpg``.

    ``classes``: explicit class folders, else :func:`counteranimal_classes` of ``scale``;
    ``names``: the lines of ``imagenet_names.txt`` (default: all 1,000 ImageNet names)."""
    classes = list(classes) if classes is not None else counteranimal_classes(scale)
    if names is None:
        from clipbias.labels import imagenet_class_names

        names = dict(enumerate(imagenet_class_names()))
    top = COUNTERANIMAL_LAYOUT
    text = "".join(f"{i}\t{n}\n" for i, n in names.items())
    out = {f"{top}/imagenet_names.txt": text.encode()}
    for c in classes:
        if "/" in c.name:
            raise FixtureError(f"counteranimal class name {c.name!r} cannot be a folder name")
        for kind, bg, n in (("common", c.common, c.n_common), ("counter", c.counter, c.n_counter)):
            for i in range(n):
                path = f"{top}/{c.index} {c.name}/{kind}-{bg}/{i:03d}.jpg"
                out[path] = fixture_image(path, image_size, "JPEG", seed=seed)
    return out


# --------------------------------------------------------------------------- GenderBias-VL

GENDERBIAS_IMAGE_DIR = "xl_generate_base"
GENDERBIAS_PAIRS_FILE = "occ_merge_filter_sim.csv"
GENDERBIAS_PAIR_HEADER = (
    "job_male", "job_female", "similarity", "img_similarity", "text_similarity",
    "job_male_ratio", "job_female_ratio", "job_male_label", "job_female_label",
    "job_male_1_class", "job_male_2_class", "job_male_3_class",
    "job_female_1_class", "job_female_2_class", "job_female_3_class",
)  # fmt: skip
# Test-split occupations of the fixture (US labour-statistics style names, as in the release)
GENDERBIAS_TEST_OCCUPATIONS = (
    "Software developer", "Registered nurse", "Electrician", "Receptionist", "Civil engineer",
    "Librarian", "Firefighter", "Hairdresser", "Chef and head cook", "Cashier", "Pharmacist",
    "Construction laborer", "Bus driver", "Childcare worker",
)  # fmt: skip
_GENDERBIAS_GROUPS = (
    "Management, business, and financial",
    "Professional and related",
    "Service",
    "Sales and office",
    "Production, transportation, and material moving",
)


@dataclass(frozen=True)
class GenderBiasScale:
    """Occupations with both genders (locate: the first ``n_locate`` of Appendix C; test:
    :data:`GENDERBIAS_TEST_OCCUPATIONS`), images per (occupation, gender): ``per_gender``,
    every third occupation ``per_gender_large``; ``n_one_gender`` occupations (of the test
    names) with a female folder only."""

    n_locate: int = 11
    n_test: int = 11
    per_gender: int = 3
    per_gender_large: int = 5
    n_one_gender: int = 1


def genderbias_layout(scale: GenderBiasScale | None = None) -> dict[str, dict[str, int]]:
    """``{occupation folder: {gender: images}}`` of the default fixture."""
    scale = scale or GenderBiasScale()
    if scale.n_locate > len(GENDERBIAS_LOCATE_OCCUPATIONS):
        raise FixtureError(f"n_locate <= {len(GENDERBIAS_LOCATE_OCCUPATIONS)} (Appendix C)")
    if scale.n_test + scale.n_one_gender > len(GENDERBIAS_TEST_OCCUPATIONS):
        raise FixtureError(
            f"n_test + n_one_gender <= {len(GENDERBIAS_TEST_OCCUPATIONS)} "
            "(GENDERBIAS_TEST_OCCUPATIONS)"
        )
    occs = list(GENDERBIAS_LOCATE_OCCUPATIONS[: scale.n_locate])
    occs += list(GENDERBIAS_TEST_OCCUPATIONS[: scale.n_test])
    layout = {}
    for k, occ in enumerate(occs):
        n = scale.per_gender_large if k % 3 == 0 else scale.per_gender
        layout[occ.replace(" ", "_")] = {"female": n, "male": n}
    for occ in GENDERBIAS_TEST_OCCUPATIONS[scale.n_test : scale.n_test + scale.n_one_gender]:
        layout[occ.replace(" ", "_")] = {"female": scale.per_gender}
    return layout


def genderbias_pairs(occupations: Sequence[str]) -> list[tuple[str, str, float, float]]:
    """Pairing-table rows ``(job_male, job_female, job_male_ratio, job_female_ratio)`` over
    ``occupations``: alternately male- and female-listed, every male-listed job paired with
    two female-listed ones (female shares 5-39 % and 55-94 %), so every occupation has a
    counterpart (:func:`clipbias.data.adapters.occupation_counterparts`)."""
    male, female = list(occupations[0::2]), list(occupations[1::2])
    if not male or not female:
        raise FixtureError("the pairing table needs at least two occupations")
    rows = []
    for i, m in enumerate(male):
        for j in (i % len(female), (i + 1) % len(female)):
            rows.append((m, female[j], float(5 + (7 * i) % 35), float(55 + (11 * j) % 40)))
    return rows


def genderbias_pairs_csv(rows: Sequence[tuple[str, str, float, float]], seed: int = 0) -> bytes:
    """The pairing table ``occ_merge_filter_sim.csv`` in the release's columns
    (:data:`GENDERBIAS_PAIR_HEADER`) from ``(job_male, job_female, job_male_ratio,
    job_female_ratio)`` rows; similarities and labels are filler."""
    rng = _rng(seed, "genderbias pairs")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GENDERBIAS_PAIR_HEADER)
    for jm, jf, rm, rf in rows:
        sims = [round(float(s), 6) for s in rng.uniform(0.5, 1.0, 3)]
        g = [_GENDERBIAS_GROUPS[int(i)] for i in rng.integers(0, len(_GENDERBIAS_GROUPS), 8)]
        w.writerow([jm, jf, *sims, rm, rf, *g])
    return buf.getvalue().encode()


def genderbias_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: GenderBiasScale | None = None,
    layout: Mapping[str, Mapping[str, int]] | None = None,
    pairs: Sequence[tuple[str, str, float, float]] | None = None,
) -> Members:
    """``xl_generate_base/<Occupation_with_underscores>/<gender>/<gender>_<Occupation>_<n>.png``
    and ``occ_merge_filter_sim.csv``. ``layout``: ``{occupation folder: {gender: images}}``
    (default :func:`genderbias_layout`); ``pairs``: pairing rows (default
    :func:`genderbias_pairs` over the layout's occupations)."""
    layout = dict(layout) if layout is not None else genderbias_layout(scale)
    if pairs is None:
        pairs = genderbias_pairs([occ.replace("_", " ") for occ in layout])
    out = {GENDERBIAS_PAIRS_FILE: genderbias_pairs_csv(pairs, seed)}
    for occ, genders in layout.items():
        for g, n in genders.items():
            for i in range(n):
                path = f"{GENDERBIAS_IMAGE_DIR}/{occ}/{g}/{g}_{occ}_{i}.png"
                out[path] = fixture_image(path, image_size, "PNG", seed=seed)
    return out


# --------------------------------------------------------------------------- FairFace

FAIRFACE_COLUMNS = ("file", "age", "gender", "race", "service_test")


@dataclass(frozen=True)
class FairFaceScale:
    """Images per labels CSV; val cycles through the 9 ages and 7 races (63 = 9 x 7 covers
    every age x race pair) with both genders."""

    n_val: int = 63
    n_train: int = 14


def fairface_rows(split: str, n: int) -> list[tuple[str, str, str, str, str]]:
    ages, genders, races = (FAIRFACE_VALUES[a] for a in ("age", "gender", "race"))
    return [
        (
            f"{split}/{i + 1}.jpg",
            ages[i % len(ages)],
            genders[(i + i // len(ages)) % len(genders)],
            races[i % len(races)],
            "True" if i % 3 == 0 else "False",
        )
        for i in range(n)
    ]


def fairface_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: FairFaceScale | None = None,
    rows: Mapping[str, Sequence[Sequence[str]]] | None = None,
) -> Members:
    """``fairface_label_<split>.csv`` (:data:`FAIRFACE_COLUMNS`) and ``<split>/<n>.jpg`` for
    splits train and val. ``rows``: ``{split: [(file, age, gender, race, service_test)]}``,
    else :func:`fairface_rows` of ``scale``."""
    if rows is None:
        scale = scale or FairFaceScale()
        rows = {
            "train": fairface_rows("train", scale.n_train),
            "val": fairface_rows("val", scale.n_val),
        }
    out = {}
    for split, split_rows in rows.items():
        df = pd.DataFrame(list(split_rows), columns=list(FAIRFACE_COLUMNS))
        out[f"fairface_label_{split}.csv"] = df.to_csv(index=False).encode()
        for fn in df["file"]:
            out[fn] = fixture_image(fn, image_size, "JPEG", seed=seed)
    return out


# --------------------------------------------------------------------------- FACET

FACET_IMAGE_DIRS = ("imgs_1", "imgs_2", "imgs_3")
FACET_ANNOTATIONS = "annotations/annotations.csv"
FACET_COLUMNS = (
    "person_id", "filename", "class1", "class2", "bounding_box",
    "gender_presentation_masc", "gender_presentation_fem", "gender_presentation_non_binary",
    "gender_presentation_na", "age_presentation_young", "age_presentation_middle",
    "age_presentation_older", "age_presentation_na",
    *[f"skin_tone_{i}" for i in range(1, 11)], "skin_tone_na", "visible_face", "lighting_well_lit",
)  # fmt: skip
_FACET_GENDER = {"masc": (1, 0, 0, 0), "fem": (0, 1, 0, 0), "nb": (0, 0, 1, 0), "na": (0, 0, 0, 1)}
_FACET_AGE = {
    "young": (1, 0, 0, 0),
    "middle": (0, 1, 0, 0),
    "older": (0, 0, 1, 0),
    "na": (0, 0, 0, 1),
}
# (feminine, masculine) age group of each core profession, by position: every stratum is one
# age, so the stratified halves split each age exactly (young-older in the first two)
FACET_AGE_PLAN = (("young", "older"), ("older", "young"), ("middle", "young"), ("older", "middle"))


def facet_row(
    person_id: int,
    filename: str,
    class1: str,
    box: Mapping[str, float],
    gender: str,
    age: str,
    *,
    class2: str = "",
    skin_tone: int | None = None,
) -> dict[str, Any]:
    """One ``annotations.csv`` row: ``gender`` in masc / fem / nb / na and ``age`` in young /
    middle / older / na set the one-hot presentation columns; ``box`` is the bounding box
    (``x, y, width, height``), written as JSON; ``skin_tone`` 1-10 (None = na)."""
    if gender not in _FACET_GENDER or age not in _FACET_AGE:
        raise FixtureError(
            f"facet person {person_id}: gender in {list(_FACET_GENDER)}, age in {list(_FACET_AGE)}"
        )
    tones = [0] * 10 + [1]
    if skin_tone is not None:
        tones = [int(i == skin_tone) for i in range(1, 11)] + [0]
    values = [person_id, filename, class1, class2, json.dumps(dict(box))]
    values += [*_FACET_GENDER[gender], *_FACET_AGE[age], *tones, 1, 1]
    return dict(zip(FACET_COLUMNS, values, strict=True))


@dataclass(frozen=True)
class FacetScale:
    """Persons per class and image. ``professions``: the core classes (of the 42), with
    ``per_gender`` feminine and as many masculine persons (ages by :data:`FACET_AGE_PLAN`)
    plus one non-binary and one unknown-gender person each; ``extra``: a profession with
    ``extra_per_gender`` persons per gender; ``dropped``: classes outside the 42 with
    ``per_dropped`` persons each. Images are ``image_factor`` x image_size square."""

    professions: tuple[str, ...] = ("doctor", "nurse", "farmer", "singer")
    per_gender: int = 20
    extra: str = "teacher"
    extra_per_gender: int = 3
    dropped: tuple[str, ...] = ("student", "patient")
    per_dropped: int = 2
    persons_per_image: int = 4
    image_factor: int = 2


def _facet_persons(scale: FacetScale) -> list[tuple[str, str, str]]:
    """(class1, gender, age) of every person of the default fixture."""
    persons = []
    for k, cls in enumerate(scale.professions):
        fem_age, masc_age = FACET_AGE_PLAN[k % len(FACET_AGE_PLAN)]
        persons += [(cls, "fem", fem_age)] * scale.per_gender
        persons += [(cls, "masc", masc_age)] * scale.per_gender
        persons += [(cls, "nb", "young"), (cls, "na", "na")]
    ages = ("young", "middle", "older", "na")
    for i in range(scale.extra_per_gender):
        persons += [(scale.extra, "fem", ages[i % 4]), (scale.extra, "masc", ages[(i + 2) % 4])]
    for cls in scale.dropped:
        persons += [(cls, "fem" if i % 2 else "masc", "young") for i in range(scale.per_dropped)]
    return persons


def facet_rows(
    scale: FacetScale | None = None, image_size: int = 224, seed: int = 0
) -> list[dict[str, Any]]:
    """Annotation rows of the default fixture: the persons of ``scale`` in a seeded order,
    ``persons_per_image`` per image (``sa_<n>.jpg``), one person box per quadrant."""
    scale = scale or FacetScale()
    if not 1 <= scale.persons_per_image <= 4:
        raise FixtureError("persons_per_image must be 1-4 (one box per image quadrant)")
    rng = _rng(seed, "facet")
    persons = _facet_persons(scale)
    order = rng.permutation(len(persons))
    side = scale.image_factor * image_size
    cell = side / 2
    rows = []
    for pos, p in enumerate(order):
        cls, gender, age = persons[p]
        image, slot = divmod(pos, scale.persons_per_image)
        bw, bh = cell * rng.uniform(0.45, 0.8), cell * rng.uniform(0.55, 0.9)
        x = (slot % 2) * cell + rng.uniform(0, cell - bw)
        y = (slot // 2) * cell + rng.uniform(0, cell - bh)
        box = {"x": round(x, 1), "y": round(y, 1), "width": round(bw, 1), "height": round(bh, 1)}
        other = scale.professions[(pos + 1) % len(scale.professions)] if pos % 5 == 0 else ""
        rows.append(
            facet_row(
                pos + 1,
                f"sa_{1000 + image}.jpg",
                cls,
                box,
                gender,
                age,
                class2=other,
                skin_tone=int(rng.integers(1, 11)) if pos % 7 else None,
            )  # fmt: skip
        )
    return rows


def facet_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: FacetScale | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> Members:
    """``annotations/annotations.csv`` and ``imgs_{1,2,3}/<filename>`` (images assigned to the
    three folders in turn, in order of first appearance). ``rows``: annotation rows
    (:func:`facet_row`), else :func:`facet_rows`; ``image_shape``: ``(width, height)`` of every
    image (default ``image_factor`` x ``image_size`` square). Each person's box is drawn."""
    scale = scale or FacetScale()
    if rows is None:
        rows = facet_rows(scale, image_size, seed)
    df = pd.DataFrame([dict(r) for r in rows])
    missing = [c for c in FACET_COLUMNS if c not in df.columns]
    if missing:
        raise FixtureError(f"facet rows lack column(s) {missing}")
    shape = image_shape or (scale.image_factor * image_size,) * 2
    out = {FACET_ANNOTATIONS: df.to_csv(index=False).encode()}
    for k, fn in enumerate(dict.fromkeys(df["filename"].astype(str))):
        boxes = []
        for text in df.loc[df["filename"] == fn, "bounding_box"]:
            b = json.loads(text)
            boxes.append((b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]))
        path = f"{FACET_IMAGE_DIRS[k % len(FACET_IMAGE_DIRS)]}/{fn}"
        out[path] = fixture_image(path, shape, "JPEG", seed=seed, boxes=boxes)
    return out


# --------------------------------------------------------------------------- ImageNet-R / -A

IMAGENET_R_STYLES = ("art", "sketch", "painting", "origami", "toy", "graffiti")


@dataclass(frozen=True)
class ImageNetRScale:
    """Per class (every ``stride``-th of ImageNet-R's 200 wnids): ``cartoon_*`` files and other
    renditions. Two classes without cartoons, so the top-18 choice is not all of them."""

    cartoon: tuple[int, ...] = (1, 2, 3, 0, 2, 3, 1, 2, 3, 1, 0, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1)
    other: tuple[int, ...] = (1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2)
    stride: int = 9


@dataclass(frozen=True)
class ImageNetAScale:
    """Images per class (every ``stride``-th of ImageNet-A's 200 wnids): ten classes of 12-14
    and two of 5."""

    sizes: tuple[int, ...] = (12, 13, 14, 12, 5, 13, 14, 12, 13, 5, 14, 12)
    stride: int = 16


def _wnids(indices: Sequence[int], stride: int, n: int, name: str) -> list[str]:
    from clipbias.data.adapters import imagenet_wnid_index

    chosen = list(indices)[:: int(stride)]
    if n > len(chosen):
        raise FixtureError(f"{name}: {n} classes asked, every {stride}-th wnid gives {len(chosen)}")
    wnids = list(imagenet_wnid_index())
    return [wnids[i] for i in chosen[:n]]


def imagenet_r_classes(scale: ImageNetRScale | None = None) -> dict[str, list[str]]:
    """``{wnid: [file names]}`` of the default ImageNet-R fixture."""
    scale = scale or ImageNetRScale()
    if len(scale.cartoon) != len(scale.other):
        raise FixtureError("ImageNetRScale: cartoon and other need one entry per class")
    wnids = _wnids(IMAGENET_R_1K_INDICES, scale.stride, len(scale.cartoon), "imagenet_r")
    out = {}
    for k, wnid in enumerate(wnids):
        files = [f"cartoon_{i}.jpg" for i in range(scale.cartoon[k])]
        files += [
            f"{IMAGENET_R_STYLES[(k + i) % len(IMAGENET_R_STYLES)]}_{i}.jpg"
            for i in range(scale.other[k])
        ]
        out[wnid] = files
    return out


def imagenet_a_classes(scale: ImageNetAScale | None = None) -> dict[str, list[str]]:
    """``{wnid: [file names]}`` of the default ImageNet-A fixture; names with spaces in the
    style of the release (``<score>_<class> _ <class>_<confidence>.jpg``)."""
    from clipbias.data.adapters import imagenet_wnid_index
    from clipbias.labels import imagenet_class_names

    scale = scale or ImageNetAScale()
    wnids = _wnids(IMAGENET_A_1K_INDICES, scale.stride, len(scale.sizes), "imagenet_a")
    index, names = imagenet_wnid_index(), imagenet_class_names()
    out = {}
    for wnid, n in zip(wnids, scale.sizes, strict=True):
        name = names[index[wnid]]
        out[wnid] = [f"0.{i + 1:06d}_{name} _ {name}_0.{(7 * i) % 97:02d}.jpg" for i in range(n)]
    return out


def _image_folder_members(
    top: str, classes: Mapping[str, Sequence[str]], image_size: int, seed: int
) -> Members:
    out = {}
    for wnid, files in classes.items():
        for fn in files:
            path = f"{top}/{wnid}/{fn}"
            out[path] = fixture_image(path, image_size, "JPEG", seed=seed)
    return out


def imagenet_r_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: ImageNetRScale | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> Members:
    """``imagenet-r/<wnid>/<file>.jpg``; ``classes``: ``{wnid: [file names]}``, else
    :func:`imagenet_r_classes`."""
    classes = classes if classes is not None else imagenet_r_classes(scale)
    return _image_folder_members("imagenet-r", classes, image_size, seed)


def imagenet_a_members(
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: ImageNetAScale | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> Members:
    """``imagenet-a/<wnid>/<file>.jpg`` and the loose ``imagenet-a/README.txt`` (the release
    tar has non-folder entries, which the adapter skips); ``classes`` as for ImageNet-R."""
    classes = classes if classes is not None else imagenet_a_classes(scale)
    out = _image_folder_members("imagenet-a", classes, image_size, seed)
    out["imagenet-a/README.txt"] = b"ImageNet-A fixture (clipbias.data.fixtures)\n"
    return out


# --------------------------------------------------------------------------- registry glue

Builder = Callable[..., Members]

# registry dataset -> (builder, its scale class); celeba_young has celeba's files
FIXTURES: dict[str, tuple[Builder, type]] = {
    "waterbirds": (waterbirds_members, WaterbirdsScale),
    "celeba": (celeba_members, CelebAScale),
    "celeba_young": (celeba_members, CelebAScale),
    "counteranimal": (counteranimal_members, CounterAnimalScale),
    "genderbias_vl": (genderbias_members, GenderBiasScale),
    "fairface": (fairface_members, FairFaceScale),
    "facet": (facet_members, FacetScale),
    "imagenet_r": (imagenet_r_members, ImageNetRScale),
    "imagenet_a": (imagenet_a_members, ImageNetAScale),
}


def _fixture(dataset: str) -> tuple[Builder, type]:
    try:
        return FIXTURES[dataset]
    except KeyError:
        raise FixtureError(
            f"no fixture for dataset {dataset!r}; known: {', '.join(sorted(FIXTURES))} (derived "
            "datasets are built from their components' fixtures by rule derive_dataset)"
        ) from None


def members(dataset: str, *, image_size: int = 224, seed: int = 0, scale: Any = None) -> Members:
    """The extracted-folder files of the fixture of registry dataset ``dataset``."""
    builder, scale_type = _fixture(dataset)
    if scale is not None and not isinstance(scale, scale_type):
        raise FixtureError(
            f"{dataset}: scale must be a {scale_type.__name__}, got {type(scale).__name__}"
        )
    return builder(image_size=int(image_size), seed=int(seed), scale=scale)


def write_extracted(
    dataset: str,
    extracted: str | os.PathLike,
    *,
    image_size: int = 224,
    seed: int = 0,
    scale: Any = None,
) -> Path:
    """Write the fixture of ``dataset`` as the folder ``extracted`` (what rule download_dataset
    leaves in ``resources/datasets/<dataset>/extracted``) and return it.

    Built in a temporary sibling and renamed into place: after a failure nothing exists at
    ``extracted``. An existing ``extracted`` is an error (never overwritten). The folder also
    holds :data:`FIXTURE_MARKER` (read by :func:`fixture_info`; no adapter reads it).
    """
    extracted = Path(extracted)
    if extracted.exists() or extracted.is_symlink():
        raise FileExistsError(
            f"{extracted} exists; write_extracted never overwrites a dataset folder: remove it "
            "or choose another folder"
        )
    builder, scale_type = _fixture(dataset)
    scale = scale if scale is not None else scale_type()
    files = members(dataset, image_size=image_size, seed=seed, scale=scale)
    info = {
        "fixture": True,
        "dataset": dataset,
        "image_size": int(image_size),
        "seed": int(seed),
        "scale": {type(scale).__name__: dataclasses.asdict(scale)},
        "files": len(files),
        "source": "clipbias.data.fixtures.write_extracted",
    }
    with atomic_path(extracted, is_dir=True) as tmp:
        write_members(files, tmp)
        (tmp / FIXTURE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return extracted


def fixture_info(extracted: str | os.PathLike) -> dict[str, Any] | None:
    """The marker written by :func:`write_extracted` (dataset, seed, image size, scale), or
    None for a folder that is not a fixture (a real download)."""
    path = Path(extracted) / FIXTURE_MARKER
    if not path.is_file():
        return None
    return json.loads(path.read_text())


__all__ = [
    "FIXTURES",
    "FIXTURE_MARKER",
    "CelebAScale",
    "CounterAnimalClass",
    "CounterAnimalScale",
    "FacetScale",
    "FairFaceScale",
    "FixtureError",
    "GenderBiasScale",
    "ImageNetAScale",
    "ImageNetRScale",
    "WaterbirdsScale",
    "archive_bytes",
    "celeba_members",
    "counteranimal_members",
    "facet_members",
    "facet_row",
    "fairface_members",
    "fixture_image",
    "fixture_info",
    "genderbias_members",
    "genderbias_pairs_csv",
    "imagenet_a_members",
    "imagenet_r_members",
    "members",
    "raw_files",
    "waterbirds_members",
    "write_extracted",
    "write_members",
]
