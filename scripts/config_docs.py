"""Regenerate the key reference of config/README.md from the config schema.

    python scripts/config_docs.py           # rewrite config/README.md from "## Top-level keys" on
    python scripts/config_docs.py --check   # exit 1 if config/README.md is out of date

The introduction above "## Top-level keys" is kept as written; everything from there on is
generated from the ``description`` and ``default`` of every key in
workflow/schemas/config.schema.yaml (tests/config/test_config.py runs ``--check``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
README = REPO / "config/README.md"
MARKER = "## Top-level keys"
HEADER = "| key | default | meaning |\n|---|---|---|\n"


def _row(path: str, sub: dict) -> str:
    text = " ".join(sub["description"].split())
    return f"| `{path}` | `{json.dumps(sub.get('default'))}` | {text} |\n"


def _is_section(sub: dict) -> bool:
    return (sub.get("type") == "object" and "properties" in sub) or (
        sub.get("type") == "array" and "properties" in sub.get("items", {})
    )


def _is_list_of_objects(sub: dict) -> bool:
    return sub.get("type") == "array" and sub.get("items", {}).get("type") == "object"


def _section(node: dict, path: str) -> str:
    """Rows of every leaf under ``node``; nested objects get their own heading. The entries of
    a list of objects (``node`` of type array) are documented as ``path[].key``."""
    rows, nested = [], []
    props = node.get("items", node).get("properties", {})
    sep = "[]." if _is_list_of_objects(node) else "."
    for key, sub in props.items():
        p = f"{path}{sep}{key}"
        (nested if _is_section(sub) else rows).append((p, sub))
    out = HEADER + "".join(_row(p, sub) for p, sub in rows)
    for p, sub in nested:
        out += f"\n### `{p}`\n\n{' '.join(sub['description'].split())}\n\n" + _section(sub, p)
    return out


def reference(schema: dict) -> str:
    props = schema["properties"]
    top = [(k, v) for k, v in props.items() if not _is_section(v)]
    out = f"{MARKER}\n\n" + HEADER + "".join(_row(k, v) for k, v in top)
    for key, sub in props.items():
        if _is_section(sub):
            desc = " ".join(sub["description"].split())
            out += f"\n## `{key}`\n\n{desc}\n\n" + _section(sub, key)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only check, do not write")
    args = ap.parse_args(argv)
    current = README.read_text()
    if MARKER not in current:
        sys.stderr.write(f"{README}: marker line {MARKER!r} not found\n")
        return 1
    intro = current[: current.index(MARKER)]
    new = intro + reference(yaml.safe_load(SCHEMA.read_text()))
    if new == current:
        return 0
    if args.check:
        sys.stderr.write(
            f"{README} is out of date with {SCHEMA}; run: python scripts/config_docs.py\n"
        )
        return 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
