"""Person crops as index columns (FACET, METHODS §6.1): box arithmetic and the crop itself.

Contract (docs/DESIGN.md, "Dataset folder"): an index may carry the four int64 columns
``crop_x0, crop_y0, crop_x1, crop_y1``. They are a pixel box in PIL's convention (left, top,
right, bottom; right/bottom exclusive) inside the image named by ``path``. When they are
present, the feature extractor opens the image and uses :func:`apply_crop` on it before the
model's preprocess transform; rows without a crop do not have these columns at all. Several
rows (persons) may share one image ``path``; ``image_id`` stays unique.

Nothing here imports torch: the adapters run in the light download environment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clipbias.data.index import CROP_COLUMNS

__all__ = ["CROP_COLUMNS", "CropError", "apply_crop", "crop_boxes", "enlarge_box", "row_box"]

Box = tuple[int, int, int, int]


class CropError(ValueError):
    """A crop box is malformed or does not fit its image; the message names both."""


def enlarge_box(
    x: float,
    y: float,
    width: float,
    height: float,
    image_width: int,
    image_height: int,
    margin: float = 0.1,
) -> Box:
    """Box ``(x, y, width, height)`` enlarged by ``margin`` on each side, clipped to the image.

    Each side moves out by ``margin`` times the box's own extent along that axis (10 % of the
    width to the left and to the right, 10 % of the height up and down; METHODS §6.1), then
    the box is clipped to ``[0, image_width] x [0, image_height]``. The result is rounded
    outwards to whole pixels (floor of the left/top edge, ceil of the right/bottom edge) and
    returned as ``(x0, y0, x1, y1)`` with x1/y1 exclusive, as :meth:`PIL.Image.Image.crop`
    takes it.
    """
    values = (x, y, width, height)
    if not all(math.isfinite(float(v)) for v in values):
        raise CropError(f"box {values} has a non-finite coordinate")
    if width <= 0 or height <= 0:
        raise CropError(f"box {values} has a non-positive width or height")
    if image_width <= 0 or image_height <= 0:
        raise CropError(f"image size {(image_width, image_height)} must be positive")
    if margin < 0:
        raise CropError(f"margin must be >= 0, got {margin}")
    dx, dy = margin * width, margin * height
    x0 = max(0, math.floor(x - dx))
    y0 = max(0, math.floor(y - dy))
    x1 = min(int(image_width), math.ceil(x + width + dx))
    y1 = min(int(image_height), math.ceil(y + height + dy))
    if x1 <= x0 or y1 <= y0:
        raise CropError(
            f"box {values} lies outside the {image_width}x{image_height} image after clipping"
        )
    return int(x0), int(y0), int(x1), int(y1)


def has_crops(columns: Any) -> bool:
    """True when the index (a DataFrame or a list of column names) carries crop columns."""
    names = set(columns.columns if isinstance(columns, pd.DataFrame) else columns)
    return any(c in names for c in CROP_COLUMNS)


def crop_boxes(index: pd.DataFrame) -> np.ndarray | None:
    """``[N, 4]`` int64 boxes of an index (``None`` when it has no crop columns)."""
    if not has_crops(index):
        return None
    missing = [c for c in CROP_COLUMNS if c not in index.columns]
    if missing:
        raise CropError(
            f"index has some crop columns but not {missing}; need all of {CROP_COLUMNS}"
        )
    return index[list(CROP_COLUMNS)].to_numpy(np.int64)


def row_box(row: Mapping[str, Any]) -> Box | None:
    """The crop box of one index row (a mapping or a pandas row), or ``None`` without crops."""
    if not all(c in row for c in CROP_COLUMNS):
        return None
    return tuple(int(row[c]) for c in CROP_COLUMNS)  # type: ignore[return-value]


def apply_crop(image: Image.Image, box: Box | None) -> Image.Image:
    """``image`` cut to ``box`` (``(x0, y0, x1, y1)``, x1/y1 exclusive); the image itself if None.

    The box must lie inside the image: a box that does not means the index was built from
    other image files, so this raises instead of silently padding.
    """
    if box is None:
        return image
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = image.size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise CropError(
            f"crop box {(x0, y0, x1, y1)} does not fit the {w}x{h} image; the index and the "
            "image files disagree: rebuild the dataset index"
        )
    return image.crop((x0, y0, x1, y1))
