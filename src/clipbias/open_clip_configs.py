"""The model configs shipped with clipbias (``model_configs/*.json``: the planted benchmark's
small ViTs), registered with open_clip. Below both :mod:`clipbias.models` (loading) and
:mod:`clipbias.weights` (the Hugging Face cache), which read it.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(str(resources.files("clipbias") / "model_configs"))


def register_model_configs(path: str | os.PathLike | None = None) -> list[str]:
    """Register the model config JSONs shipped with clipbias (or in ``path``) with open_clip.

    Returns the registered model names (file stems).
    """
    folder = Path(path) if path is not None else MODEL_CONFIG_DIR
    names = sorted(p.stem for p in folder.glob("*.json"))
    if names and not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(folder)
    return names
