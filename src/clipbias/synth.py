"""Planted-bias image benchmark: procedurally rendered shapes on land/water backgrounds.

The target is the object's shape (``classes``, default circle vs triangle). The spurious
attribute is the background family (``land`` / ``water``, two place sub-types each, as
Waterbirds' places: grass, forest / ocean, lake); among the scene images of ``train`` and
all of ``val`` class ``c`` appears on its *majority* background ``c % 2`` with probability
``spurious_correlation``. ``test`` has equal counts in every class x background cell. A
second attribute, the object colour (``red`` / ``yellow``), is the protected attribute:
class ``c`` has its associated colour ``c % 2`` with probability ``protected_correlation``
(0.5 = independent of the class) in every split and every class x background cell.

``plain_fraction`` of the *train* split are plain drawings: the object on a light paper
background (``attr_background = attr_place = group = -1``, classes balanced) with
drawing-style captions ("a drawing of a triangle", "a circle icon") that never say "photo".
They stand for the object-centric part of web data: they let the small CLIP learn the
shapes, while the class prompt "a photo of a {class}" (only used for scene photos) absorbs
the background correlation. Without them, a CLIP trained from scratch for a few minutes
learns the background and colour but no shape.

Shapes are not equal-area (circle radius r, triangle circumradius r): the area difference is
a low-level cue the contrastive training can bootstrap from (equal-area circle/square is not
learned at all in the compute budget); it is class-determined, not spurious.

All counts are allocated exactly (rounded), then rows are shuffled, so the realised
correlations equal the configured ones up to rounding. Rendering is vectorised numpy over
batches; everything is drawn from one ``numpy.random.Generator`` per split seeded with
``(seed, split number)``, so the same seed gives byte-identical PNGs, index and captions.

The folder follows docs/DESIGN.md ("Dataset folder"), plus ``captions.parquet``
(``image_id``, ``caption``) for the ``train`` split: web-like captions for the scene images
that mostly name only the object (``caption_mix["object"]``), sometimes object and
background, sometimes only the background.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipbias import __version__
from clipbias.io import atomic_path

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
BACKGROUNDS = ("land", "water")
PLACES = ("grass", "forest", "ocean", "lake")  # place p belongs to background p // 2
COLOURS = ("red", "yellow")
SPLITS = ("train", "val", "test")
RENDER_BATCH = 1000  # images rendered per numpy batch; part of the seed -> output mapping

DEFAULT_CAPTION_MIX = {"object": 0.7, "object_background": 0.2, "background": 0.1}

# RGB in [0, 1]
_OBJECT_RGB = {"red": (0.80, 0.16, 0.14), "yellow": (0.90, 0.78, 0.18)}

# Caption vocabulary. ``{obj}`` = "[colour ]shape", ``{bg}`` = background noun phrase,
# ``{bga}`` = background adjective-like word (used as "a {bga} background").
OBJECT_TEMPLATES = (
    "a photo of a {obj}",
    "a photo of a {obj}",
    "a {obj}",
    "a picture of a {obj}",
    "an image of a {obj}",
    "a photo of the {obj}",
    "a small {obj}",
    "a {obj} outdoors",
)
# captions of the plain drawings (no background in the image, none in the caption)
DRAWING_TEMPLATES = (
    "a drawing of a {obj}",
    "a {obj} icon",
    "clip art of a {obj}",
    "a sketch of a {obj}",
    "a {obj} shape",
    "a simple {obj}",
)
OBJECT_BACKGROUND_TEMPLATES = (
    "a {obj} on a {bga} background",
    "a photo of a {obj} on {bg}",
    "a {obj} in front of {bg}",
    "a picture of a {obj} over {bg}",
)
BACKGROUND_TEMPLATES = (
    "a photo of {bg}",
    "{bg}",
    "a {bga} background",
    "a picture of {bg}",
)
# per place: (noun phrases, adjective-like words). The family word is always allowed.
_PLACE_WORDS = {
    "grass": (("land", "grass", "a field"), ("land", "grass")),
    "forest": (("land", "a forest", "the woods"), ("land", "forest")),
    "ocean": (("water", "the ocean", "the sea"), ("water", "ocean")),
    "lake": (("water", "a lake"), ("water", "lake")),
}
CLASS_PROMPT = "a photo of a {}"
BACKGROUND_PROMPT = "a photo of {}"


def _fix_articles(text: str) -> str:
    """Replace "a <vowel word>" by "an <vowel word>" (templates are written with "a")."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


# ----------------------------------------------------------------------------- allocation


def _split_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Integers summing to ``total`` proportional to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    base = np.floor(raw).astype(int)
    rem = total - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:rem]] += 1
    return base.tolist()


def _allocate_split(
    rng: np.random.Generator,
    n: int,
    n_classes: int,
    spurious_correlation: float | None,
    protected_correlation: float,
    n_plain: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (label, background, colour) counts for one split, shuffled.

    ``spurious_correlation=None`` means balanced class x background cells (test split).
    ``n_plain`` of the ``n`` rows get background ``-1`` (plain drawing, balanced classes).
    """
    labels, bgs, cols = [], [], []
    n_plain = int(n_plain)
    for c, k in enumerate(_split_counts(n_plain, [1.0] * n_classes) if n_plain else []):
        assoc = c % 2
        n_assoc, n_other = _split_counts(k, [protected_correlation, 1.0 - protected_correlation])
        labels.append(np.full(k, c))
        bgs.append(np.full(k, -1))
        cols.append(np.r_[np.full(n_assoc, assoc), np.full(n_other, 1 - assoc)])
    n = n - n_plain
    if spurious_correlation is None:
        cells = _split_counts(n, [1.0] * (n_classes * 2))
        cell_counts = {(c, b): cells[c * 2 + b] for c in range(n_classes) for b in range(2)}
    else:
        per_class = _split_counts(n, [1.0] * n_classes)
        cell_counts = {}
        for c in range(n_classes):
            maj = c % 2
            n_maj, n_min = _split_counts(
                per_class[c], [spurious_correlation, 1.0 - spurious_correlation]
            )
            cell_counts[(c, maj)] = n_maj
            cell_counts[(c, 1 - maj)] = n_min
    for c in range(n_classes):
        for b in range(2):
            k = cell_counts[(c, b)]
            assoc = c % 2
            n_assoc, n_other = _split_counts(
                k, [protected_correlation, 1.0 - protected_correlation]
            )
            labels.append(np.full(k, c))
            bgs.append(np.full(k, b))
            cols.append(np.r_[np.full(n_assoc, assoc), np.full(n_other, 1 - assoc)])
    label = np.concatenate(labels).astype(np.int64)
    bg = np.concatenate(bgs).astype(np.int64)
    col = np.concatenate(cols).astype(np.int64)
    perm = rng.permutation(len(label))
    return label[perm], bg[perm], col[perm]


# ------------------------------------------------------------------------------ rendering


def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """[size, grid] linear interpolation weights from a ``grid`` lattice to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * grid - 0.5
    pos = np.clip(pos, 0, grid - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, grid - 1)
    frac = pos - lo
    m = np.zeros((size, grid))
    m[np.arange(size), lo] += 1 - frac
    m[np.arange(size), hi] += frac
    return m


def _smooth_noise(rng: np.random.Generator, b: int, size: int, grid: int) -> np.ndarray:
    """[b, size, size] bilinearly upsampled standard normal noise on a ``grid`` lattice."""
    m = _interp_matrix(size, grid)
    noise = rng.standard_normal((b, grid, grid))
    return np.einsum("sg,bgh,th->bst", m, noise, m)


def _waves(
    rng: np.random.Generator, b: int, size: int, freq: tuple[float, float], wobble: float
) -> np.ndarray:
    """[b, size, size] roughly horizontal sinusoidal waves with random tilt and phase."""
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    yy, xx = yy / size, xx / size
    tilt = rng.uniform(-0.35, 0.35, b)[:, None, None]
    f = rng.uniform(*freq, b)[:, None, None]
    ph = rng.uniform(0, 2 * np.pi, b)[:, None, None]
    f2 = rng.uniform(0.8, 2.0, b)[:, None, None]
    ph2 = rng.uniform(0, 2 * np.pi, b)[:, None, None]
    y = yy[None] * np.cos(tilt) + xx[None] * np.sin(tilt)
    x = xx[None] * np.cos(tilt) - yy[None] * np.sin(tilt)
    return np.sin(2 * np.pi * f * y + wobble * np.sin(2 * np.pi * f2 * x + ph2) + ph)


def _render_place(rng: np.random.Generator, place: str, b: int, size: int) -> np.ndarray:
    """[b, size, size, 3] float background texture in [0, 1] (before global jitter)."""

    def base(rgb: tuple[float, float, float], jitter: float) -> np.ndarray:
        return (np.asarray(rgb) + rng.uniform(-jitter, jitter, (b, 3)))[:, None, None, :]

    if place == "grass":
        col = base((0.36, 0.58, 0.22), 0.05)
        m = _interp_matrix(size, 3)
        streaks = np.einsum("sg,bgx->bsx", m, rng.standard_normal((b, 3, size)))
        lum = 0.08 * _smooth_noise(rng, b, size, 4) + 0.09 * streaks
        img = col * (1 + lum[..., None])
    elif place == "forest":
        green = base((0.17, 0.38, 0.15), 0.04)
        brown = base((0.36, 0.26, 0.13), 0.04)
        mix = 1 / (1 + np.exp(-3 * _smooth_noise(rng, b, size, 5)))
        lum = 0.12 * _smooth_noise(rng, b, size, 9)
        img = (green * (1 - mix[..., None]) + brown * mix[..., None]) * (1 + lum[..., None])
    elif place == "ocean":
        col = base((0.10, 0.27, 0.58), 0.04)
        w = _waves(rng, b, size, (2.5, 4.5), 1.2)
        crest = np.clip(w - 0.75, 0, None)[..., None] * 1.2
        img = col * (1 + 0.18 * w[..., None]) + crest * (1 - col)
    elif place == "lake":
        col = base((0.26, 0.50, 0.64), 0.05)
        w = _waves(rng, b, size, (1.2, 2.5), 0.6)
        lum = 0.08 * w + 0.06 * _smooth_noise(rng, b, size, 4)
        img = col * (1 + lum[..., None])
    else:  # pragma: no cover - guarded by PLACES
        raise ValueError(place)
    return img


def _render_plain(rng: np.random.Generator, b: int, size: int) -> np.ndarray:
    """[b, size, size, 3] light paper-like background of the plain drawings."""
    col = (0.90 + rng.uniform(-0.06, 0.04, (b, 1)) + rng.uniform(-0.03, 0.03, (b, 3)))[
        :, None, None, :
    ]
    return col * (1 + 0.03 * _smooth_noise(rng, b, size, 4))[..., None]


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance-like field (pixels, < 0 inside) of ``shape`` with size ``r``.

    ``r`` is the radius of the circle, the half side of the square, the circumradius of the
    (equilateral) triangle, the outer radius of the ring and the half length of the cross
    arms and of the bar; ``u, v`` are coordinates in the object's rotated frame.
    """
    if shape == "circle":
        return np.sqrt(u * u + v * v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - r
    if shape == "triangle":
        d = None
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            dk = u * np.cos(a) + v * np.sin(a) - r / 2
            d = dk if d is None else np.maximum(d, dk)
        return d
    if shape == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.7 * r) - 0.3 * r
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        w = 0.3 * r
        return np.minimum(np.maximum(au - r, av - w), np.maximum(au - w, av - r))
    if shape == "bar":
        return np.maximum(np.abs(u) - r, np.abs(v) - 0.3 * r)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _render_batch(
    rng: np.random.Generator,
    shape_idx: np.ndarray,
    classes: Sequence[str],
    place: np.ndarray,
    colour: np.ndarray,
    size: int,
    noise_std: float,
    object_scale: tuple[float, float],
) -> np.ndarray:
    """uint8 [b, size, size, 3] images."""
    b = len(shape_idx)
    img = np.zeros((b, size, size, 3))
    for p, name in enumerate(PLACES):
        sel = np.flatnonzero(place == p)
        if len(sel):
            img[sel] = _render_place(rng, name, len(sel), size)
    sel = np.flatnonzero(place < 0)
    if len(sel):
        img[sel] = _render_plain(rng, len(sel), size)

    # object geometry: centre, size r (see _shape_sdf), rotation; shapes may touch the border
    r = rng.uniform(*object_scale, b) * size
    margin = r * 0.9
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    theta = rng.uniform(0, 2 * np.pi, b)
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    rr = r[:, None, None]
    sdf = np.zeros((b, size, size))
    for k, name in enumerate(classes):
        sel = np.flatnonzero(shape_idx == k)
        if len(sel):
            sdf[sel] = _shape_sdf(name, u[sel], v[sel], rr[sel])
    alpha = np.clip(0.5 - sdf, 0, 1)[..., None]

    rgb = np.asarray([_OBJECT_RGB[name] for name in COLOURS])[colour]
    rgb = rgb + rng.uniform(-0.06, 0.06, (b, 3))
    light = rng.uniform(-0.15, 0.15, (b, 2))
    shade = 1 + (light[:, 0, None, None] * dx + light[:, 1, None, None] * dy) / rr
    obj = rgb[:, None, None, :] * shade[..., None]
    img = img * (1 - alpha) + obj * alpha

    img = img * rng.uniform(0.85, 1.15, (b, 1, 1, 1))
    img = img + noise_std * rng.standard_normal(img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- captions


CAPTION_KINDS = ("object", "object_background", "background")


def _check_caption_mix(caption_mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_CAPTION_MIX if caption_mix is None else caption_mix)
    unknown = set(mix) - set(CAPTION_KINDS)
    if unknown:
        raise ValueError(f"unknown caption kinds {sorted(unknown)}; known: {CAPTION_KINDS}")
    p = np.asarray([float(mix.get(k, 0.0)) for k in CAPTION_KINDS])
    if p.sum() <= 0 or (p < 0).any():
        raise ValueError(f"caption_mix must have non-negative weights, got {caption_mix}")
    return {k: float(v) for k, v in mix.items()}


def _captions(
    rng: np.random.Generator,
    label: np.ndarray,
    place: np.ndarray,
    colour: np.ndarray,
    classes: Sequence[str],
    caption_mix: Mapping[str, float],
    colour_mention_prob: float,
) -> list[str]:
    p = np.asarray([float(caption_mix.get(k, 0.0)) for k in CAPTION_KINDS])
    n = len(label)
    kind = rng.choice(3, size=n, p=p / p.sum())
    mention = rng.random(n) < colour_mention_prob
    t_draw = rng.integers(0, len(DRAWING_TEMPLATES), n)
    t_obj = rng.integers(0, len(OBJECT_TEMPLATES), n)
    t_ob = rng.integers(0, len(OBJECT_BACKGROUND_TEMPLATES), n)
    t_bg = rng.integers(0, len(BACKGROUND_TEMPLATES), n)
    w_np = rng.integers(0, 1 << 30, n)
    w_adj = rng.integers(0, 1 << 30, n)
    out = []
    for i in range(n):
        obj = classes[label[i]]
        if mention[i]:
            obj = f"{COLOURS[colour[i]]} {obj}"
        if place[i] < 0:
            out.append(_fix_articles(DRAWING_TEMPLATES[t_draw[i]].format(obj=obj)))
            continue
        nps, adjs = _PLACE_WORDS[PLACES[place[i]]]
        bg = nps[w_np[i] % len(nps)]
        bga = adjs[w_adj[i] % len(adjs)]
        if kind[i] == 0:
            text = OBJECT_TEMPLATES[t_obj[i]].format(obj=obj)
        elif kind[i] == 1:
            text = OBJECT_BACKGROUND_TEMPLATES[t_ob[i]].format(obj=obj, bg=bg, bga=bga)
        else:
            text = BACKGROUND_TEMPLATES[t_bg[i]].format(bg=bg, bga=bga)
        out.append(_fix_articles(text))
    return out


# ------------------------------------------------------------------------------ generator


def vocabulary(classes: Sequence[str] = ("circle", "triangle")) -> dict[str, Any]:
    """Words and templates used in captions, for building prompts in later stages."""
    background_words: dict[str, list[str]] = {b: [] for b in BACKGROUNDS}
    for p, place in enumerate(PLACES):
        for w in _PLACE_WORDS[place][0]:
            if w not in background_words[BACKGROUNDS[p // 2]]:
                background_words[BACKGROUNDS[p // 2]].append(w)
    return {
        "class_prompt": CLASS_PROMPT,
        "class_words": {c: c for c in classes},
        "background_prompt": BACKGROUND_PROMPT,
        "background_words": background_words,
        "place_words": {p: list(_PLACE_WORDS[p][0]) for p in PLACES},
        "colour_words": {c: c for c in COLOURS},
        "templates": {
            "drawing": list(DRAWING_TEMPLATES),
            "object": list(dict.fromkeys(OBJECT_TEMPLATES)),
            "object_background": list(OBJECT_BACKGROUND_TEMPLATES),
            "background": list(BACKGROUND_TEMPLATES),
        },
    }


def generate(
    out_dir: str | os.PathLike,
    *,
    seed: int = 42,
    image_size: int = 32,
    n_train: int = 12000,
    n_val: int = 2000,
    n_test: int = 2000,
    spurious_correlation: float = 0.95,
    protected_correlation: float = 0.5,
    caption_mix: Mapping[str, float] | None = None,
    classes: Sequence[str] = ("circle", "triangle"),
    colour_mention_prob: float = 0.5,
    plain_fraction: float = 0.3,
    noise_std: float = 0.03,
    object_scale: tuple[float, float] = (0.15, 0.25),
    name: str = "planted",
) -> Path:
    """Render the planted-bias dataset folder (docs/DESIGN.md) atomically into ``out_dir``.

    ``spurious_correlation``: P(background = class's majority background | class) in train
    and val (test is balanced over class x background). ``protected_correlation``:
    P(colour = class's associated colour | class) in every split (0.5 = independent).
    ``caption_mix``: weights of caption kinds ``object`` / ``object_background`` /
    ``background`` for the captions of the train scene images. ``classes``: shapes from
    :data:`SHAPES`. ``colour_mention_prob``: share of object captions naming the colour.
    ``plain_fraction``: share of the train split rendered as plain drawings (module doc).
    ``noise_std``: per-pixel Gaussian noise (intensity units in [0, 1]). ``object_scale``:
    object size range as a fraction of ``image_size``. Returns ``Path(out_dir)``; an
    existing folder is replaced.
    """
    t0 = time.perf_counter()
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"need >= 2 distinct classes, got {classes}")
    for c in classes:
        if c not in SHAPES:
            raise ValueError(f"unknown class {c!r}; known shapes: {SHAPES}")
    for nm, val in (("spurious", spurious_correlation), ("protected", protected_correlation)):
        if not 0.0 <= val <= 1.0:
            raise ValueError(f"{nm}_correlation must be in [0, 1], got {val}")
    if not 0.0 <= plain_fraction < 1.0:
        raise ValueError(f"plain_fraction must be in [0, 1), got {plain_fraction}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    lo, hi = object_scale
    if not 0 < lo <= hi < 0.5:
        raise ValueError(f"object_scale must satisfy 0 < low <= high < 0.5, got {object_scale}")
    caption_mix = _check_caption_mix(caption_mix)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    out = Path(out_dir)

    rows = []
    captions: list[str] = []
    caption_ids: list[str] = []
    with atomic_path(out, is_dir=True) as tmp:
        for split_no, split in enumerate(SPLITS):
            n = sizes[split]
            rng = np.random.default_rng([int(seed), split_no])
            corr = None if split == "test" else spurious_correlation
            n_plain = int(round(plain_fraction * n)) if split == "train" else 0
            label, bg, colour = _allocate_split(
                rng, n, len(classes), corr, protected_correlation, n_plain
            )
            place = np.where(bg < 0, -1, bg * 2 + rng.integers(0, 2, n))
            ids = [f"{split}_{i:06d}" for i in range(n)]
            folder = tmp / "images" / split
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, n, RENDER_BATCH):
                sl = slice(start, min(n, start + RENDER_BATCH))
                imgs = _render_batch(
                    rng,
                    label[sl],
                    classes,
                    place[sl],
                    colour[sl],
                    image_size,
                    noise_std,
                    tuple(object_scale),
                )
                for k, arr in enumerate(imgs):
                    Image.fromarray(arr).save(
                        folder / f"{ids[start + k]}.png", format="PNG", compress_level=6
                    )
            if split == "train":
                caption_ids = ids
                captions = _captions(
                    rng, label, place, colour, classes, caption_mix, colour_mention_prob
                )
            rows.append(
                pd.DataFrame(
                    {
                        "image_id": ids,
                        "path": [f"images/{split}/{i}.png" for i in ids],
                        "split": split,
                        "label": label,
                        "group": np.where(bg < 0, -1, label * 2 + bg),
                        "attr_background": bg,
                        "attr_colour": colour,
                        "attr_place": place,
                    }
                )
            )
        index = pd.concat(rows, ignore_index=True)
        schema = pa.schema(
            [
                ("image_id", pa.string()),
                ("path", pa.string()),
                ("split", pa.string()),
                ("label", pa.int64()),
                ("group", pa.int64()),
                ("attr_background", pa.int64()),
                ("attr_colour", pa.int64()),
                ("attr_place", pa.int64()),
            ]
        )
        table = pa.Table.from_pandas(index, schema=schema, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), tmp / "index.parquet")
        cap = pa.table(
            {"image_id": pa.array(caption_ids, pa.string()), "caption": pa.array(captions)}
        )
        pq.write_table(cap, tmp / "captions.parquet")

        group_names = [f"{c} on {b}" for c in classes for b in BACKGROUNDS]
        minority = [c * 2 + b for c in range(len(classes)) for b in range(2) if b != c % 2]
        config = {
            "seed": int(seed),
            "image_size": int(image_size),
            "n_train": sizes["train"],
            "n_val": sizes["val"],
            "n_test": sizes["test"],
            "spurious_correlation": float(spurious_correlation),
            "protected_correlation": float(protected_correlation),
            "caption_mix": caption_mix,
            "classes": classes,
            "colour_mention_prob": float(colour_mention_prob),
            "plain_fraction": float(plain_fraction),
            "noise_std": float(noise_std),
            "object_scale": [float(x) for x in object_scale],
        }
        meta = {
            "name": name,
            "classes": classes,
            "attributes": {
                "background": list(BACKGROUNDS),
                "colour": list(COLOURS),
                "place": list(PLACES),
            },
            "spurious_attribute": "background",
            "protected_attribute": "colour",
            "group_by": ["label", "background"],
            "group_names": group_names,
            "minority_groups": minority,
            "splits": sizes,
            "source": f"clipbias.synth {__version__} seed {int(seed)}",
            "majority_background": {c: BACKGROUNDS[k % 2] for k, c in enumerate(classes)},
            "associated_colour": {c: COLOURS[k % 2] for k, c in enumerate(classes)},
            "captions": {"file": "captions.parquet", "splits": ["train"]},
            "vocabulary": vocabulary(classes),
            "generator": config,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "generated %s: %s images in %.1f s (seed %d)",
        out,
        sum(sizes.values()),
        time.perf_counter() - t0,
        seed,
    )
    return out
