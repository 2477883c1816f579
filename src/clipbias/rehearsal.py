"""Dress rehearsal of an experiment: random weights of the real architectures, fixture data.

A rehearsal (``config/overlays/rehearsal.yaml``, schema key ``rehearsal``) runs an experiment's
whole DAG offline before a GPU user's first run. It keeps the methods, parameters and
protocols and replaces only what cannot be had here:

* every model given by an open_clip tag or a local checkpoint gets **random weights of its
  exact open_clip architecture** (:func:`make_random_weights`): the same config name, the
  QuickGELU setting and the image normalisation the tag would use, a fixed torch seed. The
  checkpoint's safetensors metadata records all three, and :func:`clipbias.models.load_model`
  applies them, so every rule builds the architecture the real run builds;
* every registry dataset gets a fixture-scale copy in its real on-disk layout
  (:mod:`clipbias.data.fixtures`), which the dataset's real adapter then indexes.

Every artifact of a rehearsal is marked: ``dataset.json`` and the checkpoint carry
:data:`BANNER`, which the feature shards, predictions, located-heads files and tables copy
(:func:`banner_of`), figures and notebooks show it, and all outputs live under
``results/<experiment>-rehearsal/``. The numbers of a rehearsal mean nothing.

The parts of this module that the workflow imports at start-up (:func:`weights_stem`,
:func:`vision_cost`) are pure Python: no torch, no numpy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clipbias import io as _io

log = logging.getLogger(__name__)

#: What every rehearsal artifact says.
BANNER = _io.REHEARSAL_BANNER
#: Suffix of a rehearsal's experiment folder (``results/<experiment>-rehearsal``).
SUFFIX = _io.REHEARSAL_SUFFIX
#: Key of the marker in dataset.json, checkpoint and feature metadata and JSON outputs.
KEY = _io.REHEARSAL_KEY

#: safetensors metadata keys of a random-weight checkpoint.
META_PREFIX = "clipbias."


def weights_stem(name: str, pretrained: str) -> str:
    """File stem of the random weights standing in for model ``name`` with ``pretrained``
    (a tag, or a checkpoint path: its stem plus a hash of the path)."""
    tag = str(pretrained)
    if os.sep in tag or Path(tag).suffix:
        digest = hashlib.sha256(tag.encode()).hexdigest()[:8]
        tag = f"{Path(tag).stem}-{digest}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{name}__{tag}")
    return safe


def _model_config(name: str) -> dict[str, Any] | None:
    """The open_clip model config JSON of ``name`` (clipbias's own configs first), read as a
    file without importing open_clip (the workflow calls this at start-up)."""
    here = Path(__file__).parent / "model_configs" / f"{name}.json"  # open_clip_configs
    candidates = [here]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "model_configs" / f"{name}.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    return None


def vision_cost(name: str) -> float:
    """A proxy of the vision tower's FLOPs per image: layers × width² × tokens.

    Unknown models (no config JSON) count as infinitely expensive, so that
    ``rehearsal.models: smallest`` never picks one it cannot rank."""
    cfg = _model_config(name)
    if not cfg or "vision_cfg" not in cfg:
        return float("inf")
    v = cfg["vision_cfg"]
    size = v.get("image_size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    patch = v.get("patch_size", 16)
    tokens = (int(size) // int(patch)) ** 2 + 1
    return float(v.get("layers", 12)) * float(v.get("width", 768)) ** 2 * tokens


def smallest(models: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The model entry with the cheapest vision tower (:func:`vision_cost`), first on ties."""
    models = list(models)
    return min(models, key=lambda m: vision_cost(m["name"]))


def banner_of(*metas: Mapping[str, Any] | None) -> str | None:
    """:data:`BANNER` when any of ``metas`` (dataset.json, feature or checkpoint metadata,
    a predictions file's info) is marked as a rehearsal, else None."""
    for meta in metas:
        if meta and meta.get(KEY):
            return BANNER
    return None


def mark(meta: dict[str, Any], banner: str | None) -> dict[str, Any]:
    """``meta`` with the rehearsal marker set when ``banner`` is (in place; returned)."""
    if banner:
        meta[KEY] = banner
    return meta


def tag_settings(name: str, pretrained: str | None) -> dict[str, Any]:
    """What loading ``name`` with the tag ``pretrained`` would set besides the weights: the
    QuickGELU activation and the image normalisation (open_clip's pretrained config; a
    checkpoint path or no tag: the model config's own)."""
    import open_clip

    from clipbias.open_clip_configs import register_model_configs
    from clipbias.weights import quickgelu_setting

    register_model_configs()
    settings: dict[str, Any] = {"quick_gelu": False, "image_mean": None, "image_std": None}
    is_tag = pretrained and os.sep not in str(pretrained) and not Path(str(pretrained)).suffix
    if is_tag:
        settings["quick_gelu"] = bool(quickgelu_setting(name, pretrained))
        cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        if not cfg:
            raise ValueError(
                f"{name!r} has no pretrained tag {pretrained!r} in open_clip "
                f"{open_clip.__version__}; known tags: {open_clip.list_pretrained_tags_by_model(name)}"
            )
        settings["image_mean"] = list(cfg["mean"]) if cfg.get("mean") else None
        settings["image_std"] = list(cfg["std"]) if cfg.get("std") else None
    return settings


def make_random_weights(
    name: str, pretrained: str | None, out: str | os.PathLike, seed: int = 0
) -> dict[str, Any]:
    """Write random weights of open_clip model ``name`` to ``out`` (safetensors, atomically).

    The architecture is the one the real run builds from (``name``, ``pretrained``): the
    same config, QuickGELU when the tag needs it, and the tag's image mean/std recorded in the
    metadata (:func:`clipbias.models.load_model` applies them). Returns the metadata."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipbias.io import atomic_path
    from clipbias.open_clip_configs import register_model_configs

    register_model_configs()
    settings = tag_settings(name, pretrained)
    torch.manual_seed(int(seed))
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=settings["quick_gelu"])
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        f"{META_PREFIX}{KEY}": BANNER,
        f"{META_PREFIX}rehearsal_of": f"{name}/{pretrained}",
        f"{META_PREFIX}model": name,
        f"{META_PREFIX}seed": str(int(seed)),
        f"{META_PREFIX}quick_gelu": json.dumps(settings["quick_gelu"]),
        f"{META_PREFIX}image_mean": json.dumps(settings["image_mean"]),
        f"{META_PREFIX}image_std": json.dumps(settings["image_std"]),
        f"{META_PREFIX}open_clip_version": open_clip.__version__,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
        canonical_header(tmp)
    n = sum(v.numel() for v in state.values())
    log.info(
        "random weights of %s (as %s/%s): %.1f M values -> %s", name, name, pretrained, n / 1e6, out
    )
    return meta


def canonical_header(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place.

    safetensors writes its header from a hash map, so two saves of the same tensors and
    metadata can differ in key order, and so in their bytes and sha256. Sorting makes the
    file a function of its content (the sha256 recorded in every feature shard's provenance
    then identifies the random weights). The header keeps its length (padded with spaces, as
    the format allows), so the tensor data are not moved."""
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        canon = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canon) > n:
            raise ValueError(f"{path}: canonical safetensors header longer than the original")
        f.seek(8)
        f.write(canon + b" " * (n - len(canon)))


def checkpoint_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The clipbias settings stored in a safetensors checkpoint's metadata (``{}`` for other
    files or checkpoints without them): ``quick_gelu``, ``image_mean``, ``image_std`` and
    ``rehearsal`` / ``rehearsal_of``."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not key.startswith(META_PREFIX):
            continue
        k = key[len(META_PREFIX) :]
        if k in ("quick_gelu", "image_mean", "image_std"):
            out[k] = json.loads(value)
        elif k in (KEY, "rehearsal_of"):
            out[k] = value
    return out


#: Files under a rehearsal folder that carry no marker of their own, and why.
UNMARKED_OK = {
    ".sha256": "checksum sidecar of a marked feature shard",
    ".lock": "Snakemake/filelock lock files",
}


def _is_marked(path: Path) -> bool:
    """Whether one artifact carries the rehearsal banner (by its file type)."""
    suffix = path.suffix
    if suffix in (".csv", ".md", ".tex", ".html", ".ipynb", ".txt"):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read() if suffix in (".html", ".ipynb") else f.read(1 << 16)
        if suffix == ".csv":
            return text.startswith(f"# {BANNER}")
        return BANNER in text
    if suffix == ".json":
        obj = json.loads(path.read_text())
        return isinstance(obj, dict) and obj.get(KEY) == BANNER
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        return any(BANNER.encode() in v for v in meta.values())
    if suffix == ".safetensors":
        return checkpoint_settings(path).get(KEY) == BANNER or _safetensors_marked(path)
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return BANNER in str(getattr(im, "text", {}).get("Comment", ""))
    if suffix == ".pdf":
        data = path.read_bytes()
        return BANNER.encode("utf-16-be") in data or BANNER.encode() in data
    return False


def _safetensors_marked(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return (f.metadata() or {}).get(f"{META_PREFIX}{KEY}") == BANNER


def unmarked_artifacts(
    root: str | os.PathLike, skip_dirs: Iterable[str] = ("images",)
) -> list[Path]:
    """Files under a rehearsal's results folder that do not carry the banner (for the test
    that every artifact does). Dataset images (folders named in ``skip_dirs``) and the
    files of :data:`UNMARKED_OK` are exempt."""
    out = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if set(path.relative_to(root).parts[:-1]) & set(skip_dirs):
            continue
        if path.suffix in UNMARKED_OK:
            continue
        if not _is_marked(path):
            out.append(path)
    return out
