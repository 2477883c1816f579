"""Pretrained weights for offline compute nodes: fill the Hugging Face cache, check it, QuickGELU.

On a cluster the compute nodes have no internet. A login-node job (the ``fetch_weights`` rule,
a Snakemake ``localrule``) calls :func:`fetch_weights`, which makes open_clip download the
weights of a (model, pretrained tag) into the Hugging Face cache ``<hf_home>/hub`` and records
what it fetched (repo, file, revision, sha256). Every other job runs with ``HF_HUB_OFFLINE=1``
and ``HF_HOME=<hf_home>``; :func:`check_offline` tells, before any work, whether the weights are
there and otherwise names the command to run. :func:`clipbias.models.load_model` loads from
the same cache (``cache_dir``).

QuickGELU (METHODS §0.1, §1.6): open_clip 3.x only *warns* when the ``openai`` weights (trained
with QuickGELU) are loaded into a GELU config such as ``ViT-B-16``, which silently costs
accuracy. :func:`quickgelu_setting` detects the mismatch: a QuickGELU tag on a GELU config is
fixed by building the model with QuickGELU (as the ``-quickgelu`` variant does); the reverse
is refused.

CLI: ``python -m clipbias.weights fetch|check MODEL PRETRAINED --hf-home DIR [--record FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipbias.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
# open_clip's default file names in a Hugging Face repo (open_clip/constants.py).
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
HF_CONFIG_NAME = "open_clip_config.json"


class WeightsError(RuntimeError):
    """The weights cannot be resolved, fetched or used as asked; the message says what to do."""


class WeightsNotCachedError(WeightsError):
    """The weights are not in the Hugging Face cache of an offline run."""


@dataclass(frozen=True)
class WeightsSource:
    """Where open_clip takes the weights of ``(model_name, pretrained)`` from."""

    model_name: str
    pretrained: str | None
    repo_id: str
    filenames: tuple[str, ...]  # candidate weight files, in open_clip's order of preference
    config_file: str | None  # open_clip_config.json for "hf-hub:" models
    quick_gelu: bool  # the pretrained tag was trained with QuickGELU


def hub_cache_dir(hf_home: str | os.PathLike) -> Path:
    """The Hugging Face hub cache inside ``hf_home`` (``$HF_HOME/hub``, the library default)."""
    return Path(hf_home) / "hub"


def _candidates(filename: str) -> tuple[str, ...]:
    """open_clip tries a safetensors file before a pickle (pretrained._get_safe_alternatives)."""
    if filename == HF_WEIGHTS_NAME:
        return HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def weights_source(model_name: str, pretrained: str | None) -> WeightsSource:
    """Resolve the Hugging Face repo and files of an open_clip tag or an ``hf-hub:`` model."""
    import open_clip

    from clipbias.open_clip_configs import register_model_configs

    if model_name.startswith(HF_HUB_PREFIX):
        repo = model_name[len(HF_HUB_PREFIX) :].strip("/")
        if not repo:
            raise WeightsError("empty repository after 'hf-hub:'")
        return WeightsSource(
            model_name, None, repo, _candidates(HF_WEIGHTS_NAME), HF_CONFIG_NAME, False
        )
    if model_name.startswith(LOCAL_DIR_PREFIX) or not pretrained or Path(pretrained).is_file():
        raise WeightsError(
            f"model {model_name!r} with pretrained {pretrained!r} uses local files or random "
            "weights; there is nothing to fetch into the Hugging Face cache"
        )
    register_model_configs()
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise WeightsError(
            f"{pretrained!r} is not an open_clip pretrained tag of {model_name!r}; known tags: "
            f"{', '.join(tags) or 'none'}"
        )
    hub = cfg.get("hf_hub", "")
    if not hub:
        raise WeightsError(
            f"tag {pretrained!r} of {model_name!r} has no Hugging Face source (only "
            f"{cfg.get('url') or 'a local file'}); download the checkpoint by hand and pass its "
            "path as pretrained"
        )
    # "org/repo/" (default file) or "org/repo/file.bin", as open_clip splits it
    repo, filename = os.path.split(hub)
    return WeightsSource(
        model_name,
        pretrained,
        repo,
        _candidates(filename or HF_WEIGHTS_NAME),
        None,
        bool(cfg.get("quick_gelu", False)),
    )


def quickgelu_setting(model_name: str, pretrained: str | None) -> bool:
    """``force_quick_gelu`` for open_clip: True when a QuickGELU tag meets a GELU config.

    The ``openai`` tags were trained with QuickGELU; the plain ``ViT-B-16``/``ViT-L-14``
    configs use GELU, and open_clip 3.x only warns (METHODS §0.1, §1.6). Returns True in that
    case (the model is built with QuickGELU, as ``<name>-quickgelu`` would be) and logs it.
    Raises :class:`WeightsError` for a QuickGELU config with a GELU tag. ``hf-hub:`` models,
    local files and random weights carry their own config: False.
    """
    import open_clip

    from clipbias.open_clip_configs import register_model_configs

    if model_name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) or not pretrained:
        return False
    if Path(pretrained).is_file() or os.path.sep in pretrained:
        return False
    register_model_configs()
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        return False  # not a tag: open_clip itself reports it when loading
    model_cfg = open_clip.get_model_config(model_name) or {}
    tag_q, model_q = bool(tag_cfg.get("quick_gelu", False)), bool(model_cfg.get("quick_gelu"))
    if tag_q and not model_q:
        log.warning(
            "pretrained tag %r of %s was trained with QuickGELU but the %s config uses GELU; "
            "building the model with QuickGELU (the same as %s-quickgelu)",
            pretrained,
            model_name,
            model_name,
            model_name,
        )
        return True
    if model_q and not tag_q:
        raise WeightsError(
            f"model config {model_name!r} uses QuickGELU but pretrained tag {pretrained!r} was "
            "trained with GELU; use the model name without '-quickgelu'"
        )
    return False


def _cached(repo_id: str, filename: str, hub: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _fetch_command(model_name: str, pretrained: str | None, hf_home: str | os.PathLike) -> str:
    tag = f" {pretrained}" if pretrained else ""
    return f"python -m clipbias.weights fetch {model_name}{tag} --hf-home {hf_home}"


def check_offline(
    model_name: str, pretrained: str | None, hf_home: str | os.PathLike
) -> dict[str, Path]:
    """Make sure the weights (and an ``hf-hub:`` model's config) are in ``<hf_home>/hub``.

    Returns ``{"weights": path, "config": path}`` (config only for ``hf-hub:``). Raises
    :class:`WeightsNotCachedError` naming the repo, the cache folder and the command to run on
    a machine with internet otherwise. Touches no network.
    """
    src = weights_source(model_name, pretrained)
    hub = hub_cache_dir(hf_home)
    found: dict[str, Path] = {}
    weights = next((p for f in src.filenames if (p := _cached(src.repo_id, f, hub))), None)
    if weights is not None:
        found["weights"] = weights
    if src.config_file:
        config = _cached(src.repo_id, src.config_file, hub)
        if config is not None:
            found["config"] = config
    complete = "weights" in found and (not src.config_file or "config" in found)
    if not complete:
        what = f"{model_name}" + (f" / {pretrained}" if pretrained else "")
        files = " or ".join(src.filenames) + (f" and {src.config_file}" if src.config_file else "")
        raise WeightsNotCachedError(
            f"pretrained weights of {what} (Hugging Face repo {src.repo_id}, {files}) are not in "
            f"the Hugging Face cache {hub}. Compute nodes have no internet: fetch them first on "
            "a machine that has it (on SLURM, the login node) with the workflow's fetch_weights "
            "rule (`snakemake fetch_weights`, a localrule) or "
            f"`{_fetch_command(model_name, pretrained, hf_home)}`, then rerun with the same "
            "HF_HOME."
        )
    return found


def _revision(path: Path) -> str | None:
    """The commit folder of a cached file (``.../snapshots/<revision>/<file>``)."""
    parts = path.parts
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def _file_record(path: Path) -> dict[str, Any]:
    return {
        "file": path.name,
        "revision": _revision(path),
        "path": str(path),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def fetch_weights(
    model_name: str,
    pretrained: str | None,
    hf_home: str | os.PathLike,
    record_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fill ``<hf_home>/hub`` with the weights of ``(model_name, pretrained)`` through open_clip.

    For a tag, open_clip's own ``download_pretrained`` is called with the cache folder (so
    the files and names are exactly those :func:`clipbias.models.load_model` later reads);
    for ``hf-hub:org/repo``, its config and weights. Already cached files are not downloaded
    again (this also works with ``HF_HUB_OFFLINE=1``). Returns (and writes to
    ``record_path`` as JSON, if given) ``{"model", "pretrained", "repo_id", "file",
    "revision", "path", "size", "sha256", "config", "quick_gelu", "force_quick_gelu",
    "hf_home", "open_clip_version", "huggingface_hub_version"}``.
    """
    import huggingface_hub
    import open_clip
    from open_clip import pretrained as oc_pretrained

    src = weights_source(model_name, pretrained)
    hub = hub_cache_dir(hf_home)
    hub.mkdir(parents=True, exist_ok=True)
    config_record = None
    try:
        if src.config_file:
            cfg_path = oc_pretrained.download_pretrained_from_hf(
                src.repo_id, filename=src.config_file, cache_dir=str(hub)
            )
            config_record = _file_record(Path(cfg_path))
            path = oc_pretrained.download_pretrained_from_hf(src.repo_id, cache_dir=str(hub))
        else:
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            path = oc_pretrained.download_pretrained(cfg, cache_dir=str(hub))
    except Exception as exc:  # open_clip wraps hub errors in several types
        raise WeightsError(
            f"could not fetch {model_name} / {pretrained} from Hugging Face repo {src.repo_id} "
            f"into {hub}: {exc}. This needs internet (run it on the login node)."
        ) from exc
    if not path or not Path(path).is_file():
        raise WeightsError(f"open_clip returned no weights file for {model_name} / {pretrained}")
    record = {
        "model": model_name,
        "pretrained": pretrained,
        "repo_id": src.repo_id,
        **_file_record(Path(path)),
        "config": config_record,
        "quick_gelu": src.quick_gelu,
        "force_quick_gelu": quickgelu_setting(model_name, pretrained),
        "hf_home": str(hf_home),
        "open_clip_version": open_clip.__version__,
        "huggingface_hub_version": huggingface_hub.__version__,
    }
    log.info("weights of %s / %s: %s (sha256 %s)", model_name, pretrained, path, record["sha256"])
    if record_path is not None:
        record_path = Path(record_path)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipbias.weights",
        description="Fetch pretrained open_clip weights into a Hugging Face cache, or check "
        "that an offline run will find them.",
    )
    parser.add_argument("action", choices=["fetch", "check"])
    parser.add_argument("model", help="open_clip model name, e.g. ViT-B-16 or hf-hub:org/repo")
    parser.add_argument("pretrained", nargs="?", default=None, help="pretrained tag")
    parser.add_argument("--hf-home", default=os.environ.get("HF_HOME", "resources/hf"))
    parser.add_argument("--record", default=None, help="JSON file for the fetch record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "fetch":
            rec = fetch_weights(args.model, args.pretrained, args.hf_home, args.record)
            log.info("fetched %s", json.dumps(rec, indent=2))
        else:
            found = check_offline(args.model, args.pretrained, args.hf_home)
            log.info("found %s", {k: str(v) for k, v in found.items()})
    except WeightsError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
