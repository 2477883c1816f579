"""Real datasets: registry, verified downloads, adapters and the dataset index.

Submodules:

* :mod:`clipbias.data.registry`: ``config/datasets.yaml`` loader and validation
* :mod:`clipbias.data.download`: verified, resumable downloads, safe extraction, gated datasets
* :mod:`clipbias.data.index`: the dataset index format (docs/DESIGN.md) and its validation
* :mod:`clipbias.data.adapters`: one adapter per real dataset, raw layout -> dataset index
"""

from clipbias.data.registry import (
    DatasetEntry,
    FileSpec,
    RegistryError,
    get_entry,
    load_registry,
)

__all__ = ["DatasetEntry", "FileSpec", "RegistryError", "get_entry", "load_registry"]
