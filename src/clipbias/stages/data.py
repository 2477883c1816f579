"""Rules of ``workflow/rules/data.smk``: the planted benchmark, real-dataset downloads and
your own image folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def make_planted_dataset(
    out_dir: str | os.PathLike, seed: int, synth: Mapping[str, Any], name: str = "planted"
) -> None:
    """Generate the planted-bias dataset folder (docs/DESIGN.md) for one seed."""
    from clipbias.synth import generate

    generate(out_dir, seed=int(seed), name=name, **dict(synth))


def prepare_folder_dataset(
    dataset: str,
    folder: Mapping[str, Any],
    dataset_root: str | os.PathLike,
    splits: list[str] | tuple[str, ...] = (),
    locate_split: str | None = None,
) -> None:
    """Your own images (``kind: folder``): check the folder and its index table, decode every
    image and write ``index.parquet`` + ``dataset.json`` (:mod:`clipbias.data.folder`)."""
    from clipbias.data.folder import build_folder_dataset

    build_folder_dataset(
        dataset, folder, dataset_root, splits=list(splits), locate_split=locate_split
    )


def download_dataset(
    registry: str | os.PathLike,
    dataset: str,
    resources_dir: str | os.PathLike,
    out: str | os.PathLike,
    lock_file: str | os.PathLike | None = None,
) -> None:
    """Download (or find, for gated datasets), verify and unpack ``dataset``.

    ``out`` is the folder ``<resources_dir>/<dataset>/extracted``; it appears only after
    every file was verified and unpacked.
    """
    from clipbias.data.download import fetch_dataset
    from clipbias.data.registry import get_entry, load_registry

    entry = get_entry(load_registry(registry), dataset)
    if entry.derived:
        raise ValueError(
            f"dataset {dataset!r} is derived from {entry.derive['components']} and has no "
            "files to download; its folder is built by rule derive_dataset"
        )
    base = Path(resources_dir) / dataset
    root = fetch_dataset(entry, base / "raw", out, lock_file)
    log.info("dataset %s ready at %s", dataset, root)


def make_rehearsal_dataset(
    registry: str | os.PathLike,
    dataset: str,
    out: str | os.PathLike,
    image_size: int = 224,
    seed: int = 0,
) -> None:
    """A rehearsal's stand-in for rule download_dataset: the fixture-scale copy of
    ``dataset`` in its real on-disk layout (:func:`clipbias.data.fixtures.write_extracted`),
    written to ``out`` (``<rehearsal datasets_dir>/<dataset>/extracted``)."""
    from clipbias.data.fixtures import write_extracted
    from clipbias.data.registry import get_entry, load_registry

    entry = get_entry(load_registry(registry), dataset)
    if entry.derived:
        raise ValueError(f"dataset {dataset!r} is derived; rule derive_dataset builds it")
    write_extracted(dataset, Path(out), image_size=int(image_size), seed=int(seed))
    log.info("rehearsal fixture of %s at %s", dataset, out)


def _mark_if_fixture(dataset_root: Path, sources: list[Path], class_cap: int = 0) -> None:
    """Copy the rehearsal marker into ``dataset.json`` when any source is a fixture (its
    extracted folder holds the fixture marker, or its dataset.json is marked). ``class_cap``
    (a rehearsal's ``class_text_cap``): a dataset classified among the 1,000 ImageNet-1k
    classes gets a ``classifier_subset`` of at most that many (its own classes included,
    :func:`clipbias.labels.capped_imagenet_subset`)."""
    from clipbias.data.fixtures import FIXTURE_MARKER
    from clipbias.io import REHEARSAL_BANNER as BANNER
    from clipbias.io import REHEARSAL_KEY as KEY
    from clipbias.io import read_json, write_json

    marked = any(
        (s / FIXTURE_MARKER).is_file()
        or ((s / "dataset.json").is_file() and read_json(s / "dataset.json").get(KEY))
        for s in sources
    )
    if marked:
        from clipbias.labels import capped_imagenet_subset

        meta_path = dataset_root / "dataset.json"
        meta = {**read_json(meta_path), KEY: BANNER}
        if class_cap and meta.get("classifier_classes") == "imagenet_1k" and class_cap < 1000:
            meta["classifier_subset"] = capped_imagenet_subset(
                meta["imagenet_1k_indices"], class_cap
            )
            meta["classifier_subset_why"] = f"rehearsal: class prompts capped at {class_cap}"
        write_json(meta_path, meta)


def prepare_dataset(
    registry: str | os.PathLike,
    dataset: str,
    extracted: str | os.PathLike,
    dataset_root: str | os.PathLike,
    rehearsal: bool = False,
    class_cap: int = 0,
) -> None:
    """Run the dataset's adapter: extracted files -> index.parquet + dataset.json (marked as
    a rehearsal when ``extracted`` is a fixture). Outside a rehearsal a fixture is refused:
    a real experiment never indexes fixture data as if it were the download."""
    from clipbias.data.adapters import build_index
    from clipbias.data.download import check_layout
    from clipbias.data.fixtures import fixture_info
    from clipbias.data.registry import get_entry, load_registry

    if not rehearsal and fixture_info(extracted) is not None:
        raise ValueError(
            f"{extracted} holds a rehearsal fixture (clipbias.data.fixtures), not the download "
            f"of {dataset!r}; delete that folder and rerun, so that rule download_dataset "
            "fetches the real files"
        )
    entry = get_entry(load_registry(registry), dataset)
    source = check_layout(entry, Path(extracted))
    build_index(entry, source, dataset_root)
    _mark_if_fixture(Path(dataset_root), [Path(extracted)], class_cap if rehearsal else 0)


def derive_dataset(
    registry: str | os.PathLike,
    dataset: str,
    resources_dir: str | os.PathLike,
    dataset_root: str | os.PathLike,
) -> None:
    """Build the derived dataset ``dataset`` (``clipbias.data.derive``) from the prepared
    folders ``<resources_dir>/<component>`` of its components."""
    from clipbias.data.derive import build_derived
    from clipbias.data.registry import get_entry, load_registry

    entry = get_entry(load_registry(registry), dataset)
    if not entry.derived:
        raise ValueError(f"dataset {dataset!r} has no 'derive' entry in {registry}")
    roots = {c: Path(resources_dir) / c for c in entry.components}
    build_derived(dataset, entry.derive, roots, dataset_root)
    _mark_if_fixture(Path(dataset_root), list(roots.values()))
