"""Regenerate the key reference of config/README.md from the config schema.

Usage: python scripts/config_docs.py > /tmp/keys.md  (then paste below the introduction)
"""

import json
import sys
from pathlib import Path

import yaml

schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())


def walk(node, path=""):
    for key, sub in node.get("properties", {}).items():
        p = f"{path}.{key}" if path else key
        if sub.get("type") == "object" and "properties" in sub:
            sys.stdout.write(f"\n### `{p}`\n\n{sub['description']}\n\n| key | default | meaning |\n|---|---|---|\n")
            walk(sub, p)
        else:
            default = json.dumps(sub.get("default"))
            sys.stdout.write(f"| `{p}` | `{default}` | {sub['description'].strip()} |\n")


walk(schema)
