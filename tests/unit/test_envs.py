"""Every rule has a conda env; every env pins exact versions that agree with requirements.txt."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import REPO

CONDA_TO_PIP = {"pytorch": "torch", "open-clip-torch": "open_clip_torch"}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


ACTIONS = re.compile(r"^\s+(shell|script|run|notebook|wrapper):", re.M)


def rules_and_envs() -> list[tuple[str, str, Path]]:
    """(rule, file, env path) of every rule that runs something; target-only rules (inputs
    and nothing else, e.g. ``report``) execute no code and need no env."""
    out = []
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.S | re.M):
            name, body = m.group(1), m.group(2)
            if not ACTIONS.search(body):
                continue
            env = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
            out.append((name, smk.name, (smk.parent / env.group(1)).resolve() if env else None))
    return out


def test_every_rule_has_an_existing_conda_env():
    found = rules_and_envs()
    assert len(found) >= 5
    for name, smk, env in found:
        assert env is not None, f"rule {name} in {smk} has no conda: directive"
        assert env.is_file(), f"rule {name}: env file {env} does not exist"


def test_env_pins_are_exact_and_agree_with_pip_pins():
    pins = pip_pins()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        assert spec["channels"][0] == "conda-forge", env
        for dep in spec["dependencies"]:
            assert isinstance(dep, str), f"{env.name}: pip sections are not allowed ({dep})"
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*=\s*([0-9][^\s=]*)", dep)
            assert m, f"{env.name}: {dep!r} is not pinned to an exact version"
            name, version = m.group(1).lower(), m.group(2)
            if name == "python":
                assert version == "3.11"
                continue
            pip_name = CONDA_TO_PIP.get(name, name).lower().replace("_", "-")
            assert pip_name in pins, f"{env.name}: {name} is not pinned in requirements.txt"
            assert pins[pip_name] == version, (
                f"{env.name}: {name}={version} but requirements.txt has {pins[pip_name]}"
            )
