"""Rule of ``workflow/rules/model.smk``: train the small CLIP of the planted benchmark."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def train_small_clip(
    dataset_dir: str | os.PathLike,
    out_checkpoint: str | os.PathLike,
    out_log: str | os.PathLike,
    model_name: str,
    seed: int,
    train: Mapping[str, Any],
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """Train ``model_name`` from scratch on the dataset's captioned train split."""
    from clipbias.train import train_clip

    train_clip(
        dataset_dir,
        out_checkpoint,
        out_log,
        model_name=model_name,
        seed=int(seed),
        device=device,
        num_threads=threads,
        **dict(train),
    )


def fetch_weights(
    model_name: str, pretrained: str, hf_home: str | os.PathLike, record: str | os.PathLike
) -> None:
    """Download a tag's weights into ``<hf_home>/hub`` (needs internet) and record them."""
    from clipbias.weights import fetch_weights as fetch

    fetch(model_name, pretrained, hf_home, record_path=record)
