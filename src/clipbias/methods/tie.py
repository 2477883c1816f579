"""TIE and TIE* (Lu, Chai, Wang, ICLR 2025; METHODS §10.1): translate each image embedding
against the text "spurious vector" of its attribute value.

t̂_a = the normalised embedding of the attribute value's prompt (the dataset text file's
``attribute_prompts``, role ``attribute``); λ_a = mean of ⟨ê, t̂_a⟩ over the locate-split
images with attribute a; at test z = ê − λ_{a(x)} t̂_{a(x)}, classified with the zero-shot
classifier (argmax cos(z, t̂_c) = argmax ⟨z, t̂_c⟩). Variants (registry):

* ``tie``: ground-truth attributes of the locate split for λ, zero-shot â at test (§10.8
  point 3: the deployable main-table TIE);
* ``tie_star``: zero-shot â everywhere (TIE*);
* ``tie_oracle``: the **test** images' ground-truth attributes (the reference notebooks'
  ``a = True``): an oracle upper bound, never a main-table entry without that label.

Rows whose attribute is unknown (< 0) are left out of λ; at test they fall back to â.
"""

from __future__ import annotations

import numpy as np

from clipbias.methods.api import Correction, MethodContext, apply_correction
from clipbias.methods.texts import texts_sha256, unit_rows

SOURCES = ("ground_truth", "zero_shot")


def infer_attribute(emb: np.ndarray, attr_units: np.ndarray) -> np.ndarray:
    """â(x) = argmax_a ⟨e(x), t̂_a⟩ (``attr_units`` [V, D] unit rows) -> [N] int64."""
    return np.argmax(np.asarray(emb, dtype=np.float64) @ attr_units.T, axis=1).astype(np.int64)


def tie_scales(emb: np.ndarray, attr: np.ndarray, attr_units: np.ndarray) -> np.ndarray:
    """λ_a = mean over the rows with attribute a of ⟨ê, t̂_a⟩ -> [V] (NaN for an absent a)."""
    proj = np.asarray(emb, dtype=np.float64) @ attr_units.T  # [N, V]
    attr = np.asarray(attr, dtype=np.int64)
    out = np.full(len(attr_units), np.nan)
    for a in range(len(attr_units)):
        rows = attr == a
        if rows.any():
            out[a] = proj[rows, a].mean()
    return out


def tie_translate(
    emb: np.ndarray, attr: np.ndarray, scales: np.ndarray, attr_units: np.ndarray
) -> np.ndarray:
    """z = ê − λ_{a(x)} t̂_{a(x)} for every row -> [N, D] float64."""
    attr = np.asarray(attr, dtype=np.int64)
    return np.asarray(emb, dtype=np.float64) - scales[attr][:, None] * attr_units[attr]


def _attribute_values(ctx: MethodContext, idx, name: str) -> np.ndarray:
    col = f"attr_{name}"
    if col not in idx.columns:
        raise ValueError(
            f"the index has no column {col!r}: attribute {name!r} is not stored for this "
            "dataset; set the method's attribute parameter to one of "
            f"{[c[5:] for c in idx.columns if c.startswith('attr_')]}"
        )
    return idx[col].to_numpy(dtype=np.int64)


def fit(
    ctx: MethodContext,
    fit_attributes: str = "ground_truth",
    test_attributes: str = "zero_shot",
    attribute: str = "",
) -> Correction:
    """λ from the locate split; the translation of each evaluation image (module doc)."""
    for key, v in (("fit_attributes", fit_attributes), ("test_attributes", test_attributes)):
        if v not in SOURCES:
            raise ValueError(f"TIE {key} must be one of {SOURCES}, got {v!r}")
    texts, raw = ctx.text_roles("attribute")
    if len(texts) < 2:
        raise ValueError(
            "TIE needs one attribute prompt per attribute value (attribute_prompts.default "
            "in the dataset text file)"
        )
    units = unit_rows(raw).astype(np.float64)
    idx, emb = ctx.embeddings(ctx.locate_split)
    if fit_attributes == "ground_truth":
        name = ctx.attribute_name(attribute)
        attr = _attribute_values(ctx, idx, name)
        if attr.max() >= len(units):
            raise ValueError(
                f"attribute {name!r} has values up to {attr.max()} but {len(units)} attribute "
                "prompts are given: one prompt per value, in value order"
            )
        known = attr >= 0
        scales = tie_scales(emb[known], attr[known], units)
    else:
        name = attribute or None
        scales = tie_scales(emb, infer_attribute(emb, units), units)
    if np.isnan(scales).any():
        missing = [texts[a] for a in np.flatnonzero(np.isnan(scales))]
        source = (
            "ground-truth attributes"
            if fit_attributes == "ground_truth"
            else "the attributes the model infers zero-shot (a weak or untrained model may "
            "infer one value for every image)"
        )
        raise ValueError(
            f"TIE: no locate-split image has the attribute of {missing} by {source}, so its "
            "translation cannot be estimated; give the locate split images of every value, "
            "or leave this method out of `methods:`"
        )
    test_name = ctx.attribute_name(attribute) if test_attributes == "ground_truth" else None

    def transform(e, idx):
        a = infer_attribute(e, units)
        if test_name is not None:
            true = _attribute_values(ctx, idx, test_name)
            a = np.where(true >= 0, true, a)
        return tie_translate(e, a, scales, units)

    meta = {
        "scales": {t: float(s) for t, s in zip(texts, scales, strict=True)},
        "fit_attributes": fit_attributes,
        "test_attributes": test_attributes,
        "attribute": name,
        "oracle": test_attributes == "ground_truth",
        "texts_sha256": texts_sha256(texts),
    }
    return Correction(transform=transform, meta=meta)


def predict(ctx: MethodContext, **params):
    return apply_correction(ctx, fit(ctx, **params))
