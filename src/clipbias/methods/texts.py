"""Method texts of a dataset (``config/texts/*.yaml``), by role, and their encoded table.

Roles: ``pool`` (TextSpan text pool), ``accept_pos``/``accept_neg`` and
``reject_pos``/``reject_neg`` (insight pairs, METHODS §4.7), ``class_accept_pos``/
``class_accept_neg`` (insight pairs per class pair, the reference's multi-class path:
:func:`class_insight_pairs`), ``ortho_spurious`` and
``ortho_candidate`` (Ortho-Cali prompts, §4.10), ``attribute`` (zero-shot prompts of the
spurious attribute's values, §4.8), ``retrieval`` (concept prompts whose per-image scores are
stored with the predictions, e.g. FairFace's MaxSkew, §4.11), and the peer methods' texts
(METHODS §10): ``attribute_word`` (PRISM-mini's attribute words, ``attribute_prompts.words``
or else ``attribute_prompts.values``), ``prism_object``/``prism_scene`` (PRISM's text
quadruples, :func:`prism_texts`), ``group_prompt`` (closed-form debiasing's group prompts,
:func:`group_prompts`). The text file keys are described in
``config/texts/planted.yaml``. Encoded texts are stored raw (unnormalised) in
``texts.parquet`` next to the features: ``role, idx, text, embedding``. The fairness audit's
``protected_attributes`` texts (METHODS §6.4, §3.7) are encoded separately, into
``audit_texts.parquet`` (:func:`write_audit_texts`), so ``texts.parquet`` keeps its roles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TEXT_ROLES = (
    "pool",
    "accept_pos",
    "accept_neg",
    "reject_pos",
    "reject_neg",
    "ortho_spurious",
    "ortho_candidate",
    "attribute",
    "retrieval",
    "class_accept_pos",
    "class_accept_neg",
    "attribute_word",
    "prism_object",
    "prism_scene",
    "group_prompt",
)


def read_spec(texts_yaml: str | os.PathLike) -> dict[str, Any]:
    """The parsed text file of a dataset (an empty file gives ``{}``)."""
    import yaml

    path = Path(texts_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found (config datasets[].texts)")
    return yaml.safe_load(path.read_text()) or {}


def capped(texts: Sequence[str], cap: int) -> list[str]:
    """At most ``cap`` of ``texts``, evenly spaced through the list in order (0 = all)."""
    n = len(texts)
    if not cap or cap >= n:
        return list(texts)
    return [texts[i * n // cap] for i in range(cap)]


def method_texts(spec: Mapping[str, Any], pool_cap: int = 0) -> dict[str, list[str]]:
    """All texts the methods need, by role, from a parsed text file.

    The TextSpan pool is the shipped general pool (unless ``general_pool: false``), then the
    file's ``pool`` and ``textspan_extra`` texts, duplicates removed in order. ``pool_cap``
    (a rehearsal's ``text_pool_cap``; 0 = none) keeps at most that many texts of the general
    pool, evenly spaced (:func:`capped`); the dataset's own pool texts are always kept.
    """
    from clipbias.methods.heads import load_resource_lines

    pairs = spec.get("insight_pairs", {}) or {}
    oc = spec.get("ortho_cali", {}) or {}
    general = load_resource_lines("text_pool_general.txt") if spec.get("general_pool", True) else []
    general = capped(general, pool_cap)
    pool = list(dict.fromkeys([*general, *spec.get("pool", []), *spec.get("textspan_extra", [])]))
    return {
        "pool": pool,
        "accept_pos": [p[0] for p in pairs.get("accept", [])],
        "accept_neg": [p[1] for p in pairs.get("accept", [])],
        "reject_pos": [p[0] for p in pairs.get("reject", [])],
        "reject_neg": [p[1] for p in pairs.get("reject", [])],
        "ortho_spurious": list(oc.get("spurious", [])),
        "ortho_candidate": list(oc.get("candidates", [])),
        "attribute": list((spec.get("attribute_prompts", {}) or {}).get("default", [])),
        "retrieval": retrieval_prompts(spec),
        "class_accept_pos": [r[2] for r in class_insight_pairs(spec)],
        "class_accept_neg": [r[3] for r in class_insight_pairs(spec)],
        "attribute_word": attribute_words(spec),
        **dict(zip(("prism_object", "prism_scene"), prism_texts(spec), strict=True)),
        "group_prompt": group_prompts(spec)[0],
    }


def class_insight_pairs(spec: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The accept pairs per class pair of a text file, flattened in file order:
    ``[(class_a, class_b, positive text, negative text), ...]`` (the rows of the
    ``class_accept_pos`` / ``class_accept_neg`` roles).

    File format (key ``class_insight_pairs``; METHODS §4.7: the reference generates three
    "true visual difference" pairs per pair of classes and keys them by the pair)::

        class_insight_pairs:
          - classes: [circle, square]
            accept:
              - ["a shape with no corners", "a shape with four corners"]
    """
    out = []
    seen = set()
    for k, entry in enumerate(spec.get("class_insight_pairs") or []):
        classes = list((entry or {}).get("classes") or [])
        accept = list((entry or {}).get("accept") or [])
        if len(classes) != 2 or classes[0] == classes[1]:
            raise ValueError(
                f"class_insight_pairs[{k}].classes must name two different classes, got {classes}"
            )
        key = frozenset(classes)
        if key in seen:
            raise ValueError(f"class_insight_pairs: the pair {sorted(key)} is listed twice")
        seen.add(key)
        if not accept or any(len(p) != 2 for p in accept):
            raise ValueError(
                f"class_insight_pairs[{k}] ({classes[0]} / {classes[1]}) needs accept: a list of "
                "[positive, negative] text pairs"
            )
        out += [(str(classes[0]), str(classes[1]), str(p), str(n)) for p, n in accept]
    return out


def attribute_words(spec: Mapping[str, Any]) -> list[str]:
    """PRISM-mini's attribute words (METHODS §10.2): ``attribute_prompts.words``, else the
    attribute's value names ``attribute_prompts.values``."""
    ap = spec.get("attribute_prompts", {}) or {}
    return [str(w) for w in (ap.get("words") or ap.get("values") or [])]


def prism_texts(spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """PRISM's texts (METHODS §10.2, built from the dataset's vocabulary, [REC]): the object
    texts ``prism.object_template`` filled with every object word (``prism.objects``: words
    per class, in class order) and the scene texts ``prism.scene_template`` filled with every
    (object word, background word) pair, objects outer, backgrounds (``prism.backgrounds``:
    words per attribute value, in value order) inner. ``([], [])`` without a ``prism``
    section."""
    p = spec.get("prism") or {}
    if not p:
        return [], []
    objects = [str(w) for words in (p.get("objects") or {}).values() for w in words]
    backgrounds = [str(w) for words in (p.get("backgrounds") or {}).values() for w in words]
    obj_t = p.get("object_template", "a photo of a {object}")
    scene_t = p.get("scene_template", "a photo of a {object} on {background}")
    return (
        [obj_t.format(object=o) for o in objects],
        [scene_t.format(object=o, background=b) for o in objects for b in backgrounds],
    )


def group_prompts(spec: Mapping[str, Any]) -> tuple[list[str], tuple[int, int, int]]:
    """Closed-form debiasing's group prompts (METHODS §10.6, fixed synonym templates instead
    of LLM prompts): for every group (``group_prompts.groups``: synonyms per attribute value,
    in value order), every class word (``group_prompts.classes``, default the file's
    ``classes``) and every template (``group_prompts.templates`` with ``{class}`` and
    ``{group}``), one text per synonym. Returns (texts, (n_groups, n_classes, n_variants));
    texts are ordered group, class, then variant (template outer, synonym inner)."""
    g = spec.get("group_prompts") or {}
    if not g:
        return [], (0, 0, 0)
    groups = [[str(w) for w in words] for words in (g.get("groups") or {}).values()]
    classes = [str(c) for c in (g.get("classes") or spec.get("classes") or [""])]
    templates = [str(t) for t in g.get("templates", ["a photo of a {class} on {group}"])]
    n_syn = {len(w) for w in groups}
    if len(n_syn) > 1:
        raise ValueError(
            "group_prompts.groups: every group needs the same number of synonyms "
            f"(got {[len(w) for w in groups]})"
        )
    texts = [
        t.format(**{"class": c, "group": w})
        for words in groups
        for c in classes
        for t in templates
        for w in words
    ]
    n_var = len(templates) * (n_syn.pop() if n_syn else 0)
    return texts, (len(groups), len(classes), n_var)


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 of a list of texts (canonical JSON): the version of the texts a method used,
    recorded in its predictions' meta."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def retrieval_prompts(spec: Mapping[str, Any]) -> list[str]:
    """``retrieval.template`` filled with each of ``retrieval.concepts`` (in order)."""
    r = spec.get("retrieval") or {}
    return [r.get("template", "A photo of a {} person").format(c) for c in r.get("concepts", [])]


def write_method_texts(
    out: str | os.PathLike,
    by_role: Mapping[str, Sequence[str]],
    embeddings: np.ndarray,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write ``texts.parquet``: rows in :data:`TEXT_ROLES` order, ``embeddings`` aligned;
    ``meta`` (JSON) goes to the schema metadata ``clipbias.meta``."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path, stamp_table

    roles, idx, texts = [], [], []
    for role in TEXT_ROLES:
        for i, t in enumerate(by_role.get(role, [])):
            roles.append(role)
            idx.append(i)
            texts.append(t)
    emb = np.asarray(embeddings, dtype=np.float32)
    if len(emb) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(emb)} embeddings")
    table = pa.table(
        {
            "role": pa.array(roles, pa.string()),
            "idx": pa.array(idx, pa.int64()),
            "text": pa.array(texts, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.reshape(-1), pa.float32()), emb.shape[1] if emb.ndim == 2 else 0
            ),
        }
    )
    if meta:
        table = table.replace_schema_metadata({"clipbias.meta": json.dumps(dict(meta))})
    with atomic_path(out) as tmp:
        pq.write_table(stamp_table(table, out), tmp)


def flatten_roles(by_role: Mapping[str, Sequence[str]]) -> list[str]:
    """Texts of every role in :data:`TEXT_ROLES` order (the rows of ``texts.parquet``)."""
    return [t for role in TEXT_ROLES for t in by_role.get(role, [])]


def read_method_texts(path: str | os.PathLike) -> dict[str, tuple[list[str], np.ndarray]]:
    """role -> (texts, raw embeddings [M, D]); roles without texts give ``([], [0, D])``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pandas()
    dim = len(table["embedding"].iloc[0]) if len(table) else 0
    out = {}
    for role in TEXT_ROLES:
        part = table[table["role"] == role].sort_values("idx")
        emb = (
            np.stack(part["embedding"].to_numpy()).astype(np.float32)
            if len(part)
            else np.zeros((0, dim), np.float32)
        )
        out[role] = (part["text"].tolist(), emb)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


# ---------------------------------------------------------------------------------------------
# Audit texts (METHODS §6.4 concept texts, §3.7 bias texts): audit_texts.parquet
# ---------------------------------------------------------------------------------------------

AUDIT_TEXTS_KEY = b"clipbias.audit_texts"
AUDIT_TEXT_COLUMNS = ["attribute", "role", "value", "text"]


def write_audit_texts(
    out: str | os.PathLike,
    table: Any,
    embeddings: np.ndarray,
    attributes: Mapping[str, Mapping[str, Any]],
) -> None:
    """Write ``audit_texts.parquet`` next to the features: the rows of
    :func:`clipbias.methods.audit.text_table` (``attribute, role, value, text``; role
    ``concept`` or ``bias``) with their raw text embeddings (``embedding``, aligned rows).

    ``attributes`` (``{attribute: {"values": [names in order], "axis": [a, b],
    "description": str}}``, from :func:`clipbias.methods.audit.audit_texts`) is stored as
    JSON schema metadata, so the audit needs no other copy of the text file.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbias.io import atomic_path, stamp_table

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(table):
        raise ValueError(f"{len(table)} audit texts but embeddings of shape {emb.shape}")
    missing = sorted(set(table["attribute"]) - set(attributes))
    if missing:
        raise ValueError(f"audit texts of attribute(s) {missing} have no attribute metadata")
    cols = {c: pa.array([str(x) for x in table[c]], pa.string()) for c in AUDIT_TEXT_COLUMNS}
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
    )
    meta = {
        str(a): {
            "values": [str(v) for v in spec["values"]],
            "axis": [str(v) for v in spec["axis"]],
            "description": str(spec.get("description", "")),
        }
        for a, spec in attributes.items()
    }
    table_pa = pa.table(cols).replace_schema_metadata({AUDIT_TEXTS_KEY: json.dumps(meta).encode()})
    with atomic_path(out) as tmp:
        pq.write_table(stamp_table(table_pa, out), tmp)


def read_audit_texts(path: str | os.PathLike) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """``(table, embeddings [M, D] raw, attributes)`` of :func:`write_audit_texts`."""
    import json

    import pyarrow.parquet as pq

    pa_table = pq.read_table(path)
    meta = (pa_table.schema.metadata or {}).get(AUDIT_TEXTS_KEY)
    if meta is None:
        raise ValueError(f"{path} is not an audit texts table (no {AUDIT_TEXTS_KEY.decode()})")
    df = pa_table.to_pandas()
    emb = (
        np.stack(df["embedding"].to_numpy()).astype(np.float32)
        if len(df)
        else np.zeros((0, 0), np.float32)
    )
    return df[AUDIT_TEXT_COLUMNS].reset_index(drop=True), emb, json.loads(meta)
