"""Downloads, verification, safe extraction and gated datasets against a local HTTP server.

The server listens on 127.0.0.1 (ephemeral port) only; nothing here touches the network.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import tarfile
from pathlib import Path

import pytest
from loopback_http import make_tar, make_zip, serve
from loopback_http import sha256_bytes as _sha

from clipbias.data.download import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    GatedDatasetError,
    LayoutError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download_file,
    fetch_dataset,
    read_lock,
    safe_extract,
)
from clipbias.data.registry import DatasetEntry, FileSpec

# --------------------------------------------------------------------------- local server


@pytest.fixture
def server():
    with serve() as state:
        yield state


# --------------------------------------------------------------------------- fixtures


def good_archive() -> bytes:
    # ~300 kB of incompressible bytes so that a cut after a few kB is mid-transfer.
    blob = os.urandom(300_000)
    return make_tar({"mydata/a.txt": b"hello", "mydata/sub/blob.bin": blob})


def entry_for(
    url: str | None,
    data: bytes | None,
    *,
    name: str = "toy",
    pin: bool = True,
    archive: str = "tar.gz",
    filename: str = "toy.tar.gz",
    gated: bool = False,
    manual_steps: str | None = None,
    layout: str = "mydata",
    expect: tuple[str, ...] = ("a.txt",),
    size: int | None = None,
) -> DatasetEntry:
    sha = _sha(data) if (pin and data is not None) else None
    return DatasetEntry(
        name=name,
        files=(
            FileSpec(
                filename=filename,
                url=url,
                archive=archive,
                size=size,
                sha256=sha,
                sha256_source="test pin" if sha else "none published",
            ),
        ),
        layout=layout,
        adapter="none",
        homepage="https://example.org/toy",
        licence={"name": "Toy Licence", "url": "https://example.org/toy/licence"},
        gated=gated,
        manual_steps=manual_steps,
        expect=expect,
    )


@pytest.fixture
def dirs(tmp_path):
    base = tmp_path / "resources" / "toy"
    return base / "raw", base / "extracted", tmp_path / "config" / "datasets.lock.json"


FAST = {"retries": 0, "backoff": 0.0, "timeout": 5, "progress": False}


def _nothing_escaped(tmp_path: Path, name: str) -> None:
    assert not [p for p in tmp_path.rglob(name)], f"{name} was written somewhere"


# --------------------------------------------------------------------------- downloads


def test_good_archive_is_downloaded_verified_and_extracted(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", data, size=len(data))

    root = fetch_dataset(entry, raw, out, lock, **FAST)

    assert root == out / "mydata"
    assert (root / "a.txt").read_bytes() == b"hello"
    assert (root / "sub" / "blob.bin").stat().st_size == 300_000
    assert (raw / "toy.tar.gz").read_bytes() == data
    assert not (raw / "toy.tar.gz.part").exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    assert read_lock(lock) == {}  # pinned: nothing recorded
    # a second run re-verifies the raw file and does not download again
    fetch_dataset(entry, raw, out, lock, **FAST)
    assert len(server.requests_for("/toy.tar.gz")) == 1


def test_connection_cut_then_resumed_with_range(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    server.cut_after["/toy.tar.gz"] = 50_000
    entry = entry_for(server.base + "/toy.tar.gz", data)

    root = fetch_dataset(entry, raw, out, lock, **{**FAST, "retries": 1})

    reqs = server.requests_for("/toy.tar.gz")
    assert len(reqs) == 2
    assert "Range" not in reqs[0]
    assert reqs[1]["Range"] == "bytes=50000-"
    assert _sha((raw / "toy.tar.gz").read_bytes()) == _sha(data)
    assert (root / "a.txt").exists()


def test_connection_cut_keeps_part_and_next_run_resumes(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    server.cut_after["/toy.tar.gz"] = 10_000
    entry = entry_for(server.base + "/toy.tar.gz", data)

    with pytest.raises(DownloadError, match=r"cut after 10000 of \d+ bytes.*rerun to resume"):
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert (raw / "toy.tar.gz.part").stat().st_size == 10_000
    assert not (raw / "toy.tar.gz").exists()
    assert not out.exists()

    fetch_dataset(entry, raw, out, lock, **FAST)
    assert server.requests_for("/toy.tar.gz")[-1]["Range"] == "bytes=10000-"
    assert (out / "mydata" / "a.txt").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = os.urandom(20_000)
    server.files["/f.bin"] = data
    server.ignore_range.add("/f.bin")
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage!")  # stale partial

    download_file(server.base + "/f.bin", dest, **FAST)

    assert server.requests_for("/f.bin")[0]["Range"] == "bytes=8-"
    assert dest.read_bytes() == data


def test_416_on_complete_part_finishes(server, tmp_path):
    data = os.urandom(5_000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(server.base + "/f.bin", tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_416_on_oversized_part_restarts(server, tmp_path):
    data = os.urandom(5_000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data + b"extra bytes")
    download_file(server.base + "/f.bin", tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert "Range" not in server.requests_for("/f.bin")[-1]


def test_wrong_checksum_removes_file_and_leaves_no_output(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", b"something else")

    with pytest.raises(ChecksumError) as exc:
        fetch_dataset(entry, raw, out, lock, **FAST)

    msg = str(exc.value)
    assert "toy.tar.gz" in msg
    assert f"expected: {_sha(b'something else')}" in msg
    assert f"actual:   {_sha(data)}" in msg
    assert "removed" in msg and "rerun" in msg and "update the pin" in msg
    assert not (raw / "toy.tar.gz").exists()
    assert not (raw / "toy.tar.gz.part").exists()
    assert not out.exists()


def test_pinned_size_mismatch_is_refused_before_download(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", data, size=len(data) + 1)
    with pytest.raises(DownloadError, match="registry pins"):
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert not (raw / "toy.tar.gz").exists()
    assert not out.exists()


@pytest.mark.parametrize(
    ("status", "hint"), [(404, "not \\(or no longer\\) at this address"), (500, "temporary")]
)
def test_http_errors_are_clear_and_leave_nothing(server, dirs, status, hint):
    raw, out, lock = dirs
    url = server.base + "/toy.tar.gz"
    if status != 404:
        server.files["/toy.tar.gz"] = b"x"
        server.status["/toy.tar.gz"] = status
    entry = entry_for(url, b"x")

    with pytest.raises(DownloadError) as exc:
        fetch_dataset(entry, raw, out, lock, **{**FAST, "retries": 1})

    msg = str(exc.value)
    assert url in msg
    assert f"HTTP {status}" in msg
    assert re.search(hint, msg)
    assert exc.value.status == status
    assert not (raw / "toy.tar.gz").exists()
    assert not (raw / "toy.tar.gz.part").exists()
    assert not out.exists()
    # 404 is not retried, 500 is
    assert len(server.requests_for("/toy.tar.gz")) == (1 if status == 404 else 2)


def test_connection_refused(dirs):
    raw, out, lock = dirs
    with socket.socket() as s:  # find a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/toy.tar.gz"
    with pytest.raises(DownloadError, match=r"could not connect to .*Check the network") as exc:
        fetch_dataset(entry_for(url, b"x"), raw, out, lock, **FAST)
    assert url in str(exc.value)
    assert not out.exists()
    assert not (raw / "toy.tar.gz").exists()


def test_html_error_page_instead_of_archive(server, dirs):
    raw, out, lock = dirs
    server.files["/toy.tar.gz"] = b"<!DOCTYPE html><html>Quota exceeded</html>"
    entry = entry_for(server.base + "/toy.tar.gz", None, pin=False)
    with pytest.raises(ArchiveError, match="not a tar.gz archive"):
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert not (raw / "toy.tar.gz").exists()
    assert read_lock(lock) == {}  # garbage is never recorded
    assert not out.exists()


def test_missing_layout_leaves_nothing(server, dirs):
    raw, out, lock = dirs
    data = make_tar({"other/a.txt": b"x"})
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", data)
    with pytest.raises(LayoutError, match="'mydata' was not found.*other"):
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


# --------------------------------------------------------------------------- unsafe archives


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize(
    ("archive", "kind", "match"),
    [
        (lambda: make_tar({"mydata/a.txt": b"x", "../evil.txt": b"x"}), "tar.gz", "'\\.\\.'"),
        (
            lambda: make_tar({"mydata/a.txt": b"x", "mydata/../../evil.txt": b"x"}),
            "tar.gz",
            "'\\.\\.'",
        ),
        (lambda: make_zip({"mydata/a.txt": b"x", "../evil.txt": b"x"}), "zip", "'\\.\\.'"),
        (lambda: make_tar({"mydata/a.txt": b"x", "/tmp/evil.txt": b"x"}), "tar.gz", "absolute"),
        (
            lambda: make_tar(
                {"mydata/a.txt": b"x"}, extra=[_symlink("mydata/evil.txt", "../../outside")]
            ),
            "tar.gz",
            "points outside",
        ),
        (
            lambda: make_tar(
                {"mydata/a.txt": b"x"}, extra=[_symlink("mydata/evil.txt", "/etc/passwd")]
            ),
            "tar.gz",
            "points outside",
        ),
        (
            lambda: make_tar(
                {"mydata/a.txt": b"x"},
                extra=[_symlink("mydata/dir", "."), _symlink("mydata/evil.txt", "dir/../../x")],
            ),
            "tar.gz",
            "through another symlink",
        ),
        (
            lambda: make_tar(
                {"mydata/a.txt": b"x"}, extra=[_hardlink("mydata/evil.txt", "../secret")]
            ),
            "tar.gz",
            "hard link .* points outside",
        ),
        (
            lambda: make_tar({"mydata/a.txt": b"x"}, extra=[_device("mydata/evil.txt")]),
            "tar.gz",
            "device",
        ),
        (
            lambda: make_zip({"mydata/a.txt": b"x"}, symlinks={"mydata/evil.txt": "../../outside"}),
            "zip",
            "points outside",
        ),
    ],
    ids=[
        "tar-dotdot",
        "tar-nested-dotdot",
        "zip-dotdot",
        "tar-absolute",
        "tar-symlink-outside",
        "tar-symlink-absolute",
        "tar-symlink-chain",
        "tar-hardlink-outside",
        "tar-device",
        "zip-symlink-outside",
    ],
)
def test_unsafe_archives_are_refused(server, dirs, tmp_path, archive, kind, match):
    raw, out, lock = dirs
    data = archive()
    fname = "toy.zip" if kind == "zip" else "toy.tar.gz"
    server.files["/" + fname] = data
    entry = entry_for(server.base + "/" + fname, data, archive=kind, filename=fname)

    with pytest.raises(UnsafeArchiveError, match=match):
        fetch_dataset(entry, raw, out, lock, **FAST)

    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    _nothing_escaped(tmp_path, "evil.txt")
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]


def test_tar_member_through_symlink_is_refused(tmp_path):
    data = make_tar({}, extra=[_symlink("d", "sub")])
    # a regular file written "through" the symlink d
    buf = io.BytesIO(data)
    archive = tmp_path / "a.tar"
    with tarfile.open(fileobj=buf) as src, tarfile.open(archive, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m)
        info = tarfile.TarInfo("d/evil.txt")
        info.size = 1
        dst.addfile(info, io.BytesIO(b"x"))
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError, match="through the symlink"):
        safe_extract(archive, target, "tar")
    assert list(target.iterdir()) == []


def test_inside_symlink_and_plain_tar_are_fine(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(
        make_tar({"top/a.txt": b"hi"}, mode="w", extra=[_symlink("top/link.txt", "a.txt")])
    )
    target = tmp_path / "t"
    target.mkdir()
    safe_extract(archive, target, "tar")
    assert (target / "top" / "link.txt").read_text() == "hi"


def test_corrupt_archive_message(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(make_tar({"top/a.txt": os.urandom(50_000)})[:2000])
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(ArchiveError, match="damaged or truncated: delete it and rerun"):
        safe_extract(archive, target, "tar.gz")


# --------------------------------------------------------------------------- lock file


def test_lock_file_records_first_download_and_catches_changes(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", None, pin=False)

    fetch_dataset(entry, raw, out, lock, **FAST)
    recorded = read_lock(lock)["toy/toy.tar.gz"]
    assert recorded["sha256"] == _sha(data)
    assert recorded["size"] == len(data)
    assert json.loads(lock.read_text())["version"] == 1

    # the next run verifies the raw file against the lock (no download)
    fetch_dataset(entry, raw, out, lock, **FAST)
    assert len(server.requests_for("/toy.tar.gz")) == 1

    # upstream changes; the raw file is gone -> the new download fails verification
    changed = make_tar({"mydata/a.txt": b"changed"})
    server.files["/toy.tar.gz"] = changed
    (raw / "toy.tar.gz").unlink()
    with pytest.raises(ChecksumError) as exc:
        fetch_dataset(entry, raw, out, lock, **FAST)
    msg = str(exc.value)
    assert f"expected: {_sha(data)}" in msg and f"actual:   {_sha(changed)}" in msg
    assert str(lock) in msg and "toy/toy.tar.gz" in msg
    assert not (raw / "toy.tar.gz").exists()
    assert read_lock(lock)["toy/toy.tar.gz"]["sha256"] == _sha(data)  # pin unchanged


def test_lock_file_catches_tampered_local_file(server, dirs):
    raw, out, lock = dirs
    data = good_archive()
    server.files["/toy.tar.gz"] = data
    entry = entry_for(server.base + "/toy.tar.gz", None, pin=False)
    fetch_dataset(entry, raw, out, lock, **FAST)
    (raw / "toy.tar.gz").write_bytes(make_tar({"mydata/a.txt": b"tampered"}))
    with pytest.raises(ChecksumError, match="mismatch"):
        fetch_dataset(entry, raw, out, lock, **FAST)


# --------------------------------------------------------------------------- gated / manual


def test_gated_dataset_message_and_manual_placement(dirs):
    raw, out, lock = dirs
    data = make_tar({"mydata/a.txt": b"x"})
    steps = "Accept the licence at https://example.org/toy/licence and download toy.tar.gz."
    entry = entry_for(None, data, pin=False, gated=True, manual_steps=steps)

    with pytest.raises(GatedDatasetError) as exc:
        fetch_dataset(entry, raw, out, lock, **FAST)
    msg = str(exc.value)
    assert "Dataset 'toy' is gated" in msg
    assert "https://example.org/toy/licence" in msg
    assert str(raw / "toy.tar.gz") in msg
    assert steps in msg
    assert not out.exists()

    # placed by hand: verified (recorded in the lock on first use) and extracted
    (raw / "toy.tar.gz").write_bytes(data)
    root = fetch_dataset(entry, raw, out, lock, **FAST)
    assert (root / "a.txt").exists()
    assert read_lock(lock)["toy/toy.tar.gz"]["sha256"] == _sha(data)

    # a different file placed later fails verification but is left in place
    (raw / "toy.tar.gz").write_bytes(make_tar({"mydata/a.txt": b"other"}))
    with pytest.raises(ChecksumError, match="left in place"):
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert (raw / "toy.tar.gz").exists()


def test_manual_non_gated_dataset_with_plain_files(dirs):
    raw, out, lock = dirs
    entry = DatasetEntry(
        name="toy",
        files=(
            FileSpec("labels.csv", None, "none", sha256=_sha(b"a,b\n"), sha256_source="test"),
            FileSpec("extra.txt", None, "none", sha256_source="none", optional=True),
        ),
        layout=".",
        homepage="https://example.org/toy",
        licence={"name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
        manual_steps="Download labels.csv from Google Drive.",
        expect=("labels.csv",),
    )
    with pytest.raises(ManualDownloadRequired) as exc:
        fetch_dataset(entry, raw, out, lock, **FAST)
    assert not isinstance(exc.value, GatedDatasetError)
    assert "labels.csv" in str(exc.value) and "extra.txt" not in str(exc.value)

    raw.mkdir(parents=True, exist_ok=True)
    (raw / "labels.csv").write_bytes(b"a,b\n")
    root = fetch_dataset(entry, raw, out, lock, **FAST)
    assert root == out
    assert (out / "labels.csv").read_bytes() == b"a,b\n"


# --------------------------------------------------------------------------- end to end / CLI


def _waterbirds_tar() -> bytes:
    import numpy as np
    from PIL import Image

    rows = ["img_id,img_filename,y,split,place,place_filename"]
    members = {}
    for i, (y, split, place) in enumerate([(0, 0, 0), (0, 1, 1), (1, 2, 0), (1, 0, 1)], 1):
        fn = f"00{i}.Bird/img{i}.jpg"
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(buf, format="JPEG")
        members[f"waterbird_complete95_forest2water2/{fn}"] = buf.getvalue()
        rows.append(f"{i},{fn},{y},{split},{place},/o/ocean/{i}.jpg")
    members["waterbird_complete95_forest2water2/metadata.csv"] = ("\n".join(rows) + "\n").encode()
    return make_tar(members)


def test_cli_fetches_and_indexes_from_registry(server, tmp_path, repo):
    from clipbias.data.download import main
    from clipbias.data.index import read_index, validate_index

    data = _waterbirds_tar()
    server.files["/wb.tar.gz"] = data
    reg = tmp_path / "config" / "datasets.yaml"
    reg.parent.mkdir()
    reg.write_text(
        f"""
schema_version: 1
datasets:
  waterbirds:
    description: tiny waterbirds
    homepage: https://example.org
    licence: {{name: test, url: https://example.org/licence}}
    gated: false
    files:
      - url: {server.base}/wb.tar.gz
        filename: waterbird_complete95_forest2water2.tar.gz
        archive: tar.gz
        size: null
        sha256: null
        sha256_source: none published
    layout: waterbird_complete95_forest2water2
    expect: [metadata.csv]
    adapter: waterbirds
"""
    )
    resources = tmp_path / "resources" / "datasets"
    schema = repo / "workflow" / "schemas" / "datasets.schema.yaml"
    argv = ["waterbirds", "--registry", str(reg), "--schema", str(schema)]
    argv += ["--resources", str(resources), "--retries", "0", "--index"]

    assert main(argv) == 0

    base = resources / "waterbirds"
    assert (base / "raw" / "waterbird_complete95_forest2water2.tar.gz").exists()
    lock = json.loads((tmp_path / "config" / "datasets.lock.json").read_text())
    assert lock["files"]["waterbirds/waterbird_complete95_forest2water2.tar.gz"]["sha256"] == _sha(
        data
    )
    df, meta = read_index(base)
    validate_index(df, meta, base)
    assert df["path"].iloc[0] == "extracted/waterbird_complete95_forest2water2/001.Bird/img1.jpg"
    assert df["group"].tolist() == [0, 1, 2, 3]

    # an unknown file on the server -> exit code 1 and a logged error, no exception
    server.status["/wb.tar.gz"] = 404
    (base / "raw" / "waterbird_complete95_forest2water2.tar.gz").unlink()
    assert main(argv) == 1
