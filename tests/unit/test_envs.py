"""Per-rule conda envs: every rule has one, pins agree with requirements.txt, and the code a
rule runs imports only what its env provides.

The import check derives the importable modules of each env from ``envs/*.yaml`` (conda
package -> top-level modules, :data:`CONDA_MODULES`), then runs, in a subprocess where every
module that some env provides but this rule's env does not is blocked, the imports of the
rule's script, of the stage function it calls (and the module-level functions that calls),
of the method modules its predict rule may load, and of its report notebook.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

CONDA_TO_PIP = {"pytorch": "torch", "open-clip-torch": "open_clip_torch"}
# conda package -> top-level Python modules it provides
CONDA_MODULES = {
    "python": [],
    "pytorch": ["torch"],
    "torchvision": ["torchvision"],
    "open-clip-torch": ["open_clip"],
    "numpy": ["numpy"],
    "pandas": ["pandas"],
    "pyarrow": ["pyarrow"],
    "scipy": ["scipy"],
    "scikit-learn": ["sklearn"],
    "threadpoolctl": ["threadpoolctl"],
    "safetensors": ["safetensors"],
    "pillow": ["PIL"],
    "tqdm": ["tqdm"],
    "pyyaml": ["yaml"],
    "requests": ["requests"],
    "jsonschema": ["jsonschema"],
    "huggingface_hub": ["huggingface_hub"],
    "papermill": ["papermill"],
    "ipykernel": ["ipykernel"],
    "nbconvert": ["nbconvert"],
    "nbformat": ["nbformat"],
    "seaborn": ["seaborn"],
    "matplotlib": ["matplotlib"],
}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


ACTIONS = re.compile(r"^\s+(shell|script|run|notebook|wrapper):", re.M)


def rule_blocks() -> list[tuple[str, str, str]]:
    """(rule, file, body) of every rule in workflow/rules/*.smk."""
    out = []
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |^\S|\Z)", smk.read_text(), re.S | re.M):
            out.append((m.group(1), smk.name, m.group(2)))
    return out


def _directive(body: str, name: str) -> str | None:
    m = re.search(rf"^\s+{name}:\s*\n\s*\"([^\"]+)\"", body, re.M)
    return m.group(1) if m else None


def rules_and_envs() -> list[tuple[str, str, Path | None, Path | None, Path | None]]:
    """(rule, file, env, script, notebook) of every rule that runs something; target-only
    rules (inputs and nothing else, e.g. ``report``) execute no code and need no env."""
    out = []
    for name, smk, body in rule_blocks():
        if not ACTIONS.search(body):
            continue
        env, script = _directive(body, "conda"), _directive(body, "script")
        nb = re.search(r'notebook="([^"]+\.ipynb)"', body)
        rules = REPO / "workflow/rules"
        out.append(
            (
                name,
                smk,
                (rules / env).resolve() if env else None,
                (rules / script).resolve() if script else None,
                REPO / nb.group(1) if nb else None,
            )
        )
    return out


def env_modules(env: Path) -> set[str]:
    spec = yaml.safe_load(env.read_text())
    mods = set()
    for dep in spec["dependencies"]:
        name = re.split(r"\s*=", dep)[0].strip().lower()
        assert name in CONDA_MODULES, (
            f"{env.name}: add conda package {name!r} and its modules to CONDA_MODULES"
        )
        mods |= set(CONDA_MODULES[name])
    return mods


def test_every_rule_has_an_existing_conda_env():
    found = rules_and_envs()
    assert len(found) >= 10
    for name, smk, env, _, _ in found:
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


# ----------------------------------------------------------------------------- imports


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(nodes) -> set[str]:
    """Modules imported by ``nodes`` (and their children), skipping TYPE_CHECKING blocks."""
    out: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # maybe submodules
        stack.extend(ast.iter_child_nodes(node))
    return out


def _module_file(module: str) -> Path:
    base = REPO / "src" / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def stage_imports(module: str, function: str) -> set[str]:
    """Imports of ``module`` at module level plus those of ``function`` and every
    module-level function it (transitively) refers to by name."""
    tree = ast.parse(_module_file(module).read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out = _imports([n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)])
    todo, seen = [function], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        out |= _imports([funcs[name]])
        todo += [n.id for n in ast.walk(funcs[name]) if isinstance(n, ast.Name)]
    return out


def code_imports(script: Path | None, notebook: Path | None, env: str) -> set[str]:
    mods: set[str] = set()
    if script is not None:
        tree = ast.parse(script.read_text())
        mods |= _imports(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "clipbias.stages."
            ):
                for a in node.names:
                    mods |= stage_imports(node.module, a.name)
        if "predict" in script.name:
            from clipbias.methods import registry

            mods |= {spec.module for spec in registry.METHODS.values() if spec.env == env}
    if notebook is not None:
        nb = json.loads(notebook.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                src = "\n".join(x for x in src.splitlines() if not x.lstrip().startswith("%"))
                mods |= _imports(ast.parse(src).body)
    # clipbias modules used directly (not stage modules): every import, at any level
    for mod in sorted(mods):
        if mod.startswith("clipbias.") and not mod.startswith("clipbias.stages"):
            if _module_file(mod).is_file():
                mods |= _imports([ast.parse(_module_file(mod).read_text())])
    return {m for m in mods if m.split(".")[0] not in {"_bootstrap", "__future__"}}


CHECKER = r"""
import importlib, importlib.abc, json, sys
blocked, modules, src, scripts = json.loads(sys.argv[1])
sys.path[:0] = [src, scripts]

def _ours():  # does the code running the import statement belong to this project?
    f = sys._getframe(2)
    while f is not None and (
        "importlib" in f.f_code.co_filename or f.f_code.co_filename.startswith("<frozen")
    ):
        f = f.f_back
    if f is None:
        return False
    name = f.f_globals.get("__name__", "")
    return name == "__main__" or f.f_code.co_filename.startswith((src, scripts))


class Block(importlib.abc.MetaPathFinder):
    # Only our own code is checked: a third-party package's own dependencies come with it
    # when conda installs it (nbformat brings jsonschema, matplotlib brings pillow).
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked and _ours():
            raise ModuleNotFoundError(f"No module named {name!r} (not in this rule's env)")
        return None

sys.meta_path.insert(0, Block())
failed = []
for mod in modules:
    if mod.split(".")[0] in blocked:  # imported by our code (statically found)
        failed.append(f"{mod}: No module named {mod.split('.')[0]!r} (not in this rule's env)")
        continue
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as err:
        parent, _, leaf = mod.rpartition(".")
        if parent and (err.name == mod or f"'{mod}'" in str(err)):
            continue  # "from pkg import name": name is an attribute, not a module
        failed.append(f"{mod}: {err}")
print(json.dumps(failed))
"""


def _env_cases():
    """One case per env: the rules that run in it and the modules their code imports."""
    envs = sorted((REPO / "envs").glob("*.yaml"))
    universe = set().union(*(env_modules(e) for e in envs))
    by_env: dict[Path, dict[str, list[str]]] = {}
    for name, _, env, script, nb in rules_and_envs():
        if env is None or (script is None and nb is None):
            continue
        mods = code_imports(script, nb, env.stem)
        assert mods, f"rule {name}: no imports found"
        for mod in mods:
            by_env.setdefault(env, {}).setdefault(mod, []).append(name)
    return [
        pytest.param(env, by_env[env], universe - env_modules(env), id=env.stem)
        for env in sorted(by_env)
    ]


@pytest.mark.parametrize("env,modules,blocked", _env_cases())
def test_rule_code_imports_only_what_its_env_provides(env, modules, blocked):
    """Every module the code of a rule in ``env`` imports, imported in one subprocess where
    everything some other env provides (and ``env`` does not) is blocked."""
    payload = json.dumps(
        [sorted(blocked), sorted(modules), str(REPO / "src"), str(REPO / "workflow/scripts")]
    )
    res = subprocess.run(
        [sys.executable, "-c", CHECKER, payload], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    details = [f"{f} (rules {sorted(set(modules[f.split(':')[0]]))})" for f in failed]
    assert not failed, f"{env.name} lacks {sorted(blocked)}, but rule code needs: {details}"


def test_the_import_check_catches_a_module_level_torch_import(tmp_path):
    """The check itself: a stage module importing torch at module level fails for the
    analysis env (as clipbias/stages.py did before stages became a package)."""
    mod = tmp_path / "bad_stage.py"
    mod.write_text("import torch\n\ndef run():\n    return 1\n")
    payload = json.dumps([["torch"], ["bad_stage"], str(tmp_path), str(tmp_path)])
    res = subprocess.run([sys.executable, "-c", CHECKER, payload], capture_output=True, text=True)
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert failed and "not in this rule's env" in failed[0]
