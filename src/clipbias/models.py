"""Model loading: one place that wraps open_clip and returns fresh objects (no module state)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from clipbias.io import sha256_file
from clipbias.open_clip_configs import MODEL_CONFIG_DIR, register_model_configs
from clipbias.weights import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, quickgelu_setting

log = logging.getLogger(__name__)


def resolve_device(device: str | None = None) -> torch.device:
    """``cuda`` when available (or when asked), else ``cpu``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    checkpoint_sha256: str | None
    device: torch.device
    quick_gelu_forced: bool = False
    #: "<model>/<tag>" when these are random weights standing in for a tag (a rehearsal)
    rehearsal_of: str | None = None

    def provenance(self) -> dict[str, Any]:
        from clipbias.rehearsal import BANNER, KEY

        pp = getattr(self.model.visual, "preprocess_cfg", None)
        rehearsal = {KEY: BANNER, "rehearsal_of": self.rehearsal_of} if self.rehearsal_of else {}
        return {
            **rehearsal,
            "model": self.name,
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "quick_gelu_forced": self.quick_gelu_forced,
            "preprocess": repr(self.preprocess) if pp is None else pp,
            "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__,
        }


def load_model(
    name: str,
    pretrained: str | None = None,
    device: str | None = None,
    image_mean: tuple[float, float, float] | None = None,
    image_std: tuple[float, float, float] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    force_quick_gelu: bool | None = None,
) -> LoadedModel:
    """Create an open_clip model in eval mode with its eval transform and tokenizer.

    ``pretrained`` is an open_clip tag (e.g. ``laion2b_s34b_b88k``), a path to a local
    checkpoint (``.safetensors`` or a ``weights_only`` state dict), or ``None`` for random
    weights; ``name`` may also be ``hf-hub:org/repo`` (config and weights from that repo).
    Local checkpoints are identified by their sha256 in provenance records.

    ``cache_dir``: the Hugging Face hub cache to read (``<HF_HOME>/hub``,
    :func:`clipbias.weights.hub_cache_dir`); with ``HF_HUB_OFFLINE=1`` nothing is downloaded.
    ``force_quick_gelu``: None detects the ``openai``/QuickGELU mismatch and fixes it
    (:func:`clipbias.weights.quickgelu_setting`, METHODS §0.1/§1.6).
    """
    register_model_configs()
    has_schema = name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))
    if not has_schema and name not in open_clip.list_models():
        raise ValueError(
            f"unknown model {name!r}: not an open_clip model and not in {MODEL_CONFIG_DIR}. "
            f"Known: {', '.join(open_clip.list_models()[:10])}, ..."
        )
    sha = None
    stored: dict[str, Any] = {}
    if pretrained and (os.path.sep in str(pretrained) or Path(pretrained).suffix):
        from clipbias.rehearsal import checkpoint_settings

        p = Path(pretrained)
        if not p.is_file():
            raise FileNotFoundError(
                f"checkpoint {p} does not exist; train it (snakemake train_small_clip) or "
                f"give an open_clip pretrained tag"
            )
        sha = sha256_file(p)
        pretrained = str(p)
        # settings a checkpoint records (clipbias.rehearsal.make_random_weights): the
        # activation and normalisation of the tag it stands in for
        stored = checkpoint_settings(p)
        if image_mean is None and stored.get("image_mean"):
            image_mean = tuple(stored["image_mean"])
        if image_std is None and stored.get("image_std"):
            image_std = tuple(stored["image_std"])
        if force_quick_gelu is None and "quick_gelu" in stored:
            force_quick_gelu = bool(stored["quick_gelu"])
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {}
    if image_mean is not None:
        kwargs["image_mean"] = tuple(image_mean)
    if image_std is not None:
        kwargs["image_std"] = tuple(image_std)
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if force_quick_gelu is None:
        force_quick_gelu = quickgelu_setting(name, pretrained if sha is None else None)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=dev, force_quick_gelu=force_quick_gelu, **kwargs
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(
        name, **({"cache_dir": str(cache_dir)} if cache_dir is not None else {})
    )
    return LoadedModel(
        model,
        preprocess,
        tokenizer,
        name,
        pretrained,
        sha,
        dev,
        bool(force_quick_gelu),
        rehearsal_of=stored.get("rehearsal_of"),
    )
