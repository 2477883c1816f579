"""Parquet feature shards: writing, manifest, verified streaming reads.

Layout of a feature folder (see docs/DESIGN.md)::

    shard-00000.parquet ... shard-{n-1:05d}.parquet
    manifest.json       # rows + sha256 per shard
    classifier.parquet  # class text embeddings

Each shard holds the dataset-index columns plus ``heads_lXX`` (fixed-size lists of H*D
values per stored layer), ``rest`` (everything not stored per head), ``embedding``, and the
scalars ``norm_e``, ``ln_mu``, ``ln_sigma``.  Stored terms sum to ``embedding``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipbias import __version__
from clipbias.io import atomic_path, read_json, sha256_file, stamp_table, write_json

log = logging.getLogger(__name__)

META_KEY = b"clipbias.meta"
INDEX_COLUMNS = ("image_id", "path", "split", "label", "group")
DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}

#: Raw feature bytes per Parquet row group written by :func:`write_shard` (row groups are the
#: unit of split-statistics skipping; reads are bounded by :data:`BATCH_BYTES` either way).
ROW_GROUP_BYTES = 64 * 2**20
#: Memory budget of one streamed batch (Arrow decode buffers + float32 numpy arrays); the
#: default ``batch_rows`` of :meth:`FeatureSet.iter_batches` is derived from it.
BATCH_BYTES = 256 * 2**20
#: Bytes held per stored value while a batch is decoded: Arrow's list reader keeps the values
#: (and, for shards with nullable lists, their definition levels: 6-8 bytes per value in
#: all), numpy adds the float32 copy and the ``rest`` temporary; a second batch is read ahead.
BYTES_PER_VALUE = 16
MAX_BATCH_ROWS = 4096
#: Read buffer of one column chunk: with a buffered stream Arrow decodes a column chunk
#: page by page instead of loading it whole, so memory stays O(batch) even for shards
#: written as one row group.
READ_BUFFER_BYTES = 1 << 20


class FeatureError(RuntimeError):
    """A feature folder is missing, incomplete or corrupt."""


def head_column(layer: int) -> str:
    return f"heads_l{layer:02d}"


def shard_bounds(n_rows: int, n_shards: int, shard: int) -> tuple[int, int]:
    """Row range [start, stop) of ``shard`` when ``n_rows`` rows are cut into ``n_shards``.

    Shards differ in size by at most one row; a shard may be empty when n_shards > n_rows.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for n_shards={n_shards}")
    base, extra = divmod(n_rows, n_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def index_schema(index: pd.DataFrame) -> list[pa.Field]:
    """Arrow fields for the dataset-index columns of ``index`` (fixed order)."""
    fields = [
        pa.field("image_id", pa.string()),
        pa.field("path", pa.string()),
        pa.field("split", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("group", pa.int64()),
    ]
    fields += [pa.field(c, pa.int64()) for c in index.columns if c.startswith("attr_")]
    return fields


def feature_schema(
    index: pd.DataFrame,
    layers: Sequence[int],
    n_heads: int,
    dim: int,
    dtype: str,
    meta: dict[str, Any],
) -> pa.Schema:
    """The explicit Arrow schema of a feature shard."""
    if dtype not in DTYPES:
        raise ValueError(f"features dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    value_type = DTYPES[dtype][1]
    fields = index_schema(index)
    fields += [
        pa.field(head_column(l), _list_type(value_type, n_heads * dim), nullable=False)
        for l in layers
    ]
    fields += [
        pa.field("rest", _list_type(value_type, dim), nullable=False),
        pa.field("embedding", _list_type(value_type, dim), nullable=False),
        pa.field("norm_e", pa.float32()),
        pa.field("ln_mu", pa.float32()),
        pa.field("ln_sigma", pa.float32()),
    ]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})


def _list_type(value_type: pa.DataType, width: int) -> pa.DataType:
    """Fixed-size list of non-null values: without definition levels for nulls, Arrow reads
    such columns about 1.6x faster (features never hold nulls)."""
    return pa.list_(pa.field("element", value_type, nullable=False), width)


def _fixed_list(values: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    flat = values.reshape(values.shape[0], -1)
    width = flat.shape[1]
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat.reshape(-1), type=value_type), type=_list_type(value_type, width)
    )


def build_table(
    index: pd.DataFrame,
    heads: np.ndarray,
    rest: np.ndarray,
    embedding: np.ndarray,
    norm_e: np.ndarray,
    ln_mu: np.ndarray,
    ln_sigma: np.ndarray,
    layers: Sequence[int],
    dtype: str,
    meta: dict[str, Any],
) -> pa.Table:
    """Assemble one shard table. ``heads`` is [N, len(layers), H, D]."""
    n, n_layers, n_heads, dim = heads.shape
    if n_layers != len(layers):
        raise ValueError("heads.shape[1] must equal len(layers)")
    np_type, value_type = DTYPES[dtype]
    schema = feature_schema(index, layers, n_heads, dim, dtype, meta)
    cols: list[pa.Array] = []
    for field in schema:
        name = field.name
        if name in index.columns:
            cols.append(pa.array(index[name].to_numpy(), type=field.type))
        elif name.startswith("heads_l"):
            k = list(layers).index(int(name[len("heads_l") :]))
            cols.append(_fixed_list(heads[:, k].astype(np_type), value_type))
        elif name in ("rest", "embedding"):
            arr = rest if name == "rest" else embedding
            cols.append(_fixed_list(arr.astype(np_type), value_type))
        else:
            arr = {"norm_e": norm_e, "ln_mu": ln_mu, "ln_sigma": ln_sigma}[name]
            cols.append(pa.array(np.asarray(arr, dtype=np.float32), type=pa.float32()))
    return pa.Table.from_arrays(cols, schema=schema)


def checksum_path(shard: str | os.PathLike) -> Path:
    """The sidecar holding a shard's sha256, written right after the shard itself."""
    return Path(f"{shard}.sha256")


def row_bytes(schema: pa.Schema) -> int:
    """Raw bytes of the fixed-size feature lists of one row."""
    total = 0
    for f in schema:
        if pa.types.is_fixed_size_list(f.type):
            total += f.type.list_size * f.type.value_type.byte_width
    return total


def write_shard(table: pa.Table, path: str | os.PathLike) -> str:
    """Write a shard atomically (temporary sibling, then rename) and its sha256 sidecar.

    Returns the sha256. The sidecar records the checksum at write time, so corruption that
    happens later (truncation, bit rot, a partial copy) is detected by :func:`write_manifest`.
    Row groups hold about :data:`ROW_GROUP_BYTES` of raw feature values each.
    """
    # Dictionary encoding only pays for the string index columns; byte-stream-split makes
    # float contributions compress (about 0.85x raw float32 instead of 1.25x).
    features = [
        f"{f.name}.list.element"
        for f in table.schema
        if _is_feature(f.name) and pa.types.is_fixed_size_list(f.type)
    ]
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    table = stamp_table(table, path)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            use_dictionary=strings,
            use_byte_stream_split=features,
            row_group_size=max(1, ROW_GROUP_BYTES // max(row_bytes(table.schema), 1)),
        )
        digest = sha256_file(tmp)
    with atomic_path(checksum_path(path)) as tmp:
        tmp.write_text(f"{digest}  {Path(path).name}\n")
    return digest


def write_manifest(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Record rows, rows per split and sha256 of each shard; shard paths are stored relative
    to ``out``. The split counts let readers skip shards without rows of a split unopened."""
    out = Path(out)
    entries = []
    meta = None
    for s in shards:
        s = Path(s)
        side = checksum_path(s)
        rebuild = f"`rm {s} {side}` and rerun the same snakemake command"
        if not side.is_file():
            raise FeatureError(f"{side} is missing, so {s} cannot be verified; {rebuild}")
        expected = side.read_text().split()[0]
        if sha256_file(s) != expected:
            raise FeatureError(
                f"shard {s} is corrupt: its sha256 differs from the one recorded when it was "
                f"written ({side}). To rebuild it, {rebuild}."
            )
        md = pq.read_metadata(s)
        if meta is None:
            meta = json.loads(md.schema.to_arrow_schema().metadata[META_KEY])
        splits = pq.read_table(s, columns=["split"]).column("split").value_counts().to_pylist()
        entries.append(
            {
                "file": s.name,
                "rows": md.num_rows,
                "sha256": expected,
                "splits": {str(v["values"]): int(v["counts"]) for v in splits},
            }
        )
    manifest = {
        "format": "clipbias-features/1",
        "clipbias_version": __version__,
        "n_shards": len(entries),
        "rows": sum(e["rows"] for e in entries),
        "meta": meta,
        "shards": entries,
    }
    write_json(out, manifest)
    return manifest


@dataclass
class FeatureSet:
    """Read access to a verified feature folder.

    ``verify=True`` (default) checks a shard's sha256 against ``manifest.json`` before any
    of its data is used (once per shard and FeatureSet), so a truncated or altered shard is
    reported instead of read. Shards that a read does not need (no rows of the requested
    split, from the manifest's per-shard split counts) are neither read nor hashed;
    :meth:`verify_all` checks every shard at once.
    """

    folder: Path
    manifest: dict
    meta: dict
    verify: bool = True
    _verified: set[str] = dataclass_field(default_factory=set, repr=False)

    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> FeatureSet:
        folder = Path(folder)
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise FeatureError(
                f"{mpath} not found: the features in {folder} are incomplete. "
                f"Rebuild them with `snakemake {mpath}`."
            )
        manifest = read_json(mpath)
        for e in manifest["shards"]:
            p = folder / e["file"]
            if not p.is_file():
                raise FeatureError(
                    f"shard {p} listed in {mpath} is missing; rebuild with `snakemake {p}`"
                )
        return cls(folder, manifest, manifest["meta"], verify=verify)

    def verify_all(self) -> None:
        """Check every shard's sha256 against the manifest now (raises :class:`FeatureError`)."""
        for entry in self.manifest["shards"]:
            self._checked(entry)

    def _checked(self, entry: dict) -> Path:
        """The shard of a manifest entry, its sha256 checked first if ``verify``."""
        p = self.folder / entry["file"]
        if self.verify and entry["file"] not in self._verified:
            self._check_digest(entry, sha256_file(p))
        return p

    def _shards(self, split: str | None) -> Iterator[Path]:
        """Verified shards that may hold rows of ``split`` (all for None or old manifests).

        The next shard is hashed in a background thread while the caller reads this one
        (hashlib releases the GIL), so verification overlaps with decoding."""
        from concurrent.futures import ThreadPoolExecutor

        shards = self.manifest["shards"]
        entries = [
            e for e in shards if split is None or e.get("splits") is None or e["splits"].get(split)
        ]
        if split is not None and not entries and all(e.get("splits") is not None for e in shards):
            raise FeatureError(
                f"split {split!r} is not in the features of {self.folder} (extracted: "
                f"{self.splits}). "
                "Add it to features.splits in the config (or leave features.splits at 'auto', "
                "which extracts every split the configured stages read) and rerun snakemake."
            )
        if not self.verify:
            yield from (self.folder / e["file"] for e in entries)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = {}

            def ahead(i: int) -> None:
                if i < len(entries) and entries[i]["file"] not in self._verified:
                    pending[i] = pool.submit(sha256_file, self.folder / entries[i]["file"])

            ahead(0)
            for i, entry in enumerate(entries):
                ahead(i + 1)
                if i in pending:
                    self._check_digest(entry, pending.pop(i).result())
                yield self.folder / entry["file"]

    def _check_digest(self, entry: dict, digest: str) -> None:
        p = self.folder / entry["file"]
        if digest != entry["sha256"]:
            raise FeatureError(
                f"shard {p} is corrupt: its sha256 differs from "
                f"{self.folder / 'manifest.json'}. To rebuild it, "
                f"`rm {p} {checksum_path(p)}` and rerun the same snakemake command."
            )
        self._verified.add(entry["file"])

    @property
    def splits(self) -> list[str]:
        """Splits present in the features, from the manifest's per-shard split counts (the
        index columns are read only for manifests written before those counts existed)."""
        shards = self.manifest["shards"]
        if all(e.get("splits") is not None for e in shards):
            return sorted({s for e in shards for s, n in e["splits"].items() if n})
        return sorted(set(self.index()["split"].astype(str)))

    @property
    def files(self) -> list[Path]:
        return [self.folder / e["file"] for e in self.manifest["shards"]]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def n_heads(self) -> int:
        return int(self.meta["n_heads"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def index(self, split: str | None = None) -> pd.DataFrame:
        """The dataset-index columns (no features), in storage order."""
        import pyarrow.compute as pc

        parts = []
        for path in self._shards(split):
            with pq.ParquetFile(path) as pf:
                cols = [n for n in pf.schema_arrow.names if not _is_feature(n)]
                table = pf.read(columns=cols)
            if split is not None:
                table = table.filter(pc.equal(table.column("split"), split))
            parts.append(table)
        if not parts:  # an empty frame with the index columns of the first shard
            pf = pq.ParquetFile(self.files[0])
            cols = [n for n in pf.schema_arrow.names if not _is_feature(n)]
            return pf.schema_arrow.empty_table().select(cols).to_pandas()
        return pa.concat_tables(parts).to_pandas()

    def batch_rows(self, layers: Sequence[int] | None = None, rest: bool = True) -> int:
        """Default rows per streamed batch: :data:`BATCH_BYTES` over the bytes a row of
        ``layers`` (and the embedding, for ``rest``) takes while decoded; at most
        :data:`MAX_BATCH_ROWS`. ViT-H-14: 31 rows with all 32 layers, 252 with the last 4."""
        n_layers = len(self._check_layers(layers))
        values = n_layers * self.n_heads * self.dim + (self.dim if rest else 0)
        return int(min(MAX_BATCH_ROWS, max(1, BATCH_BYTES // (BYTES_PER_VALUE * max(values, 1)))))

    def iter_batches(
        self,
        layers: Sequence[int] | None = None,
        split: str | None = None,
        batch_rows: int | None = None,
        rest: bool = True,
    ) -> Iterator[tuple[pd.DataFrame, np.ndarray, np.ndarray | None]]:
        """Stream (index, heads [n, L', H, D], rest' [n, D]) in float32, in storage order.

        Only the requested layers' columns are read (column projection). ``rest'`` is
        ``embedding - sum(requested heads)``, so heads and rest' still sum to the embedding;
        with ``rest=False`` the embedding is not read and ``None`` is yielded instead.

        Memory is O(batch): shards are read one at a time through a buffered stream (Arrow
        decodes each column chunk page by page), row groups without rows of ``split`` are
        skipped from their statistics, and ``batch_rows`` (default :meth:`batch_rows`, from
        :data:`BATCH_BYTES`) bounds the decoded rows. One background thread reads (and
        verifies) the next Arrow batch while this one is converted and used, so at most two
        batches are in flight.
        """
        layers = self._check_layers(layers)
        if batch_rows is None:
            batch_rows = self.batch_rows(layers, rest)
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        for batch, idx_cols in _prefetched(self._record_batches(layers, split, batch_rows, rest)):
            yield self._decode(batch, idx_cols, layers, rest)

    def _record_batches(
        self, layers: list[int], split: str | None, batch_rows: int, rest: bool
    ) -> Iterator[tuple[pa.RecordBatch, list[str]]]:
        """Arrow batches of ``split`` (only the needed columns) and the index column names."""
        import pyarrow.compute as pc

        for path in self._shards(split):
            with pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES) as pf:
                idx_cols = [n for n in pf.schema_arrow.names if not _is_feature(n)]
                cols = [*idx_cols, *map(head_column, layers), *(["embedding"] if rest else [])]
                groups = _row_groups_with(pf, "split", split)
                if not groups:
                    continue
                for batch in pf.iter_batches(batch_rows, row_groups=groups, columns=cols):
                    if split is not None:
                        keep = pc.equal(batch.column("split"), split)
                        n_keep = pc.sum(keep).as_py() or 0
                        if n_keep == 0:
                            continue
                        if n_keep < batch.num_rows:
                            batch = batch.filter(keep)
                    if batch.num_rows:
                        yield batch, idx_cols

    def load(
        self, layers: Sequence[int] | None = None, split: str | None = None
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """All rows of ``split`` at once: (index, heads [N, L', H, D], rest' [N, D])."""
        parts = list(self.iter_batches(layers, split))
        if not parts:
            raise FeatureError(f"no rows for split {split!r} in {self.folder}")
        idx = pd.concat([p[0] for p in parts], ignore_index=True)
        return idx, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def head_means(
        self, layers: Sequence[int] | None = None, split: str | Sequence[str] | None = None
    ) -> np.ndarray:
        """Per-head mean contribution [L', H, D], streamed (one batch in memory at a time);
        ``split`` may name several splits, whose rows are averaged together."""
        layers = self._check_layers(layers)
        total = np.zeros((len(layers), self.n_heads, self.dim), dtype=np.float64)
        n = 0
        for s in [split] if split is None or isinstance(split, str) else split:
            for _, heads, _ in self.iter_batches(layers, s, rest=False):
                total += heads.sum(0, dtype=np.float64)
                n += heads.shape[0]
        if n == 0:
            raise FeatureError(f"no rows for split {split!r} in {self.folder}")
        return (total / n).astype(np.float32)

    def top1_counts(
        self,
        direction: np.ndarray,
        layers: Sequence[int] | None = None,
        split: str | None = None,
    ) -> np.ndarray:
        """How often each head has the largest projection on ``direction`` [D] (streamed)."""
        layers = self._check_layers(layers)
        counts = np.zeros((len(layers), self.n_heads), dtype=np.int64)
        for _, heads, _ in self.iter_batches(layers, split, rest=False):
            proj = heads @ direction.astype(np.float32)
            flat = proj.reshape(proj.shape[0], -1).argmax(1)
            np.add.at(counts.reshape(-1), flat, 1)
        return counts

    def _check_layers(self, layers: Sequence[int] | None) -> list[int]:
        if layers is None:
            return self.layers
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise FeatureError(
                f"layers {missing} are not stored in {self.folder} (stored: {self.layers}); "
                f"set features.layers in the config and re-extract"
            )
        return list(layers)

    def _decode(
        self, batch: pa.RecordBatch, idx_cols: list[str], layers: list[int], rest: bool = True
    ):
        n = batch.num_rows
        idx = pa.Table.from_batches([batch.select(idx_cols)]).to_pandas()
        heads = np.empty((n, len(layers), self.n_heads, self.dim), dtype=np.float32)
        for k, l in enumerate(layers):  # float16 is widened (exactly) by this assignment
            raw = _raw_values(batch.column(head_column(l)))
            heads[:, k] = raw.reshape(n, self.n_heads, self.dim)
        if not rest:
            return idx, heads, None
        emb = _values(batch.column("embedding")).reshape(n, self.dim)
        return idx, heads, emb - heads.sum((1, 2))


_DONE = object()


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Arrow's Parquet decoding and hashlib release the GIL, so reading the next batch
    overlaps with the caller's numpy work on this one. Exceptions are re-raised here; when
    the caller stops early, the thread stops at its next item.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the consumer
            put((None, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="clipbias-feature-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _row_groups_with(pf: pq.ParquetFile, column: str, value: str | None) -> list[int]:
    """Row groups of ``pf`` that may hold rows with ``column == value`` (all if ``value`` is
    None or a row group has no min/max statistics)."""
    n = pf.metadata.num_row_groups
    if value is None:
        return list(range(n))
    j = pf.schema_arrow.get_field_index(column)
    out = []
    for i in range(n):
        rg = pf.metadata.row_group(i)
        if rg.num_rows == 0:
            continue
        st = rg.column(j).statistics if j >= 0 else None
        if st is not None and st.has_min_max and not (st.min <= value <= st.max):
            continue
        out.append(i)
    return out


def _is_feature(name: str) -> bool:
    return name.startswith("heads_l") or name in (
        "rest",
        "embedding",
        "norm_e",
        "ln_mu",
        "ln_sigma",
    )


def _raw_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The flat values of a fixed-size-list column in their stored dtype (zero-copy)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False)


def _values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _raw_values(col).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- classifier


def write_classifier(
    path: str | os.PathLike,
    class_names: Sequence[str],
    embeddings: np.ndarray,
    meta: dict[str, Any],
) -> None:
    """Store class text embeddings [C, D] (unit rows) with their prompts as metadata."""
    emb = np.asarray(embeddings, dtype=np.float32)
    table = pa.table(
        {
            "class_index": pa.array(np.arange(len(class_names)), type=pa.int64()),
            "class_name": pa.array(list(class_names), type=pa.string()),
            "embedding": _fixed_list(emb, pa.float32()),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(stamp_table(table, path), tmp)


def read_classifier(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict]:
    """Return (class names, classifier [D, C] with unit columns, metadata)."""
    table = pq.read_table(path)
    names = table.column("class_name").to_pylist()
    emb = _values(table.column("embedding")).reshape(len(names), -1)
    meta = json.loads(table.schema.metadata[META_KEY])
    return names, emb.T.copy(), meta
