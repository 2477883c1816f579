"""The project's own documentation resolves inside the repository.

* Every section citation in a tracked file names a heading of docs/METHODS.md or
  docs/DATASETS.md, or a row of the table in METHODS §9. Citations look like "METHODS §4.7",
  "METHODS.md §1", "METHODS §9 #16", "METHODS Appendix C", "Appendix A.3", or a bare "§6.6"
  later on the same line; for the other document "DATASETS.md §11.1".
* No tracked file names a folder of a machine or a folder beside the repository.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS_MD = REPO / "docs" / "METHODS.md"
DATASETS_MD = REPO / "docs" / "DATASETS.md"
DESIGN_MD = REPO / "docs" / "DESIGN.md"

# Folders that `git ls-files` never lists; the fallback walk skips them too.
_UNTRACKED_DIRS = {".git", ".venv", ".snakemake", "results", "resources", "logs", ".pytest_cache"}


def tracked_files() -> list[Path]:
    """The files of the repository as git sees them: tracked, and new files not ignored (so a
    file is checked before its first commit); a walk when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        paths = [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [
            p
            for p in REPO.rglob("*")
            if p.is_file() and not _UNTRACKED_DIRS & set(p.relative_to(REPO).parts)
        ]
    return [p for p in paths if p.is_file()]


def read_text(path: Path) -> str | None:
    """The file as UTF-8 text, or None for binary files."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ----------------------------------------------------------------------- section citations

_HEADING = re.compile(
    r"^#{1,6}[ \t]+(?:Appendix[ \t]+([A-Z])\b|([A-Z]\.\d+)\b|(\d+(?:\.\d+)*)\.?[ \t])", re.M
)
_TABLE_ROW = re.compile(r"^\|\s*(\d+)\s*\|", re.M)
# Who a "§" belongs to: the nearest of these before it on the same line.
_QUALIFIER = re.compile(r"\b(METHODS|DATASETS)(?:\.md)?\b|\b(paper)(?:'s)?\b")
_SECTION = r"\d+(?:\.\d+)*"
_REF = re.compile(
    rf"§\s?(?P<sec>{_SECTION})(?:\s*[-–]\s*(?P<sec_to>{_SECTION}))?"
    r"(?:\s*#(?P<row>\d+)(?:\s*[-–]\s*(?P<row_to>\d+))?)?"
    r"|Appendix\s+(?P<app>[A-Z])(?:\.(?P<app_sub>\d+)(?:\s*[-–]\s*(?:[A-Z]\.)?(?P<app_to>\d+))?)?"
)


def headings(markdown: str) -> set[str]:
    """Section ids of a Markdown document: "4", "4.7", "A", "A.1"."""
    return {next(g for g in m.groups() if g) for m in _HEADING.finditer(markdown)}


def table_rows(markdown: str, section: str) -> set[int]:
    """Row numbers of the tables in top-level section ``section`` ("| 16 | ..." rows)."""
    start = re.search(rf"^##[ \t]+{re.escape(section)}\.[ \t]", markdown, re.M)
    if start is None:
        return set()
    end = re.search(r"^##[ \t]", markdown[start.end() :], re.M)
    body = markdown[start.end() : start.end() + end.start() if end else None]
    return {int(n) for n in _TABLE_ROW.findall(body)}


def citations(text: str, default: str = "METHODS") -> Iterable[tuple[int, str, str]]:
    """(line number, document, citation) for every section citation of ``text``.

    A citation belongs to the nearest "METHODS" / "DATASETS" / "paper" before it on its
    line; "paper" citations (sections of a paper) are skipped; without any, it belongs to
    ``default``. Each yielded citation is one id: "4.7", "9 #16", "Appendix A.3"; ranges
    ("§4.9-4.10", "§9 #20-21", "Appendix A.1-A.3") yield both ends."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        quals = [(m.end(), m.group(1) or m.group(2)) for m in _QUALIFIER.finditer(line)]
        for m in _REF.finditer(line):
            owner = default
            for end, q in quals:
                if end <= m.start():
                    owner = q
            if owner == "paper":
                continue
            if m.group("app"):
                letter = m.group("app")
                if m.group("app_sub") is None:
                    yield lineno, owner, f"Appendix {letter}"
                for sub in (m.group("app_sub"), m.group("app_to")):
                    if sub is not None:
                        yield lineno, owner, f"Appendix {letter}.{sub}"
                continue
            for sec in (m.group("sec"), m.group("sec_to")):
                if sec is None:
                    continue
                rows = [r for r in (m.group("row"), m.group("row_to")) if r is not None]
                if rows and sec == m.group("sec"):
                    for r in rows:
                        yield lineno, owner, f"{sec} #{r}"
                else:
                    yield lineno, owner, sec


def resolves(doc: str, citation: str, markdown: str, sections: set[str]) -> bool:
    if citation.startswith("Appendix "):
        return citation.removeprefix("Appendix ") in sections
    if " #" in citation:
        sec, row = citation.split(" #")
        return sec in sections and int(row) in table_rows(markdown, sec)
    return citation in sections


@pytest.fixture(scope="module")
def docs() -> dict[str, tuple[str, set[str]]]:
    out = {}
    for name, path in (("METHODS", METHODS_MD), ("DATASETS", DATASETS_MD)):
        text = path.read_text(encoding="utf-8")
        out[name] = (text, headings(text))
    return out


def unresolved(
    text: str, docs: dict[str, tuple[str, set[str]]], default: str = "METHODS"
) -> list[str]:
    bad = []
    for lineno, doc, cit in citations(text, default):
        markdown, sections = docs[doc]
        if not resolves(doc, cit, markdown, sections):
            bad.append(f"line {lineno}: {doc} {cit}")
    return bad


def test_documents_number_their_sections(docs):
    methods, sections = docs["METHODS"]
    # the chapters and appendices every citation relies on
    assert {str(i) for i in range(11)} <= sections
    assert {"A", "B", "C", "D", "A.1", "A.2", "A.3", "A.4"} <= sections
    assert table_rows(methods, "9") >= set(range(1, 28))
    assert {str(i) for i in range(1, 12)} <= docs["DATASETS"][1]
    # a section number is given once
    for name, (text, _) in docs.items():
        ids = [next(g for g in m.groups() if g) for m in _HEADING.finditer(text)]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        assert not dup, f"docs/{name}.md numbers these sections twice: {dup}"


def test_the_check_finds_a_broken_citation(docs):
    # the parts are joined here so that this file does not cite a missing section itself
    sign, app = "§", "Appendix"
    text = "\n".join(
        [
            f"see METHODS {sign}4.7 and {sign}4.99, METHODS {app} E",
            f"METHODS.md {sign}9 #16 and {sign}9 #99",
            f"DATASETS.md {sign}11.1 and {sign}11.9",
            f"(METHODS {sign}5.8; RefineCLIP paper {sign}5.3)",
            f"METHODS {sign}4.9-4.19, {app} A.1-A.7",
        ]
    )
    assert unresolved(text, docs) == [
        "line 1: METHODS 4.99",
        f"line 1: METHODS {app} E",
        "line 2: METHODS 9 #99",
        "line 3: DATASETS 11.9",
        "line 5: METHODS 4.19",
        f"line 5: METHODS {app} A.7",
    ]


def test_every_cited_section_exists(docs):
    bad = []
    n = 0
    for path in tracked_files():
        text = read_text(path)
        if text is None or "§" not in text and "Appendix" not in text:
            continue
        rel = path.relative_to(REPO).as_posix()
        default = "DATASETS" if path == DATASETS_MD else "METHODS"
        n += sum(1 for _ in citations(text, default))
        bad += [f"{rel} {b}" for b in unresolved(text, docs, default)]
    assert n > 300, f"only {n} citations found: is the scan reading the tracked files?"
    assert not bad, "citations of sections that docs/METHODS.md or DATASETS.md lack:\n" + "\n".join(
        bad
    )


def test_design_links_the_docs():
    text = DESIGN_MD.read_text(encoding="utf-8")
    assert "(METHODS.md)" in text and "(DATASETS.md)" in text


# ----------------------------------------------------------------------- paths outside the repo

# Each pattern is written so that this file does not match it itself. An absolute path is
# one not preceded by a path character: "results/tmp/x" is fine, the same without "results"
# is not.
OUTSIDE = {
    "a folder of the development machine": re.compile(r"(?<![\w.~-])/(?:wor[k]|roo[t]|hom[e])/"),
    "the notes folder beside the repository": re.compile(r"\.\./share[d]\b|\bshare[d]/seeds\b"),
    "an absolute temporary path": re.compile(r"(?<![\w.~-])/tm[p]/"),
}
# (file, matched text) pairs that are allowed, each with the reason.
ALLOWED = {
    ("tests/unit/test_download.py", "/" + "tmp/"): (
        "a member name inside a test tar archive: the test checks that extraction refuses "
        "an absolute member path, so the name must be absolute"
    ),
}


def outside_paths(text: str) -> list[tuple[str, str]]:
    return [(why, m.group(0)) for why, pat in OUTSIDE.items() for m in pat.finditer(text)]


def test_the_path_check_finds_machine_paths():
    probes = ["/" + "work/x", "../" + "shared/STYLE.md", "shared" + "/seeds", "/" + "tmp/x.log"]
    assert [len(outside_paths(f"see {p} here")) for p in probes] == [1, 1, 1, 1]
    assert outside_paths("results/tmp/x and resources/hf/hub and ~/.cache") == []


def test_no_tracked_file_points_outside_the_repository():
    bad = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        rel = path.relative_to(REPO).as_posix()
        for lineno, line in enumerate(text.splitlines(), start=1):
            for why, hit in outside_paths(line):
                if (rel, hit) not in ALLOWED:
                    bad.append(f"{rel}:{lineno}: {hit!r} ({why})")
    assert not bad, "tracked files name paths outside the repository:\n" + "\n".join(bad)
