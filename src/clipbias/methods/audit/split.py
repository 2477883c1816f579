"""The locate / evaluate halves of the audit (METHODS §6.1): a stratified (class × attribute)
split when a dataset has no split of its own (:func:`locate_evaluate_split`), and the masks of
a variant (:func:`halves`; the single pool locates and evaluates on every image).
"""

from __future__ import annotations

import math

import numpy as np

from .params import DEFAULT_SEED, DEFAULTS


def locate_evaluate_split(
    labels: np.ndarray,
    attr: np.ndarray,
    locate_fraction: float = DEFAULTS["locate_fraction"],
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """Stratified (true class × attribute value) locate / evaluate split (METHODS §6.1, [REC]).

    Returns ``is_locate`` [N] bool. Each cell (unknown values, -1, form their own cells) is
    shuffled with ``numpy.random.default_rng(seed)`` and its first
    floor(n·f + u) members go to the locate half (u ~ U(0, 1) per cell, so odd cells split
    at random and the expected share is exactly ``locate_fraction``). Not needed for
    datasets with their own splits (the planted benchmark: val / test).
    """
    if not 0.0 < locate_fraction < 1.0:
        raise ValueError(f"locate_fraction must be in (0, 1), got {locate_fraction}")
    y = np.asarray(labels, dtype=np.int64)
    a = np.asarray(attr, dtype=np.int64)
    if y.shape != a.shape or y.ndim != 1:
        raise ValueError("labels and attr must be 1-D arrays of the same length")
    rng = np.random.default_rng(seed)
    _, cells = np.unique(np.stack([y, a], axis=1), axis=0, return_inverse=True)
    cells = cells.reshape(-1)
    out = np.zeros(len(y), dtype=bool)
    for c in range(int(cells.max()) + 1 if len(cells) else 0):
        members = rng.permutation(np.flatnonzero(cells == c))
        n_loc = int(math.floor(len(members) * locate_fraction + rng.random()))
        out[members[:n_loc]] = True
    return out


def halves(is_locate: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(locate, evaluate) masks [n]; both all-True for the single pool (``None``)."""
    if is_locate is None:
        loc = np.ones(n, dtype=bool)
        return loc, loc
    loc = np.asarray(is_locate, dtype=bool)
    ev = ~loc
    if loc.shape != (n,) or not loc.any() or not ev.any():
        raise ValueError("is_locate must mark a non-empty locate half and evaluate half")
    return loc, ev
