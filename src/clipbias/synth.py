"""Planted-bias image benchmark: procedurally rendered shapes on land/water backgrounds.

**Target and attributes.** The target is the object's shape (``classes`` from :data:`SHAPES`,
default circle vs triangle). The *spurious* attribute is the background family (``land`` /
``water``, two place sub-types each, as Waterbirds' places: grass, forest / ocean, lake). The
*protected* attribute is the object's colour (``colours`` from :data:`PALETTE`, default red,
yellow), named in captions only sometimes, the way gender words are in web captions.

* Class ``c`` has a *majority background* ``BACKGROUNDS[c % 2]`` and an *associated colour*
  ``colours[c % len(colours)]``.
* ``train`` and ``val``: among the scene images, class ``c`` is on its majority background with
  probability ``spurious_correlation``; every image of class ``c`` has the associated colour
  with probability ``protected_correlation`` (the other colours share the rest equally).
* ``test``: equal counts in every class x background x colour cell (and the two place
  sub-types of a background equally), so V(true class, colour) = 0 and every group is balanced.
* ``plain_fraction`` of the *train* split are plain drawings: the object on a light paper
  background (``attr_background = attr_place = group = -1``, classes balanced) with
  drawing-style captions that never say "photo". They stand for the object-centric part of
  web data: they let the small CLIP learn the shapes, while the class prompt
  "a photo of a {class}" (only used for scene photos) absorbs the background correlation.

All counts are allocated exactly (largest remainder), then rows are shuffled, so realised
correlations equal the configured ones up to rounding.

**Latents, rendering and twins.** Each image is fully described by one row of latent
parameters (:data:`LATENT_COLUMNS`: shape, place, colour, object radius, centre, rotation,
colour jitter, light direction, global gain, two texture features of the place and a
per-image render seed). The texture features (:data:`TEXTURE_WORDS`, each present with
probability 1/2) are visible elements of the background with their own words: soil
patches / tall grass, tree trunks (bark) / moss, foam / big waves, a sandy shore / ripples.
The latents of a split are drawn first from one ``numpy.random.Generator`` seeded with
``(seed, split number)``; every image is then rendered from its row alone
(:func:`render_images`): the background texture from ``default_rng([render_seed, 0])``,
the pixel noise from ``default_rng([render_seed, 1])``. So the same seed gives
byte-identical PNGs, and an image re-rendered from ``latents.parquet`` equals the stored one.

For every image of the ``twin_splits`` (default ``test``) two *counterfactual twins* are
rendered from the same row with one latent changed:

* ``twin_background``: the other background family with the same place sub-type index
  (grass <-> ocean, forest <-> lake); object, position, size, rotation, colour, shading,
  gain and pixel-noise draw are the same (the new background gets its own texture).
* ``twin_protected``: the next colour value ``(colour + 1) % len(colours)``; everything else,
  background texture included, is the same.

Twins are rows of ``index.parquet`` with ``split`` = ``twin_background`` / ``twin_protected``,
``image_id`` = ``"<source image_id>|background"`` / ``"<source image_id>|protected"``, their
own (changed) attributes and group, images under ``images/twin_<kind>/<source id>.png``.
Plain drawings have no background twin. No caption is written for twins, so training never
sees them.

**Caption language** (``captions.parquet``, train split only). Captions describe the
object's shape properties (round, curved edge, pointed, three corners, four sides, straight
edges, a hole, arms, long and thin, ...), colour, size (small / large, from the object
radius) and position (left, right, top, bottom, centre, from the object centre), and the
background: scenes per place (grass, a field, a meadow / a forest, leaves, trees / the sea,
waves / a lake, a pond) and the texture features present in the image (soil, tall grass /
bark, moss / foam, big waves / sand, the shore, ripples), over many sentence templates.
Scene captions come in four kinds (weights ``caption_mix``): ``class`` ("a photo of a
[colour ]{class}" and close variants, so the zero-shot class prompt works), ``object``
(class or "shape" with size, position, colour), ``object_background`` and ``background``.
Shape properties are described in the captions of the plain drawings only: in scene
captions the text tower tied them to the correlated background. :func:`vocabulary` exposes
every word and template, for building method texts.

Shapes are not equal-area (circle radius r, triangle circumradius r): the area difference is
a low-level cue the contrastive training can bootstrap from; it is class-determined, not
spurious.

The folder follows docs/DESIGN.md ("Dataset folder"), plus ``captions.parquet``
(``image_id``, ``caption``) and ``latents.parquet`` (:data:`LATENT_COLUMNS`, one row per
index row, twins included).
"""

from __future__ import annotations

import json
import logging
import os
import re
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
# object colours (RGB in [0, 1]); none of them is a background colour (green, blue)
PALETTE = {
    "red": (0.80, 0.16, 0.14),
    "yellow": (0.90, 0.78, 0.18),
    "purple": (0.50, 0.22, 0.62),
    "white": (0.93, 0.93, 0.90),
    "orange": (0.95, 0.50, 0.10),
    "black": (0.12, 0.12, 0.12),
}
DEFAULT_COLOURS = ("red", "yellow")
SPLITS = ("train", "val", "test")
TWIN_KINDS = ("background", "protected")
TWIN_SPLIT = {k: f"twin_{k}" for k in TWIN_KINDS}
RENDER_BATCH = 500  # images per vectorised rendering chunk (does not change the output)

CAPTION_KINDS = ("class", "object", "object_background", "background")
DEFAULT_CAPTION_MIX = {"class": 0.4, "object": 0.3, "object_background": 0.15, "background": 0.15}

LATENT_COLUMNS = (
    "image_id",
    "split",
    "label",
    "shape",
    "place",
    "colour",
    "radius",
    "cx",
    "cy",
    "theta",
    "jitter_r",
    "jitter_g",
    "jitter_b",
    "light_x",
    "light_y",
    "gain",
    "texture_a",
    "texture_b",
    "render_seed",
)

# ------------------------------------------------------------------------------ vocabulary

CLASS_PROMPT = "a photo of a {}"
BACKGROUND_PROMPT = "a photo of {}"

# Placeholders: {obj} = "[colour ]shape"; {thing} = "[colour ]shape-word" ("red shape" /
# "shape"); {adj} shape adjective; {feat} shape feature noun phrase; {size} small / large;
# {pos} position phrase; {bg}, {bg2} background noun phrases of the place; {bga} background
# adjective of the place. Colour is named with probability ``colour_mention_prob``.
CLASS_TEMPLATES = (
    "a photo of a {obj}",
    "a photo of a {obj}",
    "a photo of a {obj}",
    "a picture of a {obj}",
    "an image of a {obj}",
    "a photo of the {obj}",
)
# Scene captions name the object by class, colour, size and position; shape features are
# described in the captions of the plain drawings (the object-centric data). With shape
# features in scene captions too, the text tower tied them to the correlated background:
# "a pointed shape" lay as far along the water - land text direction as "waves".
OBJECT_TEMPLATES = (
    "a {size} {obj}",
    "a {obj} {pos}",
    "a {size} {obj} {pos}",
    "a {size} {thing} {pos}",
    "a {thing} {pos}",
    "a photo of a {size} {obj}",
    "a photo of a {obj} {pos}",
    "a {size} {thing}",
)
OBJECT_BACKGROUND_TEMPLATES = (
    "a {obj} on {bg}",
    "a photo of a {obj} on {bg}",
    "a {obj} in front of {bg}",
    "a {size} {obj} over {bg}",
    "a {obj} on a {bga} background",
    "a {obj} {pos} of {bg}",
    "a {thing} on {bg}",
)
BACKGROUND_TEMPLATES = (
    "a photo of {bg}",
    "{bg}",
    "a {bga} background",
    "a picture of {bg}",
    "{bg} and {bg2}",
    "a texture of {bg}",
    "a view of {bg}",
)
# captions of the plain drawings: no background in the image, none in the caption, no "photo"
DRAWING_TEMPLATES = (
    "a drawing of a {obj}",
    "a {obj} icon",
    "clip art of a {obj}",
    "a sketch of a {obj}",
    "a {obj} shape",
    "a simple {obj}",
    "a drawing of a {adj} {thing}",
    "a {thing} with {feat}",
    "a {size} {obj} icon",
    "a sketch of a {obj} {pos}",
    "an icon of a {adj} {thing}",
    "a drawing of a {size} {obj}",
    "a {thing} {pos}",
    "a {adj} {thing}",
    "a {obj} with {feat}",
    "a {size} {adj} {thing}",
)

# per shape: adjectives ("a round shape") and feature noun phrases ("a shape with ...")
SHAPE_WORDS = {
    "circle": {
        "adjectives": ("round", "curved"),
        "features": ("a curved edge", "no corners", "a smooth outline"),
    },
    "square": {
        "adjectives": ("boxy", "blocky"),
        "features": ("four sides", "four corners", "straight edges", "right angles"),
    },
    "triangle": {
        "adjectives": ("pointed", "sharp"),
        "features": ("three corners", "three sides", "straight edges", "a sharp tip"),
    },
    "cross": {
        "adjectives": ("plus", "crossed"),
        "features": ("four arms", "arms", "a plus sign"),
    },
    "ring": {
        "adjectives": ("hollow", "round"),
        "features": ("a hole", "a hole in the middle", "a curved edge"),
    },
    "bar": {
        "adjectives": ("long and thin", "elongated"),
        "features": ("straight edges", "two long sides", "a long thin body"),
    },
}
SIZE_WORDS = ("small", "large")
# position -> phrase; "centre" = the centre within 12 % of the image side, else the side
# of the largest offset
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# per place: (generic noun phrases for {bg}, adjective-like words for {bga}); the family word
# (land / water) is one of them
PLACE_WORDS = {
    "grass": (("land", "grass", "a field", "a meadow", "green grass"), ("land", "grass", "grassy")),
    "forest": (("land", "a forest", "the woods", "leaves", "trees"), ("land", "forest", "leafy")),
    "ocean": (("water", "the ocean", "the sea", "waves", "blue water"), ("water", "ocean", "wavy")),
    "lake": (("water", "a lake", "a pond", "lake water"), ("water", "lake", "pond")),
}
# per place: two visual texture features (latents texture_a, texture_b, each present with
# probability 1/2) and the noun phrases that name them; captions use them only when present
TEXTURE_WORDS = {
    "grass": (("soil", "bare soil"), ("tall grass",)),  # brown soil patches; strong blades
    "forest": (("bark", "tree trunks"), ("moss",)),  # dark vertical trunks; light moss patches
    "ocean": (("foam", "sea foam"), ("big waves", "surf")),  # white crests; long high waves
    "lake": (("sand", "the shore"), ("ripples",)),  # a sandy shore strip; fine ripples
}


def _fix_articles(text: str) -> str:
    """Replace "a <vowel word>" by "an <vowel word>" (templates are written with "a")."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def vocabulary(
    classes: Sequence[str] = ("circle", "triangle"), colours: Sequence[str] = DEFAULT_COLOURS
) -> dict[str, Any]:
    """Words and templates of the caption language (module doc), for building method texts.

    Keys: ``class_prompt``, ``class_words`` {class: word}, ``background_prompt``,
    ``background_words`` {land/water: [noun phrases]}, ``place_words`` {place: [generic noun
    phrases]}, ``background_adjectives`` {place: [...]}, ``texture_words`` {place:
    {"texture_a": [...], "texture_b": [...]}} (named only when the texture is in the image),
    ``colour_words`` {colour: word},
    ``shape_words`` {class: {"adjectives", "features"}}, ``size_words``, ``position_words``
    {position: phrase}, ``templates`` {kind: [...]} and ``words``: the sorted set of every
    lowercase word a caption of a dataset with these classes and colours can contain.
    """
    classes = list(classes)
    colours = list(colours)
    background_words: dict[str, list[str]] = {b: [] for b in BACKGROUNDS}
    for p, place in enumerate(PLACES):
        for w in (*PLACE_WORDS[place][0], *TEXTURE_WORDS[place][0], *TEXTURE_WORDS[place][1]):
            if w not in background_words[BACKGROUNDS[p // 2]]:
                background_words[BACKGROUNDS[p // 2]].append(w)
    templates = {
        "class": list(dict.fromkeys(CLASS_TEMPLATES)),
        "object": list(OBJECT_TEMPLATES),
        "object_background": list(OBJECT_BACKGROUND_TEMPLATES),
        "background": list(BACKGROUND_TEMPLATES),
        "drawing": list(DRAWING_TEMPLATES),
    }
    words: set[str] = {"an", "shape"}
    for group in templates.values():
        for t in group:
            words |= _words(re.sub(r"\{[a-z0-9]+\}", " ", t))
    words |= set(classes) | set(colours) | set(SIZE_WORDS)
    for c in classes:
        for phrase in (*SHAPE_WORDS[c]["adjectives"], *SHAPE_WORDS[c]["features"]):
            words |= _words(phrase)
    for phrase in POSITION_PHRASES.values():
        words |= _words(phrase)
    for phrase in _place_phrases():
        words |= _words(phrase)
    return {
        "class_prompt": CLASS_PROMPT,
        "class_words": {c: c for c in classes},
        "background_prompt": BACKGROUND_PROMPT,
        "background_words": background_words,
        "place_words": {p: list(PLACE_WORDS[p][0]) for p in PLACES},
        "background_adjectives": {p: list(PLACE_WORDS[p][1]) for p in PLACES},
        "texture_words": {
            p: {"texture_a": list(TEXTURE_WORDS[p][0]), "texture_b": list(TEXTURE_WORDS[p][1])}
            for p in PLACES
        },
        "colour_words": {c: c for c in colours},
        "shape_words": {c: {k: list(v) for k, v in SHAPE_WORDS[c].items()} for c in classes},
        "size_words": list(SIZE_WORDS),
        "position_words": dict(POSITION_PHRASES),
        "templates": templates,
        "words": sorted(words),
    }


def _place_phrases(place: str | None = None) -> list[str]:
    """Generic nouns, adjectives and texture phrases of one place (or of all places)."""
    out = []
    for p in PLACES if place is None else [place]:
        nouns, adjs = PLACE_WORDS[p]
        out += [*nouns, *adjs, *TEXTURE_WORDS[p][0], *TEXTURE_WORDS[p][1]]
    return out


def background_word_set() -> set[str]:
    """Every word that names a background: place nouns, adjectives and texture words
    (land and water included), and "background"."""
    out: set[str] = {"background"}
    for phrase in _place_phrases():
        out |= _words(phrase)
    return out - {"a", "the"}


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


def _colour_weights(c: int, n_colours: int, protected_correlation: float | None) -> list[float]:
    """P(colour | class c): associated colour with the correlation, the others equally."""
    if protected_correlation is None:
        return [1.0] * n_colours
    assoc = c % n_colours
    rest = (1.0 - protected_correlation) / (n_colours - 1)
    return [protected_correlation if k == assoc else rest for k in range(n_colours)]


def _allocate_split(
    rng: np.random.Generator,
    n: int,
    n_classes: int,
    n_colours: int,
    spurious_correlation: float | None,
    protected_correlation: float | None,
    n_plain: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact (label, background, colour, place) counts for one split, shuffled.

    ``spurious_correlation=None`` means balanced class x background cells and
    ``protected_correlation=None`` balanced colours within each cell (test split).
    ``n_plain`` of the ``n`` rows are plain drawings (background and place ``-1``, classes
    balanced). Within every class x background x colour cell the two place sub-types of the
    background are balanced.
    """
    labels, bgs, cols, places = [], [], [], []
    odd_cells = [0]  # odd cells give their extra image to sub-type 0 and 1 in turn

    def add(c: int, b: int, k: int) -> None:
        per_colour = _split_counts(k, _colour_weights(c, n_colours, protected_correlation))
        for col, kc in enumerate(per_colour):
            labels.append(np.full(kc, c))
            bgs.append(np.full(kc, b))
            cols.append(np.full(kc, col))
            if b < 0:
                places.append(np.full(kc, -1))
                continue
            n0 = kc // 2 + (kc % 2) * (1 - odd_cells[0] % 2)
            odd_cells[0] += kc % 2
            places.append(np.r_[np.full(n0, 2 * b), np.full(kc - n0, 2 * b + 1)])

    n_plain = int(n_plain)
    if n_plain:
        for c, k in enumerate(_split_counts(n_plain, [1.0] * n_classes)):
            add(c, -1, k)
    n_scene = n - n_plain
    if spurious_correlation is None:
        cells = _split_counts(n_scene, [1.0] * (n_classes * 2))
        for c in range(n_classes):
            for b in range(2):
                add(c, b, cells[c * 2 + b])
    else:
        for c, k in enumerate(_split_counts(n_scene, [1.0] * n_classes)):
            maj = c % 2
            n_maj, n_min = _split_counts(k, [spurious_correlation, 1.0 - spurious_correlation])
            add(c, maj, n_maj)
            add(c, 1 - maj, n_min)
    label = np.concatenate(labels).astype(np.int64)
    bg = np.concatenate(bgs).astype(np.int64)
    col = np.concatenate(cols).astype(np.int64)
    place = np.concatenate(places).astype(np.int64)
    perm = rng.permutation(len(label))
    return label[perm], bg[perm], col[perm], place[perm]


def _draw_latents(
    rng: np.random.Generator,
    ids: Sequence[str],
    split: str,
    label: np.ndarray,
    place: np.ndarray,
    colour: np.ndarray,
    classes: Sequence[str],
    colours: Sequence[str],
    image_size: int,
    object_scale: tuple[float, float],
) -> pd.DataFrame:
    """One latent row per image (:data:`LATENT_COLUMNS`), drawn vectorised from ``rng``."""
    n = len(label)
    r = rng.uniform(*object_scale, n) * image_size
    margin = r * 0.9
    cx = rng.uniform(margin, image_size - margin)
    cy = rng.uniform(margin, image_size - margin)
    theta = rng.uniform(0, 2 * np.pi, n)
    jitter = rng.uniform(-0.06, 0.06, (n, 3))
    light = rng.uniform(-0.15, 0.15, (n, 2))
    gain = rng.uniform(0.85, 1.15, n)
    texture = (rng.random((n, 2)) < 0.5) & (place[:, None] >= 0)
    render_seed = rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64)
    return pd.DataFrame(
        {
            "image_id": list(ids),
            "split": split,
            "label": label.astype(np.int64),
            "shape": np.asarray(classes, dtype=object)[label],
            "place": place.astype(np.int64),
            "colour": np.asarray(colours, dtype=object)[colour],
            "radius": r,
            "cx": cx,
            "cy": cy,
            "theta": theta,
            "jitter_r": jitter[:, 0],
            "jitter_g": jitter[:, 1],
            "jitter_b": jitter[:, 2],
            "light_x": light[:, 0],
            "light_y": light[:, 1],
            "gain": gain,
            "texture_a": texture[:, 0].astype(np.int64),
            "texture_b": texture[:, 1].astype(np.int64),
            "render_seed": render_seed,
        }
    )


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


def _stack(rngs: Sequence[np.random.Generator], draw) -> np.ndarray:
    """Per-image draws ``draw(rng)`` stacked on a new leading axis."""
    return np.stack([np.asarray(draw(g)) for g in rngs])


def _smooth(noise: np.ndarray, size: int) -> np.ndarray:
    """[b, size, size] bilinear upsampling of [b, g, g] lattice values (per-image matmuls)."""
    m = _interp_matrix(size, noise.shape[-1])
    return np.matmul(np.matmul(m, noise), m.T)


def _waves(
    rngs: Sequence[np.random.Generator], size: int, freq: tuple[float, float], wobble: float
) -> np.ndarray:
    """[b, size, size] roughly horizontal sinusoidal waves with random tilt and phase."""
    p = _stack(rngs, lambda g: [g.uniform(-0.35, 0.35), g.uniform(*freq), g.uniform(0, 2 * np.pi),
                                g.uniform(0.8, 2.0), g.uniform(0, 2 * np.pi)])  # fmt: skip
    tilt, f, ph, f2, ph2 = (p[:, k, None, None] for k in range(5))
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    yy, xx = yy / size, xx / size
    y = yy[None] * np.cos(tilt) + xx[None] * np.sin(tilt)
    x = xx[None] * np.cos(tilt) - yy[None] * np.sin(tilt)
    return np.sin(2 * np.pi * f * y + wobble * np.sin(2 * np.pi * f2 * x + ph2) + ph)


def _render_place(
    rngs: Sequence[np.random.Generator], place: int, texture: np.ndarray, size: int
) -> np.ndarray:
    """[b, size, size, 3] background in [0, 1] (before gain and noise).

    ``place`` -1 is the light paper of the plain drawings. ``texture`` [b, 2] are the 0/1
    texture latents (:data:`TEXTURE_WORDS`). Every image draws from its own generator in
    ``rngs``, the same numbers whether a texture is present or not.
    """

    def base(rgb: tuple[float, float, float], jitter: float) -> np.ndarray:
        j = _stack(rngs, lambda g: g.uniform(-jitter, jitter, 3))
        return (np.asarray(rgb) + j)[:, None, None, :]

    def noise(grid: int) -> np.ndarray:
        return _smooth(_stack(rngs, lambda g: g.standard_normal((grid, grid))), size)

    def mix(img: np.ndarray, other: np.ndarray, mask: np.ndarray, on: np.ndarray) -> np.ndarray:
        m = (mask * on[:, None, None])[..., None]
        return img * (1 - m) + other * m

    a, b = (texture[:, k].astype(np.float64) for k in range(2))
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size,
                         indexing="ij")  # fmt: skip
    if place == -1:
        col = _stack(rngs, lambda g: 0.90 + g.uniform(-0.06, 0.04) + g.uniform(-0.03, 0.03, 3))
        return col[:, None, None, :] * (1 + 0.03 * noise(4))[..., None]
    name = PLACES[place]
    if name == "grass":
        col = base((0.36, 0.58, 0.22), 0.05)
        m = _interp_matrix(size, 3)
        streaks = np.matmul(m, _stack(rngs, lambda g: g.standard_normal((3, size))))
        amp = np.where(b > 0, 0.22, 0.07)[:, None, None]  # tall grass: strong blades
        img = col * (1 + 0.08 * noise(4) + amp * streaks)[..., None]
        soil = base((0.45, 0.32, 0.18), 0.04) * (1 + 0.1 * noise(6))[..., None]
        return mix(img, soil, 1 / (1 + np.exp(-6 * (noise(3) - 0.5))), a)
    if name == "forest":
        green = base((0.17, 0.38, 0.15), 0.04)
        brown = base((0.36, 0.26, 0.13), 0.04)
        leaf = 1 / (1 + np.exp(-3 * noise(5)))
        lum = 0.12 * noise(9)
        img = (green * (1 - leaf[..., None]) + brown * leaf[..., None]) * (1 + lum[..., None])
        # bark: two dark vertical trunks; moss: light yellow-green patches
        pos = _stack(rngs, lambda g: [g.uniform(0.1, 0.9), g.uniform(0.1, 0.9),
                                      g.uniform(0.05, 0.09), g.uniform(0.05, 0.09)])  # fmt: skip
        trunks = np.maximum(
            np.clip(1.5 - np.abs(xx[None] - pos[:, 0, None, None]) / pos[:, 2, None, None], 0, 1),
            np.clip(1.5 - np.abs(xx[None] - pos[:, 1, None, None]) / pos[:, 3, None, None], 0, 1),
        )
        bark = base((0.22, 0.14, 0.07), 0.03) * (1 + 0.15 * noise(8))[..., None]
        img = mix(img, bark, trunks, a)
        moss = base((0.56, 0.62, 0.22), 0.04)
        return mix(img, moss, 1 / (1 + np.exp(-6 * (noise(4) - 0.6))), b)
    if name == "ocean":
        col = base((0.10, 0.27, 0.58), 0.04)
        small = _waves(rngs, size, (3.5, 5.5), 1.2)
        big = _waves(rngs, size, (1.3, 2.2), 0.8)
        w = np.where(b[:, None, None] > 0, big, small)
        amp = np.where(b > 0, 0.3, 0.12)[:, None, None, None]
        img = col * (1 + amp * w[..., None])
        crest = np.clip(w - 0.55, 0, None)[..., None] * 2.2  # foam: white crests
        foam = np.where(a[:, None, None, None] > 0, np.minimum(crest, 1.0), 0.0)
        return img * (1 - foam) + 0.95 * foam
    # lake
    col = base((0.26, 0.50, 0.64), 0.05)
    ripple = _waves(rngs, size, (6.0, 9.0), 0.4)
    amp = np.where(b > 0, 0.12, 0.015)[:, None, None]
    img = col * (1 + amp * ripple + 0.05 * noise(4))[..., None]
    edge = _stack(rngs, lambda g: [g.uniform(0.62, 0.78), g.uniform(0, 2 * np.pi)])
    shore = edge[:, 0, None, None] + 0.05 * np.sin(2 * np.pi * xx[None] + edge[:, 1, None, None])
    sand = base((0.80, 0.70, 0.48), 0.04) * (1 + 0.06 * noise(6))[..., None]
    return mix(img, sand, np.clip((yy[None] - shore) * size, 0, 1), a)


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


def _geometry(lat: pd.DataFrame, size: int) -> tuple[np.ndarray, ...]:
    """Pixel offsets dx, dy [b, S, S] from the object centre and the rotated frame u, v."""
    cx = lat["cx"].to_numpy(np.float64)[:, None, None]
    cy = lat["cy"].to_numpy(np.float64)[:, None, None]
    theta = lat["theta"].to_numpy(np.float64)[:, None, None]
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    dx, dy = xx[None] - cx, yy[None] - cy
    c, s = np.cos(theta), np.sin(theta)
    return dx, dy, c * dx + s * dy, -s * dx + c * dy


def object_alpha(latents: pd.DataFrame, image_size: int) -> np.ndarray:
    """[b, S, S] object coverage in [0, 1] of latent rows (1 = object, 0 = background)."""
    lat = latents.reset_index(drop=True)
    _, _, u, v = _geometry(lat, image_size)
    rr = lat["radius"].to_numpy(np.float64)[:, None, None]
    sdf = np.zeros(u.shape)
    for name, sel in lat.groupby("shape", sort=False).indices.items():
        sdf[sel] = _shape_sdf(str(name), u[sel], v[sel], rr[sel])
    return np.clip(0.5 - sdf, 0, 1)


def _render_chunk(lat: pd.DataFrame, size: int, noise_std: float) -> np.ndarray:
    b = len(lat)
    seeds = lat["render_seed"].to_numpy(np.int64)
    tex_rngs = [np.random.default_rng([int(s), 0]) for s in seeds]
    img = np.zeros((b, size, size, 3))
    texture = lat[["texture_a", "texture_b"]].to_numpy(np.int64)
    for place, sel in lat.groupby("place", sort=True).indices.items():
        img[sel] = _render_place([tex_rngs[i] for i in sel], int(place), texture[sel], size)

    dx, dy, _, _ = _geometry(lat, size)
    alpha = object_alpha(lat, size)[..., None]
    unknown = set(lat["colour"]) - set(PALETTE)
    if unknown:
        raise ValueError(f"unknown colours {sorted(unknown)}; known: {sorted(PALETTE)}")
    rgb = np.asarray([PALETTE[c] for c in lat["colour"]])
    rgb = rgb + lat[["jitter_r", "jitter_g", "jitter_b"]].to_numpy(np.float64)
    rr = lat["radius"].to_numpy(np.float64)[:, None, None]
    lx = lat["light_x"].to_numpy(np.float64)[:, None, None]
    ly = lat["light_y"].to_numpy(np.float64)[:, None, None]
    shade = 1 + (lx * dx + ly * dy) / rr
    obj = rgb[:, None, None, :] * shade[..., None]
    img = img * (1 - alpha) + obj * alpha

    img = img * lat["gain"].to_numpy(np.float64)[:, None, None, None]
    noise = np.stack(
        [np.random.default_rng([int(s), 1]).standard_normal((size, size, 3)) for s in seeds]
    )
    img = img + noise_std * noise
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def render_images(latents: pd.DataFrame, image_size: int, noise_std: float = 0.03) -> np.ndarray:
    """uint8 [b, S, S, 3] images of latent rows (:data:`LATENT_COLUMNS`, module doc).

    Every image depends on its own row only (per-image generators seeded by ``render_seed``;
    per-image matrix products), so any subset or order of rows renders to the same pixels.
    """
    lat = latents.reset_index(drop=True)
    out = np.empty((len(lat), image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, len(lat), RENDER_BATCH):
        stop = min(len(lat), start + RENDER_BATCH)
        out[start:stop] = _render_chunk(lat.iloc[start:stop].reset_index(drop=True),
                                        image_size, noise_std)  # fmt: skip
    return out


def twin_latents(latents: pd.DataFrame, kind: str, colours: Sequence[str]) -> pd.DataFrame:
    """Latent rows of the ``kind`` twins (``background`` / ``protected``) of ``latents``.

    ``background``: place p -> (p + 2) % 4 (the other family, same sub-type index); rows
    without a background (plain drawings) are dropped. ``protected``: colour -> the next
    value of ``colours``. ``image_id`` becomes ``"<id>|<kind>"``, ``split`` ``twin_<kind>``;
    every other latent, the render seed included, is kept.
    """
    if kind not in TWIN_KINDS:
        raise ValueError(f"twin kind must be one of {TWIN_KINDS}, got {kind!r}")
    out = latents.copy()
    if kind == "background":
        out = out[out["place"] >= 0].copy()
        out["place"] = (out["place"] + 2) % len(PLACES)
    else:
        colours = list(colours)
        idx = out["colour"].map({c: i for i, c in enumerate(colours)})
        if idx.isna().any():
            raise ValueError(f"latent colours {sorted(set(out['colour']))} not all in {colours}")
        out["colour"] = [colours[(int(i) + 1) % len(colours)] for i in idx]
    out["image_id"] = out["image_id"] + f"|{kind}"
    out["split"] = TWIN_SPLIT[kind]
    return out.reset_index(drop=True)


# ------------------------------------------------------------------------------- captions


def _check_caption_mix(caption_mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_CAPTION_MIX if caption_mix is None else caption_mix)
    unknown = set(mix) - set(CAPTION_KINDS)
    if unknown:
        raise ValueError(f"unknown caption kinds {sorted(unknown)}; known: {CAPTION_KINDS}")
    p = np.asarray([float(mix.get(k, 0.0)) for k in CAPTION_KINDS])
    if p.sum() <= 0 or (p < 0).any():
        raise ValueError(f"caption_mix must have non-negative weights, got {caption_mix}")
    return {k: float(mix.get(k, 0.0)) for k in CAPTION_KINDS}


def size_word(radius: np.ndarray, image_size: int, object_scale: Sequence[float]) -> np.ndarray:
    """``"small"`` / ``"large"``: object radius below / above the middle of ``object_scale``."""
    mid = 0.5 * (object_scale[0] + object_scale[1]) * image_size
    return np.where(np.asarray(radius) < mid, SIZE_WORDS[0], SIZE_WORDS[1])


def position_word(cx: np.ndarray, cy: np.ndarray, image_size: int) -> np.ndarray:
    """left / right / top / bottom / centre of object centres (see :data:`POSITION_PHRASES`)."""
    dx = np.asarray(cx) / image_size - 0.5
    dy = np.asarray(cy) / image_size - 0.5
    horiz = np.where(dx < 0, "left", "right")
    vert = np.where(dy < 0, "top", "bottom")
    out = np.where(np.abs(dx) >= np.abs(dy), horiz, vert)
    return np.where(np.maximum(np.abs(dx), np.abs(dy)) < 0.12, "centre", out)


def _captions(
    rng: np.random.Generator,
    lat: pd.DataFrame,
    caption_mix: Mapping[str, float],
    colour_mention_prob: float,
    image_size: int,
    object_scale: Sequence[float],
) -> list[str]:
    """One caption per latent row (module doc, "Caption language")."""
    n = len(lat)
    p = np.asarray([caption_mix[k] for k in CAPTION_KINDS])
    kind = rng.choice(len(CAPTION_KINDS), size=n, p=p / p.sum())
    mention = rng.random(n) < colour_mention_prob
    picks = rng.integers(0, 1 << 30, (n, 8))  # template, adjective, feature, bg, bg2, bga, ...
    texture = lat[["texture_a", "texture_b"]].to_numpy(np.int64)
    sizes = size_word(lat["radius"].to_numpy(), image_size, object_scale)
    positions = position_word(lat["cx"].to_numpy(), lat["cy"].to_numpy(), image_size)
    groups = (CLASS_TEMPLATES, OBJECT_TEMPLATES, OBJECT_BACKGROUND_TEMPLATES, BACKGROUND_TEMPLATES)
    out = []
    for i, row in enumerate(lat[["shape", "colour", "place"]].itertuples(index=False)):
        shape, colour, place = row
        words = SHAPE_WORDS[shape]
        colour_prefix = f"{colour} " if mention[i] else ""
        fill = {
            "obj": colour_prefix + shape,
            "thing": colour_prefix + "shape",
            "adj": words["adjectives"][picks[i, 1] % len(words["adjectives"])],
            "feat": words["features"][picks[i, 2] % len(words["features"])],
            "size": sizes[i],
            "pos": POSITION_PHRASES[positions[i]],
        }
        if place < 0:
            template = DRAWING_TEMPLATES[picks[i, 0] % len(DRAWING_TEMPLATES)]
        else:
            nouns, adjs = PLACE_WORDS[PLACES[place]]
            # texture phrases only for textures in the image; half of the background
            # mentions of such an image name a texture
            tex = [w for k, words_k in enumerate(TEXTURE_WORDS[PLACES[place]])
                   if texture[i, k] for w in words_k]  # fmt: skip
            if tex and picks[i, 6] % 2 == 0:
                fill["bg"] = tex[picks[i, 3] % len(tex)]
            else:
                fill["bg"] = nouns[picks[i, 3] % len(nouns)]
            rest = [w for w in (*nouns, *tex) if w != fill["bg"]]
            fill["bg2"] = rest[picks[i, 4] % len(rest)]
            fill["bga"] = adjs[picks[i, 5] % len(adjs)]
            group = groups[kind[i]]
            template = group[picks[i, 0] % len(group)]
        out.append(_fix_articles(template.format(**fill)))
    return out


# ------------------------------------------------------------------------------ generator


def _index_rows(lat: pd.DataFrame, colours: Sequence[str]) -> pd.DataFrame:
    place = lat["place"].to_numpy(np.int64)
    bg = np.where(place < 0, -1, place // 2)
    label = lat["label"].to_numpy(np.int64)
    colour = lat["colour"].map({c: i for i, c in enumerate(colours)}).to_numpy(np.int64)
    split = lat["split"].iloc[0] if len(lat) else ""
    folder = split
    stems = [i.split("|")[0] for i in lat["image_id"]]
    return pd.DataFrame(
        {
            "image_id": lat["image_id"].to_numpy(),
            "path": [f"images/{folder}/{s}.png" for s in stems],
            "split": lat["split"].to_numpy(),
            "label": label,
            "group": np.where(bg < 0, -1, label * 2 + bg),
            "attr_background": bg,
            "attr_colour": colour,
            "attr_place": place,
        }
    )


INDEX_SCHEMA = pa.schema(
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


def _write_images(root: Path, index: pd.DataFrame, images: np.ndarray) -> None:
    for rel, arr in zip(index["path"], images, strict=True):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def generate(
    out_dir: str | os.PathLike,
    *,
    seed: int = 42,
    image_size: int = 32,
    n_train: int = 12000,
    n_val: int = 2000,
    n_test: int = 2000,
    classes: Sequence[str] = ("circle", "triangle"),
    colours: Sequence[str] = DEFAULT_COLOURS,
    spurious_correlation: float = 0.95,
    protected_correlation: float = 0.5,
    caption_mix: Mapping[str, float] | None = None,
    colour_mention_prob: float = 0.5,
    plain_fraction: float = 0.3,
    noise_std: float = 0.03,
    object_scale: Sequence[float] = (0.18, 0.28),
    twin_splits: Sequence[str] = ("test",),
    name: str = "planted",
) -> Path:
    """Render the planted-bias dataset folder (module doc) atomically into ``out_dir``.

    ``classes``: shapes from :data:`SHAPES` (>= 2). ``colours``: protected-attribute values
    from :data:`PALETTE` (>= 2); class ``c``'s associated colour is ``colours[c % len]``.
    ``spurious_correlation``: P(majority background | class) among the scene images of train
    and val. ``protected_correlation``: P(associated colour | class) in train and val
    (``1 / len(colours)`` = independent). ``test`` is balanced over class x background x
    colour. ``caption_mix``: weights of the caption kinds :data:`CAPTION_KINDS` for the
    train scene images. ``colour_mention_prob``: share of captions naming the colour.
    ``plain_fraction``: share of the train split rendered as plain drawings.
    ``noise_std``: per-pixel Gaussian noise (intensity units in [0, 1]). ``object_scale``:
    object size range as a fraction of ``image_size``. ``twin_splits``: splits whose images
    get counterfactual twins (``twin_background``, ``twin_protected``). Returns
    ``Path(out_dir)``; an existing folder is replaced.
    """
    t0 = time.perf_counter()
    classes, colours, twin_splits = list(classes), list(colours), list(twin_splits)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"need >= 2 distinct classes, got {classes}")
    for c in classes:
        if c not in SHAPES:
            raise ValueError(f"unknown class {c!r}; known shapes: {SHAPES}")
    if len(colours) < 2 or len(set(colours)) != len(colours):
        raise ValueError(f"need >= 2 distinct colours, got {colours}")
    for c in colours:
        if c not in PALETTE:
            raise ValueError(f"unknown colour {c!r}; known colours: {tuple(PALETTE)}")
    for nm, val in (("spurious", spurious_correlation), ("protected", protected_correlation)):
        if not 0.0 <= val <= 1.0:
            raise ValueError(f"{nm}_correlation must be in [0, 1], got {val}")
    if not 0.0 <= colour_mention_prob <= 1.0:
        raise ValueError(f"colour_mention_prob must be in [0, 1], got {colour_mention_prob}")
    if not 0.0 <= plain_fraction < 1.0:
        raise ValueError(f"plain_fraction must be in [0, 1), got {plain_fraction}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    lo, hi = (float(x) for x in object_scale)
    if not 0 < lo <= hi < 0.5:
        raise ValueError(f"object_scale must satisfy 0 < low <= high < 0.5, got {object_scale}")
    bad = set(twin_splits) - set(SPLITS)
    if bad:
        raise ValueError(f"twin_splits must be among {SPLITS}, got {sorted(bad)}")
    caption_mix = _check_caption_mix(caption_mix)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"n_{split} must be >= 1, got {n}")
    out = Path(out_dir)

    all_lat, rows = [], []
    captions: list[str] = []
    caption_ids: list[str] = []
    with atomic_path(out, is_dir=True) as tmp:
        for split_no, split in enumerate(SPLITS):
            n = sizes[split]
            rng = np.random.default_rng([int(seed), split_no])
            balanced = split == "test"
            n_plain = int(round(plain_fraction * n)) if split == "train" else 0
            label, _, colour, place = _allocate_split(
                rng,
                n,
                len(classes),
                len(colours),
                None if balanced else spurious_correlation,
                None if balanced else protected_correlation,
                n_plain,
            )
            ids = [f"{split}_{i:06d}" for i in range(n)]
            lat = _draw_latents(
                rng, ids, split, label, place, colour, classes, colours, image_size, (lo, hi)
            )
            parts = [lat]
            if split in twin_splits:
                parts += [twin_latents(lat, kind, colours) for kind in TWIN_KINDS]
            for part in parts:
                ix = _index_rows(part, colours)
                _write_images(tmp, ix, render_images(part, image_size, noise_std))
                rows.append(ix)
                all_lat.append(part)
            if split == "train":
                caption_ids = ids
                cap_rng = np.random.default_rng([int(seed), split_no, 1])
                captions = _captions(
                    cap_rng, lat, caption_mix, colour_mention_prob, image_size, (lo, hi)
                )
        # index order: train, val, test, then the twins of each twin split
        order = {s: k for k, s in enumerate([*SPLITS, *TWIN_SPLIT.values()])}
        rows.sort(key=lambda d: order[d["split"].iloc[0]])
        all_lat.sort(key=lambda d: order[d["split"].iloc[0]])
        index = pd.concat(rows, ignore_index=True)
        table = pa.Table.from_pandas(index, schema=INDEX_SCHEMA, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), tmp / "index.parquet")
        latents = pd.concat(all_lat, ignore_index=True)[list(LATENT_COLUMNS)]
        pq.write_table(
            pa.Table.from_pandas(latents, preserve_index=False).replace_schema_metadata(None),
            tmp / "latents.parquet",
        )
        cap = pa.table(
            {"image_id": pa.array(caption_ids, pa.string()), "caption": pa.array(captions)}
        )
        pq.write_table(cap, tmp / "captions.parquet")

        config = {
            "seed": int(seed),
            "image_size": int(image_size),
            "n_train": sizes["train"],
            "n_val": sizes["val"],
            "n_test": sizes["test"],
            "classes": classes,
            "colours": colours,
            "spurious_correlation": float(spurious_correlation),
            "protected_correlation": float(protected_correlation),
            "caption_mix": caption_mix,
            "colour_mention_prob": float(colour_mention_prob),
            "plain_fraction": float(plain_fraction),
            "noise_std": float(noise_std),
            "object_scale": [lo, hi],
            "twin_splits": twin_splits,
        }
        split_counts = index["split"].value_counts()
        meta = {
            "name": name,
            "classes": classes,
            "attributes": {
                "background": list(BACKGROUNDS),
                "colour": colours,
                "place": list(PLACES),
            },
            "spurious_attribute": "background",
            "protected_attribute": "colour",
            "group_by": ["label", "background"],
            "group_names": [f"{c} on {b}" for c in classes for b in BACKGROUNDS],
            "minority_groups": [
                c * 2 + b for c in range(len(classes)) for b in range(2) if b != c % 2
            ],
            "splits": {s: int(split_counts[s]) for s in order if s in split_counts},
            "source": f"clipbias.synth {__version__} seed {int(seed)}",
            "majority_background": {c: BACKGROUNDS[k % 2] for k, c in enumerate(classes)},
            "associated_colour": {c: colours[k % len(colours)] for k, c in enumerate(classes)},
            "twins": {
                "splits": twin_splits,
                "kinds": {k: {"split": TWIN_SPLIT[k], "id_suffix": f"|{k}"} for k in TWIN_KINDS},
                "attribute": {"background": "background", "protected": "colour"},
            },
            "captions": {"file": "captions.parquet", "splits": ["train"]},
            "latents": {"file": "latents.parquet", "columns": list(LATENT_COLUMNS)},
            "vocabulary": vocabulary(classes, colours),
            "generator": config,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "generated %s: %d images (%d twins) in %.1f s (seed %d)",
        out,
        len(index),
        int(index["split"].str.startswith("twin_").sum()),
        time.perf_counter() - t0,
        seed,
    )
    return out
