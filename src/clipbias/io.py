"""Small I/O helpers: atomic writes, checksums, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it to ``path`` only if the block succeeds.

    The temporary lives in the same folder, so the final ``os.replace`` is atomic on POSIX.
    On any exception the temporary is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_partials(final: Path) -> None:
    """Delete temporaries left by an earlier, killed attempt to write ``final``."""
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------- rehearsal marker
#: Suffix of a rehearsal's experiment folder; the same as clipbias.rehearsal.SUFFIX.
REHEARSAL_SUFFIX = "-rehearsal"
REHEARSAL_KEY = "rehearsal"
REHEARSAL_BANNER = "REHEARSAL: random weights, fixture data — the numbers mean nothing"


def rehearsal_banner(path: str | os.PathLike) -> str | None:
    """The rehearsal banner when ``path`` lies in a rehearsal's experiment folder
    (``results/<experiment>-rehearsal/...``; the suffix is reserved for rehearsals), else
    None. Every writer of this module (and the tables, figures, predictions and notebooks
    writers) stamps its file with it, so a rehearsal artifact says so wherever it is read."""
    parts = Path(os.path.abspath(path)).parts
    return REHEARSAL_BANNER if any(p.endswith(REHEARSAL_SUFFIX) for p in parts[:-1]) else None


def stamped_metadata(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> dict:
    """File metadata (safetensors, Parquet schema) with ``clipbias.rehearsal`` added when
    ``path`` lies in a rehearsal's folder; values keep their type (str or bytes)."""
    out = dict(meta or {})
    banner = rehearsal_banner(path)
    if banner:
        out[f"clipbias.{REHEARSAL_KEY}"] = banner
    return out


def stamp_table(table: Any, path: str | os.PathLike) -> Any:
    """A pyarrow table whose schema metadata carries the rehearsal banner when ``path`` lies
    in a rehearsal's folder (else ``table`` unchanged)."""
    if not rehearsal_banner(path):
        return table
    meta = {
        k.decode() if isinstance(k, bytes) else k: v
        for k, v in (table.schema.metadata or {}).items()
    }
    return table.replace_schema_metadata(stamped_metadata(path, meta))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically with stable formatting (a mapping in a rehearsal folder gets
    the ``"rehearsal"`` banner as its first key)."""
    banner = rehearsal_banner(path)
    if banner and isinstance(obj, dict):
        obj = {REHEARSAL_KEY: banner, **obj}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(df: Any, path: str | os.PathLike, comments: Sequence[str] = (), **kwargs) -> None:
    """Write a pandas frame as CSV atomically, after ``# ``-prefixed comment lines: the
    rehearsal banner (in a rehearsal folder), then ``comments`` (e.g. a caption).
    :func:`read_csv` skips them; ``kwargs`` go to ``DataFrame.to_csv`` (default no index)."""
    lines = [c for c in (rehearsal_banner(path), *comments) if c]
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            for line in lines:
                for part in str(line).splitlines() or [""]:
                    f.write(f"# {part}\n")
            df.to_csv(f, **kwargs)


def csv_comments(path: str | os.PathLike) -> list[str]:
    """The leading ``# `` comment lines of a CSV written by :func:`write_csv` (text only)."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            out.append(line[1:].strip())
    return out


def read_csv(path: str | os.PathLike, **kwargs) -> Any:
    """``pandas.read_csv`` after the leading comment lines of :func:`write_csv`; a file with
    no table (an empty frame was written) gives an empty frame."""
    import pandas as pd

    skip = len(csv_comments(path))
    with open(path) as f:
        body = f.readlines()[skip:]
    if not "".join(body).strip():
        return pd.DataFrame()
    return pd.read_csv(path, skiprows=skip, **kwargs)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
