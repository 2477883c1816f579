"""Dataset registry (``config/datasets.yaml``): load, validate, and typed access.

The registry is validated against a JSON Schema (``workflow/schemas/datasets.schema.yaml``)
with :mod:`jsonschema`, then checked for the rules a schema cannot express well. Every error
names the registry file, the dataset and the key.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

ARCHIVE_KINDS = ("tar", "tar.gz", "zip", "none")
SCHEMA_RELPATH = Path("workflow") / "schemas" / "datasets.schema.yaml"


class RegistryError(ValueError):
    """The dataset registry is malformed; the message names the dataset and key."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, as listed in the registry."""

    filename: str
    url: str | None
    archive: str
    size: int | None = None
    sha256: str | None = None
    sha256_source: str | None = None
    md5: str | None = None
    optional: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileSpec:
        return cls(
            filename=d["filename"],
            url=d.get("url"),
            archive=d.get("archive", "none"),
            size=d.get("size"),
            sha256=d.get("sha256"),
            sha256_source=d.get("sha256_source"),
            md5=d.get("md5"),
            optional=bool(d.get("optional", False)),
        )


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the registry."""

    name: str
    files: tuple[FileSpec, ...]
    layout: str = "."
    adapter: str = ""
    description: str = ""
    homepage: str = ""
    licence: Mapping[str, str] = field(default_factory=dict)
    gated: bool = False
    manual_steps: str | None = None
    expect: tuple[str, ...] = ()
    adapter_options: Mapping[str, Any] = field(default_factory=dict)
    derive: Mapping[str, Any] | None = None

    @property
    def manual(self) -> bool:
        """True when the files must be placed by hand (gated, or no plain-HTTP download)."""
        return self.gated or bool(self.manual_steps)

    @property
    def derived(self) -> bool:
        """True for a dataset built from other registry datasets (``clipbias.data.derive``)."""
        return self.derive is not None

    @property
    def components(self) -> list[str]:
        """Names of the datasets a derived entry is built from, in order ([] otherwise)."""
        return [c["dataset"] for c in self.derive["components"]] if self.derive else []

    @property
    def licence_name(self) -> str:
        return str(self.licence.get("name", "unknown"))

    @property
    def licence_url(self) -> str:
        return str(self.licence.get("url", self.homepage))

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> DatasetEntry:
        return cls(
            name=name,
            files=tuple(FileSpec.from_dict(f) for f in d.get("files") or ()),
            layout=d.get("layout", "."),
            adapter=d.get("adapter", name),
            description=str(d.get("description", "")).strip(),
            homepage=d.get("homepage", ""),
            licence=dict(d.get("licence") or {}),
            gated=bool(d.get("gated", False)),
            manual_steps=(str(d["manual_steps"]).strip() if d.get("manual_steps") else None),
            expect=tuple(d.get("expect") or ()),
            adapter_options=dict(d.get("adapter_options") or {}),
            derive=dict(d["derive"]) if d.get("derive") is not None else None,
        )


def default_schema_path(registry_path: str | os.PathLike) -> Path:
    """``<repo>/workflow/schemas/datasets.schema.yaml`` for ``<repo>/config/datasets.yaml``."""
    return Path(registry_path).resolve().parent.parent / SCHEMA_RELPATH


def load_schema(schema_path: str | os.PathLike) -> dict[str, Any]:
    with open(schema_path) as f:
        return yaml.safe_load(f)


def _format_error_path(path: list[Any]) -> tuple[str | None, str]:
    """Split a jsonschema error path into (dataset, key) for messages."""
    parts = list(path)
    dataset = None
    if len(parts) >= 2 and parts[0] == "datasets":
        dataset = str(parts[1])
        parts = parts[2:]
    key = ""
    for p in parts:
        key += f"[{p}]" if isinstance(p, int) else (f".{p}" if key else str(p))
    return dataset, key or "<entry>"


def _schema_errors(data: Any, schema: Mapping[str, Any], source: str) -> list[str]:
    try:
        import jsonschema  # in the dev extras of pyproject.toml; imported only when validating
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RegistryError(
            "validating the dataset registry needs the 'jsonschema' package (pip install "
            "jsonschema)"
        ) from exc
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    messages = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = list(err.absolute_path)
        if err.validator == "required":  # name the missing key itself
            m = re.match(r"'([^']+)' is a required property", err.message)
            if m:
                path.append(m.group(1))
        dataset, key = _format_error_path(path)
        where = f"dataset '{dataset}', key '{key}'" if dataset else f"key '{key}'"
        messages.append(f"{source}: {where}: {err.message}")
    return messages


def _derive_errors(datasets: Mapping[str, Any], name: str, spec: Any, source: str) -> list[str]:
    """Components of a derived entry: registry datasets that are not derived themselves,
    each named once, with classes or top_classes (not both)."""
    msgs = []
    comps = spec.get("components") if isinstance(spec, Mapping) else None
    seen: set[str] = set()
    for i, c in enumerate(comps or []):
        if not isinstance(c, Mapping):
            continue
        where = f"{source}: dataset '{name}', key 'derive.components[{i}]"
        comp = c.get("dataset")
        if comp not in datasets:
            msgs.append(f"{where}.dataset': {comp!r} is not a dataset of the registry")
        elif isinstance(datasets[comp], Mapping) and "derive" in datasets[comp]:
            msgs.append(f"{where}.dataset': {comp!r} is itself derived; name its components")
        if comp in seen:
            msgs.append(f"{where}.dataset': {comp!r} is listed twice")
        seen.add(comp)
        if c.get("classes") and c.get("top_classes"):
            msgs.append(f"{where}': give classes or top_classes, not both")
    return msgs


def _semantic_errors(datasets: Mapping[str, Any], source: str) -> list[str]:
    msgs = []
    for name, d in datasets.items():
        if not isinstance(d, Mapping):
            continue
        if "derive" in d:
            msgs += _derive_errors(datasets, name, d["derive"], source)
            continue
        manual = bool(d.get("gated")) or bool(d.get("manual_steps"))
        seen: set[str] = set()
        for i, f in enumerate(d.get("files") or []):
            if not isinstance(f, Mapping):
                continue
            fn = f.get("filename")
            if fn in seen:
                msgs.append(
                    f"{source}: dataset '{name}', key 'files[{i}].filename': duplicate file name {fn!r}"
                )
            seen.add(fn)
            if not manual and not f.get("url"):
                msgs.append(
                    f"{source}: dataset '{name}', key 'files[{i}].url': a URL is required unless "
                    "the dataset is gated or has manual_steps"
                )
            if f.get("sha256") is None and f.get("md5") is None and f.get("size") is not None:
                log.debug("%s: %s has a size but no checksum", name, fn)
        layout = d.get("layout")
        if isinstance(layout, str):
            norm = posixpath.normpath(layout)
            if norm.startswith("..") or posixpath.isabs(layout):
                msgs.append(
                    f"{source}: dataset '{name}', key 'layout': {layout!r} must stay inside the "
                    "extracted folder"
                )
        for j, e in enumerate(d.get("expect") or []):
            if isinstance(e, str) and (
                posixpath.isabs(e) or posixpath.normpath(e).startswith("..")
            ):
                msgs.append(
                    f"{source}: dataset '{name}', key 'expect[{j}]': {e!r} must be a relative path"
                )
    return msgs


def validate_registry(
    data: Any, schema: Mapping[str, Any], source: str = "datasets registry"
) -> None:
    """Raise :class:`RegistryError` listing every problem (schema and semantic)."""
    msgs = _schema_errors(data, schema, source)
    if not msgs and isinstance(data, Mapping):
        msgs = _semantic_errors(data.get("datasets") or {}, source)
    if msgs:
        raise RegistryError("invalid dataset registry:\n  " + "\n  ".join(msgs))


def load_registry(
    path: str | os.PathLike, schema_path: str | os.PathLike | None = None
) -> dict[str, DatasetEntry]:
    """Load and validate the registry; return ``{name: DatasetEntry}`` in file order.

    ``schema_path`` defaults to ``workflow/schemas/datasets.schema.yaml`` of the repository
    holding ``path`` (``<repo>/config/datasets.yaml``).
    """
    path = Path(path)
    schema_path = Path(schema_path) if schema_path is not None else default_schema_path(path)
    if not schema_path.is_file():
        raise RegistryError(
            f"schema for {path} not found at {schema_path}; pass schema_path explicitly"
        )
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
    validate_registry(data, load_schema(schema_path), source=str(path))
    entries = {name: DatasetEntry.from_dict(name, d) for name, d in data["datasets"].items()}
    log.debug("loaded %d datasets from %s", len(entries), path)
    return entries


def get_entry(registry: Mapping[str, DatasetEntry], name: str) -> DatasetEntry:
    """The entry called ``name``, with a clear error listing the known names."""
    try:
        return registry[name]
    except KeyError:
        raise RegistryError(
            f"dataset {name!r} is not in the registry; known: {', '.join(sorted(registry))}"
        ) from None


def as_entry(entry: DatasetEntry | Mapping[str, Any], name: str | None = None) -> DatasetEntry:
    """Accept a :class:`DatasetEntry` or a raw registry mapping (with ``name`` given)."""
    if isinstance(entry, DatasetEntry):
        return entry
    if name is None:
        name = entry.get("name")
    if not name:
        raise RegistryError("a dataset entry given as a mapping needs a name")
    return DatasetEntry.from_dict(str(name), entry)
