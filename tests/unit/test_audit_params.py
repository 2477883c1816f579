"""The fairness audit's defaults are written once (``clipbias.methods.audit.params.DEFAULTS``):
the schema, the stage, every audit function's keyword defaults and the shipped configs agree
with it (issue 25: they were written in four places and had no such check)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import yaml
from conftest import REPO

from clipbias.methods import audit
from clipbias.methods.audit import params
from clipbias.stages import audit as stage

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def schema_defaults(node: dict) -> dict:
    """The defaults of an object schema's properties, nested objects as dicts."""
    return {
        key: schema_defaults(sub) if sub.get("type") == "object" else sub["default"]
        for key, sub in node["properties"].items()
    }


def test_schema_defaults_are_the_params_defaults():
    block = SCHEMA["properties"]["audit"]
    assert schema_defaults(block) == params.DEFAULTS
    assert list(block["properties"]) == list(params.DEFAULTS)  # same keys, same order
    assert block["properties"]["ranking"]["enum"] == list(params.RANKINGS)


def test_stage_resolves_to_the_defaults():
    resolved = params.resolve_params(None)
    assert resolved == {k: v for k, v in params.DEFAULTS.items() if k not in params.TEXT_KEYS}
    resolved["textspan"]["m"] = 1  # a copy: the defaults stay as they are
    assert params.DEFAULTS["textspan"]["m"] == 60
    assert params.resolve_params({"textspan": {"m": 5}, "min_bias_texts": 3})["textspan"] == {
        **params.DEFAULTS["textspan"],
        "m": 5,
    }
    with pytest.raises(ValueError, match="ranking must be one of"):
        params.resolve_params({"ranking": "textspan"})


def _functions():
    """Every function and method of the audit package and the audit stage."""
    modules = [stage] + [
        importlib.import_module(f"{audit.__name__}.{m.name}")
        for m in pkgutil.iter_modules(audit.__path__)
    ]
    for module in modules:
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield module, obj
            elif inspect.isclass(obj):
                yield from ((module, f) for _, f in inspect.getmembers(obj, inspect.isfunction))


def test_keyword_defaults_are_read_from_the_params_module():
    """A keyword argument named like an ``audit:`` key (or, in the TextSpan module, like an
    ``audit.textspan`` key; ``seed``: the grid's default seed) defaults to its value. Not
    ``textspan.rank``: its null means "head dim + 2 of the feature metadata", which the stage
    resolves (``clipbias.stages.locate.textspan_rank``) and a function on arrays cannot know."""
    checked = []
    for module, fn in _functions():
        for name, p in inspect.signature(fn).parameters.items():
            if p.default is inspect.Parameter.empty:
                continue
            if name == "seed":
                expected = params.DEFAULT_SEED
            elif module.__name__.endswith("textspan_bias") and name == "rank":
                continue
            elif module.__name__.endswith("textspan_bias") and name in params.DEFAULTS["textspan"]:
                expected = params.DEFAULTS["textspan"][name]
            elif name in params.DEFAULTS and name != "textspan":
                expected = params.DEFAULTS[name]
            else:
                continue
            assert p.default == expected, f"{module.__name__}.{fn.__qualname__}({name}=...)"
            checked.append(name)
    # the check is not vacuous: most keys are keyword arguments somewhere
    assert len(set(checked)) >= 15, sorted(set(checked))


def shipped_configs():
    return [REPO / "config/config.yaml", *sorted((REPO / "config/experiments").glob("*.yaml"))]


@pytest.mark.parametrize("cfg", shipped_configs(), ids=lambda p: p.name)
def test_shipped_configs_follow_the_defaults(cfg):
    """A shipped config that sets an ``audit:`` key sets it to the default: the defaults live in
    one place, and an experiment that restates one would silently stop following it. (To run
    an experiment with other values, give them in an overlay file on the command line.)"""
    block = (yaml.safe_load(cfg.read_text()) or {}).get("audit") or {}
    for key, value in block.items():
        default = params.DEFAULTS[key]
        if isinstance(default, dict):
            for sub, v in (value or {}).items():
                assert v == default[sub], (
                    f"{cfg.name}: audit.{key}.{sub} = {v!r}, not {default[sub]!r}"
                )
        else:
            assert value == default, f"{cfg.name}: audit.{key} = {value!r}, not {default!r}"
