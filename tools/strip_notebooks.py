#!/usr/bin/env python
"""Strip outputs and run-time metadata from Jupyter notebooks before they are committed.

Keeps cell sources, cell ids and cell tags (``parameters`` must survive), plus the
notebook's ``kernelspec`` and ``language_info.name``. Removes outputs, execution counts,
other cell metadata, papermill's metadata and cells papermill injected
(``injected-parameters``).

    python tools/strip_notebooks.py                 # strip notebooks/*.ipynb in place
    python tools/strip_notebooks.py --check a.ipynb # exit 1 if any file would change

Usable as a pre-commit hook (``entry: python tools/strip_notebooks.py``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
KEEP_CELL_METADATA = ("tags",)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A stripped copy of ``nb``."""
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if "injected-parameters" in tags:
            continue
        cell.metadata = nbformat.NotebookNode(
            {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA and v}
        )
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    nb.cells = cells
    meta = {}
    if "kernelspec" in nb.metadata:
        meta["kernelspec"] = nb.metadata["kernelspec"]
    lang = nb.metadata.get("language_info", {}).get("name")
    if lang:
        meta["language_info"] = {"name": lang}
    nb.metadata = nbformat.NotebookNode(meta)
    return nb


def process(path: Path, check: bool) -> bool:
    """Strip ``path`` (or only compare, with ``check``); True if it was/would be changed."""
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    new = nbformat.writes(strip(nb)) + "\n"
    if new == text:
        return False
    if not check:
        path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--check", action="store_true", help="only report; exit 1 on changes")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    changed = [p for p in paths if process(p, args.check)]
    for p in changed:
        sys.stderr.write(f"{'would strip' if args.check else 'stripped'} {p}\n")
    return 1 if (changed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
