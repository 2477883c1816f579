"""Verified, resumable downloads, safe extraction and gated datasets.

Flow of :func:`fetch_dataset` for one registry entry:

1. raw files: ``<raw_dir>/<filename>``. Plain-HTTP datasets are downloaded with resume
   (``<file>.part`` + ``Range``); gated / manual datasets must be placed by hand, otherwise a
   :class:`GatedDatasetError` (or :class:`ManualDownloadRequired`) says what to place where.
2. every raw file is verified on every run: size, pinned sha256 (and md5 where that is all
   upstream publishes), or, where nothing is published, the sha256 recorded in the lock file
   on first use.
3. archives are checked member by member (no absolute paths, no ``..``, no links leaving the
   target, no device files) and unpacked into a temporary sibling of ``out_dir`` that is
   renamed into place only when everything succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import requests
import urllib3
from tqdm.auto import tqdm

from clipbias.data.registry import DatasetEntry, FileSpec, as_entry, get_entry, load_registry
from clipbias.io import atomic_path

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
DEFAULT_TIMEOUT = (15.0, 60.0)  # (connect, read) seconds
LOCK_VERSION = 1


# --------------------------------------------------------------------------- errors


class DatasetError(RuntimeError):
    """Base class of every error raised while fetching a dataset."""


class DownloadError(DatasetError):
    """An HTTP download failed (status, connection); the message names URL and remedy."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumError(DatasetError):
    """A file does not match its pinned or recorded size / checksum."""


class UnsafeArchiveError(DatasetError):
    """An archive member would be written outside the target or is a special file."""


class ArchiveError(DatasetError):
    """An archive cannot be read (corrupt, truncated, wrong format)."""


class LayoutError(DatasetError):
    """The unpacked files do not have the layout the registry expects."""


class ManualDownloadRequired(DatasetError):
    """Files that must be placed by hand are missing."""


class GatedDatasetError(ManualDownloadRequired):
    """A gated dataset (licence acceptance required) has not been placed by hand."""


class _Retryable(Exception):
    """Internal: a transient failure; the partial download is kept for resuming."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- hashing / lock


def file_digests(
    path: str | os.PathLike, algorithms: Sequence[str] = ("sha256",), chunk_size: int = CHUNK_SIZE
) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, computed in a single read."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def lock_key(dataset: str, filename: str) -> str:
    return f"{dataset}/{filename}"


def read_lock(lock_file: str | os.PathLike | None) -> dict[str, Any]:
    """The lock file's ``files`` mapping (empty when the file does not exist)."""
    if lock_file is None or not Path(lock_file).exists():
        return {}
    try:
        data = json.loads(Path(lock_file).read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"lock file {lock_file} is not valid JSON ({exc}); fix or delete it "
            "(deleting it re-records the checksums of the files currently on disk)"
        ) from exc
    return dict(data.get("files", {}))


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file across processes (POSIX flock)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    guard = lock_file.with_name(f".{lock_file.name}.flock")
    with open(guard, "a") as g:
        fcntl.flock(g, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(g, fcntl.LOCK_UN)


def record_lock(lock_file: str | os.PathLike, key: str, record: Mapping[str, Any]) -> None:
    """Add or replace ``key`` in the lock file, atomically."""
    lock_file = Path(lock_file)
    with _locked(lock_file):
        files = read_lock(lock_file)
        files[key] = dict(record)
        payload = {
            "version": LOCK_VERSION,
            "comment": "sha256 of dataset files that have no published checksum, recorded on "
            "first download by clipbias.data.download; verified on every later run",
            "files": dict(sorted(files.items())),
        }
        with atomic_path(lock_file) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def verify_file(
    path: str | os.PathLike,
    spec: FileSpec,
    *,
    dataset: str,
    lock_file: str | os.PathLike | None = None,
    remove_on_mismatch: bool = True,
    registry_hint: str = "config/datasets.yaml",
) -> str:
    """Check ``path`` against ``spec`` (size, sha256, md5) or the lock file; return its sha256.

    Where the registry publishes no sha256, the value recorded in ``lock_file`` is used; if
    there is none yet, the file's sha256 is recorded there (trust on first use). On a
    mismatch the file is removed (``remove_on_mismatch``) and :class:`ChecksumError` raised.
    """
    path = Path(path)
    key = lock_key(dataset, spec.filename)
    lock_entry = read_lock(lock_file).get(key) if lock_file is not None else None

    def fail(what: str, expected: Any, actual: Any, source: str, fix_pin: str) -> None:
        if remove_on_mismatch:
            path.unlink(missing_ok=True)
            fate = "The bad file has been removed."
            retry = (
                "If the download was corrupted or interrupted, simply rerun to download it again."
            )
        else:
            fate = "The file was left in place."
            retry = (
                f"If it is damaged or the wrong file, replace it with a fresh copy (delete {path} "
                "and download it again) and rerun."
            )
        raise ChecksumError(
            f"{what} mismatch for {path} (dataset '{dataset}', file '{spec.filename}'):\n"
            f"  expected: {expected}  (source: {source})\n"
            f"  actual:   {actual}\n"
            f"{fate} {retry}\n"
            f"If the upstream file legitimately changed, check the new file and then {fix_pin}."
        )

    pin_fix = f"update the pin of '{spec.filename}' in the '{dataset}' entry of {registry_hint}"
    lock_fix = f"delete the entry '{key}' from {lock_file} so that it is recorded again"

    actual_size = path.stat().st_size
    if spec.size is not None and actual_size != spec.size:
        fail("size", f"{spec.size} bytes", f"{actual_size} bytes", "registry", pin_fix)

    algos = ["sha256"] + (["md5"] if spec.md5 else [])
    log.info("verifying %s (%s)", path, ", ".join(algos))
    digests = file_digests(path, algos)
    sha = digests["sha256"]

    if spec.sha256 is not None:
        if sha != spec.sha256:
            fail("sha256", spec.sha256, sha, spec.sha256_source or "registry", pin_fix)
    elif lock_entry and lock_entry.get("sha256"):
        if sha != lock_entry["sha256"]:
            fail(
                "sha256",
                lock_entry["sha256"],
                sha,
                f"lock file {lock_file}, recorded {lock_entry.get('recorded', '?')} for "
                f"{lock_entry.get('size', '?')} bytes; this file has {actual_size} bytes",
                lock_fix,
            )
    elif lock_file is not None and spec.md5 is None:
        record_lock(
            lock_file,
            key,
            {"sha256": sha, "size": actual_size, "url": spec.url, "recorded": _now()},
        )
        log.warning(
            "%s: no published checksum; recorded sha256 %s in %s (verified on later runs)",
            key,
            sha,
            lock_file,
        )
    elif spec.md5 is None:
        log.warning("%s: no published checksum and no lock file given; not verified", key)

    if spec.md5 is not None and digests["md5"] != spec.md5:
        fail("md5", spec.md5, digests["md5"], "registry", pin_fix)
    return sha


# --------------------------------------------------------------------------- HTTP


_FILTER_ERROR = getattr(tarfile, "FilterError", ())
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_NETWORK_ERRORS = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def _http_error_message(url: str, status: int, reason: str) -> str:
    head = f"download of {url} failed: HTTP {status} {reason}".rstrip()
    if status == 404 or status == 410:
        hint = (
            "The file is not (or no longer) at this address. Check the dataset homepage for "
            "its current location and update `url` in the registry, or download it by hand "
            "into the raw folder."
        )
    elif status in (401, 403):
        hint = (
            "Access was denied: the dataset may need a login or the acceptance of its licence. "
            "Download it by hand into the raw folder and rerun."
        )
    elif status == 429 or status >= 500:
        hint = (
            "The server is overloaded or failing; this is usually temporary. Rerun later "
            "(a partial download is resumed)."
        )
    else:
        hint = "Check the URL in the registry and try again."
    return f"{head}. {hint}"


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    session: requests.Session | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    retries: int = 3,
    backoff: float = 2.0,
    chunk_size: int = CHUNK_SIZE,
    progress: bool | None = None,
) -> Path:
    """Stream ``url`` to ``dest`` through ``<dest>.part``, resuming a partial download.

    A present ``.part`` is continued with ``Range: bytes=N-``: a ``206`` answer appends, a
    ``200`` (server ignored the range) restarts from zero, a ``416`` means the part is already
    complete (or is discarded and restarted). Connection failures and 5xx answers are retried
    ``retries`` times (waiting ``backoff * attempt`` seconds), keeping the part. ``dest`` only
    appears, by atomic rename, once all bytes arrived. ``progress=None`` shows a progress bar
    only on a terminal.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_session = session is None
    sess = session or requests.Session()
    try:
        attempt = 0
        while True:
            try:
                _download_once(
                    url, part, sess, expected_size, timeout, chunk_size, progress, dest.name
                )
                break
            except _Retryable as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(str(exc), url=url, status=exc.status) from None
                wait = backoff * attempt
                log.warning(
                    "%s (attempt %d of %d; retrying in %.0f s)", exc, attempt, retries + 1, wait
                )
                time.sleep(wait)
    finally:
        if own_session:
            sess.close()
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _download_once(
    url: str,
    part: Path,
    sess: requests.Session,
    expected_size: int | None,
    timeout: float | tuple[float, float],
    chunk_size: int,
    progress: bool | None,
    label: str,
    _restarted: bool = False,
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("resuming %s at byte %d", url, offset)
    try:
        resp = sess.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.exceptions.ConnectionError as exc:
        raise _Retryable(
            f"could not connect to {url} ({exc.__class__.__name__}: {exc}). Check the network "
            "connection, proxy settings (HTTPS_PROXY/HTTP_PROXY) and that the host is "
            "reachable, then rerun."
        ) from None
    except requests.exceptions.RequestException as exc:
        raise _Retryable(f"request to {url} failed ({exc.__class__.__name__}: {exc})") from None

    with resp:
        status = resp.status_code
        if status == 416:
            m = _UNSATISFIED_RANGE.search(resp.headers.get("Content-Range", ""))
            if m and offset == int(m.group(1)):
                log.info("%s: partial download is already complete", label)
                return
            if _restarted:
                raise _Retryable(f"download of {url} failed: HTTP 416 even without a Range", 416)
            log.warning(
                "%s: server rejected resuming at byte %d (HTTP 416); restarting", label, offset
            )
            part.unlink(missing_ok=True)
            resp.close()
            return _download_once(
                url, part, sess, expected_size, timeout, chunk_size, progress, label, True
            )
        if status == 206:
            m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                if _restarted:
                    raise _Retryable(f"download of {url}: inconsistent partial content", 206)
                log.warning("%s: unexpected Content-Range %r; restarting", label, m and m.group(0))
                part.unlink(missing_ok=True)
                resp.close()
                return _download_once(
                    url, part, sess, expected_size, timeout, chunk_size, progress, label, True
                )
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        elif status == 200:
            if offset:
                log.warning("%s: server ignored the Range request (HTTP 200); restarting", label)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            msg = _http_error_message(url, status, resp.reason or "")
            if status == 429 or status >= 500:
                raise _Retryable(msg, status)
            raise DownloadError(msg, url=url, status=status)

        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {url}: the server announces {total} bytes but the registry pins "
                f"{expected_size}. The URL may now serve a different file (or an error page). "
                "Check it; if the upstream file legitimately changed, update size and sha256 "
                "in the registry.",
                url=url,
                status=status,
            )
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            log.warning("%s: server answers with Content-Type %s; expected a data file", url, ctype)

        written = offset
        try:
            with (
                open(part, mode) as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=label,
                    disable=None if progress is None else not progress,
                    leave=False,
                ) as bar,
            ):
                for chunk in resp.raw.stream(chunk_size, decode_content=False):
                    f.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        except _NETWORK_ERRORS as exc:
            raise _Retryable(
                f"connection to {url} was cut after {written} of {total or '?'} bytes "
                f"({exc.__class__.__name__}). The partial file {part} is kept; rerun to resume."
            ) from None
        if total is not None and written != total:
            raise _Retryable(
                f"connection to {url} ended after {written} of {total} bytes. The partial "
                f"file {part} is kept; rerun to resume."
            )
    return None


# --------------------------------------------------------------------------- extraction


def _norm_member(name: str, archive: Path) -> PurePosixPath:
    """Normalised relative path of an archive member; refuses absolute paths and ``..``."""
    if not name:
        raise UnsafeArchiveError(f"{archive}: member with an empty name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute path; refusing to extract"
        )
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} contains a '..' component and would be written outside "
            "the target folder; refusing to extract"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _through_symlink(path: PurePosixPath, symlinks: set[PurePosixPath]) -> PurePosixPath | None:
    for parent in path.parents:
        if parent in symlinks:
            return parent
    return None


def _link_target_inside(
    target: str, base: PurePosixPath, symlinks: frozenset[PurePosixPath] = frozenset()
) -> tuple[PurePosixPath | None, str]:
    """Resolve link ``target`` from folder ``base`` component by component.

    Returns ``(path, "")`` when it stays inside the archive root without passing through or
    ending on a symlink member, else ``(None, reason)``.
    """
    unified = target.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        return None, "points outside the target folder (absolute target)"
    stack = [p for p in base.parts if p != "."]
    for comp in unified.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return None, "points outside the target folder"
            stack.pop()
            continue
        stack.append(comp)
        if PurePosixPath(*stack) in symlinks:
            return None, f"points through another symlink ({'/'.join(stack)!r})"
    return (PurePosixPath(*stack) if stack else PurePosixPath(".")), ""


def check_tar_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Validate every member of ``tar``; return the members to extract (root entries dropped).

    Refuses absolute paths, ``..`` components, device files / FIFOs, unknown member types,
    symlinks or hard links whose target leaves the archive root or passes through another
    symlink, and members written through a symlink. Nothing is extracted here.
    """
    members = [(m, _norm_member(m.name, archive)) for m in tar.getmembers()]
    symlinks = frozenset(rel for m, rel in members if m.issym())
    keep = []
    for m, rel in members:
        if str(rel) == ".":
            continue
        via = _through_symlink(rel, set(symlinks))
        if via is not None:
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} would be written through the symlink {str(via)!r}; "
                "refusing to extract"
            )
        if m.isdev():
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} is a device file or FIFO; refusing to extract"
            )
        if m.issym() or m.islnk():
            # symlink targets are relative to the link's folder, hard links to the root
            base = rel.parent if m.issym() else PurePosixPath(".")
            _, reason = _link_target_inside(m.linkname, base, symlinks)
            if reason:
                kind = "symlink" if m.issym() else "hard link"
                raise UnsafeArchiveError(
                    f"{archive}: {kind} {m.name!r} -> {m.linkname!r} {reason}; refusing to extract"
                )
        elif not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {m.name!r} has an unsupported type ({m.type!r}); refusing "
                "to extract"
            )
        keep.append(m)
    return keep


def check_zip_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """Validate every member of ``zf``; refuses absolute paths, ``..``, symlinks, devices."""
    keep = []
    for zi in zf.infolist():
        rel = _norm_member(zi.filename, archive)
        if str(rel) == ".":
            continue
        mode = zi.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(zi).decode("utf-8", "replace")
            _, reason = _link_target_inside(target, rel.parent)
            where = reason or "is a symlink (not supported in zip archives)"
            raise UnsafeArchiveError(
                f"{archive}: member {zi.filename!r} -> {target!r} {where}; refusing to extract"
            )
        # no file-type bits (common, e.g. Python's writestr) = regular file
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(
                f"{archive}: member {zi.filename!r} is a device file or special file; refusing "
                "to extract"
            )
        keep.append(zi)
    return keep


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, kind: str) -> None:
    """Extract ``archive`` (``tar``, ``tar.gz`` or ``zip``) into the existing folder ``dest``.

    All members are checked before anything is written; tar extraction additionally uses the
    standard library's ``data`` filter where available. Use inside :func:`clipbias.io.atomic_path`
    so that a failure leaves nothing at the final location.
    """
    archive = Path(archive)
    dest = Path(dest)
    log.info("extracting %s into %s", archive, dest)
    try:
        if kind in ("tar", "tar.gz"):
            # "r:*" detects the compression itself: a mislabelled plain tar still opens.
            with tarfile.open(archive, "r:*") as tar:
                members = check_tar_members(tar, archive)
                kwargs: dict[str, Any] = {}
                if hasattr(tarfile, "data_filter"):
                    kwargs["filter"] = "data"
                try:
                    tar.extractall(dest, members=members, **kwargs)
                except _FILTER_ERROR as exc:
                    raise UnsafeArchiveError(f"{archive}: {exc}; refusing to extract") from exc
        elif kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for zi in check_zip_members(zf, archive):
                    zf.extract(zi, dest)
        else:
            raise ValueError(f"unknown archive kind {kind!r} for {archive}")
    except (
        tarfile.ReadError,
        tarfile.CompressionError,
        zipfile.BadZipFile,
        EOFError,
        zlib.error,
    ) as exc:
        raise ArchiveError(
            f"cannot read {archive} as a {kind} archive ({exc.__class__.__name__}: {exc}). "
            "The file is damaged or truncated: delete it and rerun."
        ) from exc


def _check_archive_format(path: Path, kind: str, remove: bool) -> None:
    """Cheap check that ``path`` looks like a ``kind`` archive (not an HTML error page)."""
    if kind == "none":
        return
    ok = zipfile.is_zipfile(path) if kind == "zip" else tarfile.is_tarfile(path)
    if ok:
        return
    with open(path, "rb") as f:
        head = f.read(64)
    if remove:
        path.unlink(missing_ok=True)
    fate = "It has been removed; rerun to download it again." if remove else "Replace it and rerun."
    raise ArchiveError(
        f"{path} is not a {kind} archive (first bytes {head[:32]!r}); the server may have "
        f"returned an error page or a different file. {fate}"
    )


# --------------------------------------------------------------------------- datasets


def manual_message(entry: DatasetEntry, raw_dir: Path, missing: Sequence[FileSpec]) -> str:
    """Instructions for placing a gated / manual dataset by hand."""
    kind = (
        "is gated: it can only be downloaded by hand after accepting its licence"
        if entry.gated
        else "cannot be downloaded automatically (no plain-HTTP download)"
    )
    lines = [
        f"Dataset '{entry.name}' {kind}.",
        f"Licence: {entry.licence_name} - {entry.licence_url}",
        f"Homepage: {entry.homepage}",
    ]
    if entry.manual_steps:
        lines.append(f"Steps: {entry.manual_steps}")
    lines.append("Place exactly these files (missing now):")
    for s in missing:
        facts = []
        if s.size is not None:
            facts.append(f"{s.size} bytes")
        if s.sha256:
            facts.append(f"sha256 {s.sha256}")
        elif s.md5:
            facts.append(f"md5 {s.md5}")
        if s.url:
            facts.append(f"from {s.url}")
        extra = f"  ({'; '.join(facts)})" if facts else ""
        lines.append(f"  {raw_dir / s.filename}{extra}")
    lines.append(
        "Then rerun; the files are verified against the pinned checksums, or their sha256 is "
        "recorded in the lock file on first use and checked on every later run."
    )
    return "\n".join(lines)


def ensure_raw_files(
    entry: DatasetEntry | Mapping[str, Any],
    raw_dir: str | os.PathLike,
    lock_file: str | os.PathLike | None = None,
    *,
    session: requests.Session | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    progress: bool | None = None,
) -> list[tuple[FileSpec, Path]]:
    """Make sure every raw file is present and verified; return ``[(spec, path)]``.

    Plain-HTTP files are downloaded when absent. Manual / gated files must be present (else
    :class:`ManualDownloadRequired` / :class:`GatedDatasetError`); they are verified the same
    way but never deleted. Missing optional manual files are skipped.
    """
    entry = as_entry(entry)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    present: list[tuple[FileSpec, Path]] = []

    if entry.manual:
        missing = [
            s for s in entry.files if not (raw_dir / s.filename).is_file() and not s.optional
        ]
        if missing:
            err = GatedDatasetError if entry.gated else ManualDownloadRequired
            raise err(manual_message(entry, raw_dir, missing))
        for s in entry.files:
            path = raw_dir / s.filename
            if not path.is_file():
                log.info("%s: optional file %s not present; skipped", entry.name, s.filename)
                continue
            _check_archive_format(path, s.archive, remove=False)
            verify_file(path, s, dataset=entry.name, lock_file=lock_file, remove_on_mismatch=False)
            present.append((s, path))
        return present

    for s in entry.files:
        path = raw_dir / s.filename
        if not path.is_file():
            assert s.url is not None  # guaranteed by registry validation
            download_file(
                s.url,
                path,
                expected_size=s.size,
                session=session,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                progress=progress,
            )
        _check_archive_format(path, s.archive, remove=True)
        verify_file(path, s, dataset=entry.name, lock_file=lock_file, remove_on_mismatch=True)
        present.append((s, path))
    return present


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_layout(entry: DatasetEntry, root: Path) -> Path:
    """``root / entry.layout`` after checking it and every ``expect`` path exist."""
    layout = root / entry.layout
    if not layout.is_dir():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise LayoutError(
            f"dataset '{entry.name}': after extraction the folder {entry.layout!r} was not found; "
            f"top-level entries: {found[:20]}. The archive layout may have changed: update "
            "`layout` in the registry."
        )
    missing = [e for e in entry.expect if not (layout / e).exists()]
    if missing:
        raise LayoutError(
            f"dataset '{entry.name}': expected {missing} inside {entry.layout!r} after "
            "extraction, not found. Update `expect`/`layout` in the registry if the upstream "
            "layout changed."
        )
    return layout


def fetch_dataset(
    entry: DatasetEntry | Mapping[str, Any],
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    lock_file: str | os.PathLike | None = None,
    *,
    session: requests.Session | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    progress: bool | None = None,
) -> Path:
    """Download (or find), verify and unpack one dataset; return ``out_dir / layout``.

    Raw files go to ``raw_dir``; archives are unpacked and plain files hard-linked (or copied)
    into a temporary sibling of ``out_dir`` that replaces ``out_dir`` only when everything
    succeeded: after any failure nothing exists at ``out_dir`` (a previous ``out_dir`` is
    left untouched).
    """
    entry = as_entry(entry)
    out_dir = Path(out_dir)
    files = ensure_raw_files(
        entry,
        raw_dir,
        lock_file,
        session=session,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        progress=progress,
    )
    with atomic_path(out_dir, is_dir=True) as tmp:
        for spec, path in files:
            if spec.archive == "none":
                _link_or_copy(path, tmp / spec.filename)
            else:
                safe_extract(path, tmp, spec.archive)
        check_layout(entry, tmp)
    result = out_dir / entry.layout if entry.layout != "." else out_dir
    log.info("dataset '%s' ready at %s", entry.name, result)
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipbias.data.download",
        description="Download, verify and unpack a dataset from the registry "
        "(raw files in <resources>/<name>/raw, unpacked in <resources>/<name>/extracted).",
    )
    parser.add_argument("dataset", help="dataset name in the registry")
    parser.add_argument("--registry", default="config/datasets.yaml")
    parser.add_argument("--schema", default=None, help="registry schema (default: repo copy)")
    parser.add_argument("--resources", default="resources/datasets")
    parser.add_argument(
        "--lock", default=None, help="lock file (default: datasets.lock.json next to the registry)"
    )
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument(
        "--index", action="store_true", help="also build index.parquet + dataset.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    registry = load_registry(args.registry, args.schema)
    entry = get_entry(registry, args.dataset)
    lock = Path(args.lock) if args.lock else Path(args.registry).with_name("datasets.lock.json")
    base = Path(args.resources) / entry.name
    try:
        root = fetch_dataset(entry, base / "raw", base / "extracted", lock, retries=args.retries)
        if args.index:
            from clipbias.data.adapters import build_index

            build_index(entry, root, base)
    except DatasetError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
