"""Feature extraction: one shard of a dataset index -> one Parquet feature shard."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from clipbias import __version__
from clipbias.data.crops import crop_boxes
from clipbias.features import build_table, shard_bounds, write_shard
from clipbias.models import LoadedModel

log = logging.getLogger(__name__)


def resolve_layers(spec: str | int | Sequence[int], n_layers: int) -> list[int]:
    """``"all"`` -> every layer; a negative int -k -> the last k layers; a list -> itself."""
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, int):
        if spec >= 0:
            raise ValueError("an integer layers spec must be negative (-k = last k layers)")
        return list(range(max(0, n_layers + spec), n_layers))
    layers = sorted({int(x) for x in spec})
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} layers")
    return layers


def load_image(root: Path, rel: str, preprocess, box: Sequence[int] | None = None) -> torch.Tensor:
    """Open one image (RGB), cut the index row's crop box if it has one (FACET persons,
    ``clipbias.data.crops``), and apply the model's preprocess transform."""
    from clipbias.data.crops import apply_crop

    p = root / rel
    try:
        with Image.open(p) as im:
            return preprocess(apply_crop(im.convert("RGB"), box))
    except OSError as e:
        raise FileNotFoundError(
            f"cannot read image {p} listed in {root / 'index.parquet'}: {e}. "
            "Re-run the dataset rule (download/extract) for this dataset."
        ) from e


def load_images(
    root: Path, paths: Sequence[str], preprocess, boxes: Sequence | None = None
) -> torch.Tensor:
    """Open (crop) and preprocess images (RGB) into one [N, 3, S, S] tensor."""
    boxes = [None] * len(paths) if boxes is None else boxes
    return torch.stack(
        [load_image(root, rel, preprocess, box) for rel, box in zip(paths, boxes, strict=True)]
    )


class _Images(torch.utils.data.Dataset):
    """Index rows -> preprocessed image tensors (for a DataLoader with worker processes)."""

    def __init__(self, root: Path, paths: Sequence[str], preprocess, boxes=None) -> None:
        self.root, self.paths, self.preprocess = root, list(paths), preprocess
        self.boxes = [None] * len(self.paths) if boxes is None else list(boxes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.root, self.paths[i], self.preprocess, self.boxes[i])


def image_batches(
    root: Path,
    paths: Sequence[str],
    preprocess,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    boxes: Sequence | None = None,
) -> Iterator[torch.Tensor]:
    """Preprocessed [B, 3, S, S] batches in index order (``boxes``: crop box per row or None).

    With ``num_workers`` > 0, worker processes decode and resize the next batches while the
    model works on the current one (what keeps a GPU busy); 0 loads in this process.
    ``pin_memory`` (default: when CUDA is available) returns page-locked batches, so the
    host-to-GPU copy can be asynchronous (``.to(device, non_blocking=True)``).
    """
    pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
    if num_workers <= 0:
        for b in range(0, len(paths), batch_size):
            sl = slice(b, b + batch_size)
            batch = load_images(root, paths[sl], preprocess, None if boxes is None else boxes[sl])
            yield batch.pin_memory() if pin else batch
        return
    loader = torch.utils.data.DataLoader(
        _Images(root, paths, preprocess, boxes),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=2,
    )
    yield from loader


#: Largest |Σ_k ĉ_k − ê| allowed per batch (METHODS §1.5 test 1, float32). It holds for every
#: ``precision`` because the parts and their sum are float32 in mixed precision too.
SUM_TOLERANCE = 1e-4


def check_sum(dec, tolerance: float = SUM_TOLERANCE) -> float:
    """Max |Σ ĉ_k − ê| of a :class:`~clipbias.decompose.Decomposition` batch; raises if it
    exceeds ``tolerance`` (the stored features would not sum to the embedding)."""
    err = float((dec.total() - dec.embedding).abs().max()) if len(dec.embedding) else 0.0
    if not err <= tolerance:
        raise RuntimeError(
            f"decomposition sum check failed: max |sum of parts - embedding| = {err:.3g} > "
            f"{tolerance:g} (METHODS §1.5). Set features.precision: float32 and re-run; if it "
            "persists, the model is not decomposed correctly (report it with the model name)."
        )
    return err


def default_workers(threads: int | None, device: torch.device) -> int:
    """Loader worker processes for a job with ``threads`` CPUs: all but one on CUDA (the
    main process feeds the GPU), none on the CPU (the model itself needs the cores)."""
    if device.type != "cuda" or not threads:
        return 0
    return max(0, int(threads) - 1)


def select_splits(
    index: pd.DataFrame, splits: Sequence[str] | None, where: str | os.PathLike = "the index"
) -> pd.DataFrame:
    """The rows of ``index`` whose split is in ``splits`` (all rows for ``None``), in index
    order. Raises ``ValueError`` naming the available splits when one is not in the index
    (e.g. a method's ``shots_split: train`` on a dataset without a train split)."""
    if splits is None:
        return index
    wanted = list(dict.fromkeys(str(s) for s in splits))
    if not wanted:
        raise ValueError("features.splits is empty: name at least one split to extract")
    have = set(index["split"].astype(str).unique())
    missing = [s for s in wanted if s not in have]
    if missing:
        raise ValueError(
            f"split(s) {missing} requested for extraction are not in {where} (it has "
            f"{sorted(have)}). Fix features.splits in the config, or the split parameters "
            "(locate_split, test_split, eval_splits, methods' *_split) that ask for them."
        )
    return index[index["split"].astype(str).isin(wanted)].reset_index(drop=True)


def extract_shard(
    loaded: LoadedModel,
    dataset_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    shard: int,
    n_shards: int,
    layers: str | int | Sequence[int] = "all",
    dtype: str = "float32",
    batch_size: int = 64,
    extra_meta: dict[str, Any] | None = None,
    num_workers: int = 0,
    precision: str = "float32",
    splits: Sequence[str] | None = None,
) -> int:
    """Decompose the images of one index shard and write the Parquet shard atomically.

    ``splits``: extract only the index rows of these splits (``None`` = every row); the
    shards partition the selected rows in index order, see :func:`select_splits`.
    ``num_workers``: image loader processes (see :func:`image_batches`); the output does not
    depend on it. ``precision``: compute precision of :func:`clipbias.decompose.decompose`
    (``float32``; ``float16``/``bfloat16`` autocast). Every batch's parts are checked to sum
    to its embedding (:func:`check_sum`). On CUDA, batches are pinned and copied without
    blocking. Returns the number of rows written.
    """
    from clipbias.decompose import decompose

    root = Path(dataset_dir)
    index = select_splits(pd.read_parquet(root / "index.parquet"), splits, root)
    start, stop = shard_bounds(len(index), n_shards, shard)
    part = index.iloc[start:stop].reset_index(drop=True)

    visual = loaded.model.visual
    n_layers = len(visual.transformer.resblocks)
    stored = resolve_layers(layers, n_layers)
    n_heads = int(visual.transformer.resblocks[0].attn.num_heads)
    width = int(visual.transformer.resblocks[0].attn.embed_dim)
    meta = {
        **loaded.provenance(),
        "clipbias_version": __version__,
        "dataset": root.name,
        "shard": shard,
        "n_shards": n_shards,
        "layers": stored,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "width": width,
        "head_dim": width // n_heads,
        "dim": int(visual.output_dim),
        "dtype": dtype,
        "precision": precision,
        "centring": "shared",
        **(extra_meta or {}),
    }

    not_stored = [l for l in range(n_layers) if l not in stored]
    heads_out, rest_out, emb_out, norm_out, mu_out, sig_out = [], [], [], [], [], []
    t0 = time.perf_counter()
    max_err = 0.0
    cuda = loaded.device.type == "cuda"
    with tqdm(total=len(part), unit="img", desc=f"shard {shard}", mininterval=2.0) as bar:
        boxes = crop_boxes(part)
        batches = image_batches(
            root,
            part["path"].tolist(),
            loaded.preprocess,
            batch_size,
            num_workers,
            cuda,
            None if boxes is None else [tuple(b) for b in boxes.tolist()],
        )
        for images in batches:
            dec = decompose(
                loaded.model, images.to(loaded.device, non_blocking=cuda), precision=precision
            )
            max_err = max(max_err, check_sum(dec))
            heads = dec.heads.float().cpu().numpy()
            keep = heads[:, stored]
            rest = dec.cls.float().cpu().numpy() + dec.mlp.float().cpu().numpy().sum(1)
            if not_stored:
                rest = rest + heads[:, not_stored].sum((1, 2))
            heads_out.append(keep)
            rest_out.append(rest)
            emb_out.append(dec.embedding.float().cpu().numpy())
            norm_out.append(dec.norm.float().cpu().numpy())
            mu_out.append(dec.ln_mu.float().cpu().numpy())
            sig_out.append(dec.ln_sigma.float().cpu().numpy())
            bar.update(len(images))
            bar.set_postfix(img_s=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f}")

    n_heads, dim = meta["n_heads"], meta["dim"]
    if heads_out:
        arrays = [
            np.concatenate(a) for a in (heads_out, rest_out, emb_out, norm_out, mu_out, sig_out)
        ]
    else:  # an empty shard still gets a valid file with the full schema
        arrays = [
            np.zeros((0, len(stored), n_heads, dim), np.float32),
            *(np.zeros((0, dim), np.float32) for _ in range(2)),
            *(np.zeros((0,), np.float32) for _ in range(3)),
        ]
    table = build_table(part, *arrays, layers=stored, dtype=dtype, meta=meta)
    write_shard(table, out_path)
    elapsed = time.perf_counter() - t0
    log.info(
        "shard %d: %d images in %.1f s (%.1f img/s), %s, max |sum of parts - embedding| %.2g",
        shard,
        len(part),
        elapsed,
        len(part) / max(elapsed, 1e-9),
        precision,
        max_err,
    )
    return len(part)
