"""Checks the workflow runs on the configuration before any job (``workflow/rules/common.smk``).

Pure Python (PyYAML; jsonschema only when validating): the workflow imports this module at
every start-up. Every check raises :class:`ConfigError` with a message of a few lines that
names the key or file, the offending value and what to do, so the cause of a stop is on the
screen instead of a 2,000-line schema dump or a job that fails minutes later:

* :func:`load_yaml`: a YAML file the workflow reads itself (the workflow's config, text files),
  a syntax error named by file, line and column;
* :func:`check_schema`: the config against ``workflow/schemas/config.schema.yaml``, each error
  reduced to the key, the value and the allowed keys or values (with a close match);
* :func:`check_registry_names`: every ``kind: registry`` dataset is a registry entry;
* :func:`check_paths`: text files and local checkpoints exist;
* :func:`check_texts`: a dataset's text file against the classes and attribute values the
  dataset has (a planted dataset's generator settings, a folder dataset's config);
* :func:`check_overlay_order`: an overlay (``config/overlays/*.yaml``) given before a file
  that overrides its keys.

Snakemake itself reads the ``--configfile`` files before any workflow code runs; a YAML error
there gets Snakemake's own three lines without the file name (docs/OWN_DATA.md,
"Troubleshooting").
"""

from __future__ import annotations

import difflib
import os
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Values of the planted generator's attributes besides the colour (clipbias.synth
#: BACKGROUNDS and PLACES; not imported: synth loads numpy, PIL and pandas).
PLANTED_BACKGROUNDS = ("land", "water")
PLANTED_PLACES = ("grass", "forest", "ocean", "lake")
#: The generator's defaults (config.schema.yaml datasets[].synth.classes / colours).
PLANTED_DEFAULT_CLASSES = ("circle", "triangle")
PLANTED_DEFAULT_COLOURS = ("red", "yellow")

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = 6
_REPR.maxdict = 4


class ConfigError(ValueError):
    """The configuration (or a file it names) stops the run; the message says where and why."""


def short(value: Any) -> str:
    """A repr of ``value`` cut to about one line."""
    return _REPR.repr(value)


def did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


# ------------------------------------------------------------------------------ YAML


def load_yaml(path: str | os.PathLike, what: str = "") -> Any:
    """Parse a YAML file; a syntax error becomes a :class:`ConfigError` naming the file, the
    line and column (1-based) and the parser's complaint. ``what`` says which key named the
    file (e.g. ``"datasets[].texts of 'planted'"``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}){_of(what)}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_message(path, err, what)) from None


def _of(what: str) -> str:
    return f" ({what})" if what else ""


def yaml_error_message(path: str | os.PathLike, err: Exception, what: str = "") -> str:
    """``<file>, line L, column C: <problem> (<context>)`` for a PyYAML error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: not valid YAML: {detail}{_of(what)}; fix the file and rerun"


def check_yaml_file(path: str | os.PathLike, what: str = "") -> None:
    """Raise :class:`ConfigError` (file, line) if ``path`` exists and is not valid YAML."""
    if Path(path).is_file():
        load_yaml(path, what)


# ---------------------------------------------------------------------------- schema


def key_path(parts: Iterable[Any]) -> str:
    """``datasets[0].synth.classes`` from a jsonschema error path."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _form(schema: Mapping[str, Any]) -> str:
    """One schema alternative in words: its type and enum or pattern."""
    if "enum" in schema:
        return f"one of {list(schema['enum'])}"
    kind = schema.get("type", "value")
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        kind = f"a list of {_form(schema['items'])}"
    elif "pattern" in schema:
        kind = f"a {kind} matching {schema['pattern']}"
    return str(kind)


def _describe(err: Any) -> str:
    """One line for one jsonschema ValidationError."""
    where = key_path(err.absolute_path)
    at = f"config {where}" if where else "config"
    value, schema = err.instance, err.schema
    kind = err.validator
    if kind == "additionalProperties" and isinstance(value, Mapping):
        allowed = list((schema.get("properties") or {}).keys())
        extra = [k for k in value if k not in allowed]
        lines = [
            f"{at}: unknown key {k!r}{did_you_mean(k, allowed)} (keys allowed here: "
            f"{', '.join(allowed)})"
            for k in extra
        ]
        return "\n".join(lines)
    if kind == "required":
        missing = [k for k in err.validator_value if k not in (value or {})]
        return f"{at}: missing key(s) {missing}"
    if kind == "enum":
        return (
            f"{at}: {short(value)} is not allowed{did_you_mean(value, err.validator_value)} "
            f"(allowed: {', '.join(map(str, err.validator_value))})"
        )
    if kind == "type":
        return f"{at}: {short(value)} is a {type(value).__name__}, expected {_form(schema)}"
    if kind in ("oneOf", "anyOf"):
        forms = "; or ".join(_form(s) for s in err.validator_value)
        return f"{at}: {short(value)} is none of the allowed forms: {forms}"
    # minimum, maximum, pattern, minItems, uniqueItems, ...: jsonschema's sentence, with the
    # instance shortened (its message repeats the whole value)
    message = err.message.replace(repr(value), short(value))
    return f"{at}: {message}"


def schema_errors(
    config: Mapping[str, Any], schema: Mapping[str, Any], limit: int = 4
) -> list[str]:
    """Short messages for the schema errors of ``config`` (outermost first, at most
    ``limit`` plus a count of the rest); ``[]`` when it is valid."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(
        validator.iter_errors(config),
        key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]),
    )
    lines = list(dict.fromkeys(line for e in errors for line in _describe(e).splitlines()))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def check_schema(config: Mapping[str, Any], schema_path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` with :func:`schema_errors` (a few lines, never the schema)."""
    lines = schema_errors(config, load_yaml(schema_path, "the config schema"))
    if lines:
        raise ConfigError(
            "\n".join(lines) + "\nEvery key is described in config/README.md (generated from "
            "workflow/schemas/config.schema.yaml)."
        )


# --------------------------------------------------------------------- datasets, paths


def check_registry_names(
    datasets: Iterable[Mapping[str, Any]], known: Sequence[str], registry_path: str
) -> None:
    """Every ``kind: registry`` dataset names an entry of the registry (a misspelt name would
    otherwise surface only in its download job, after the weights fetch)."""
    for d in datasets:
        name = d.get("name")
        if d.get("kind", "registry") == "registry" and name not in known:
            raise ConfigError(
                f"config datasets: {name!r} is not in the dataset registry "
                f"{registry_path}{did_you_mean(name, known)}\n"
                f"Registry datasets: {', '.join(known)}.\n"
                "For your own images use kind: folder (docs/OWN_DATA.md); for a generated "
                "benchmark kind: planted."
            )


def is_checkpoint_path(pretrained: str) -> bool:
    """A ``pretrained`` value that names a file (a folder in it or a suffix), not a tag."""
    p = Path(str(pretrained))
    return len(p.parts) > 1 or p.suffix != ""


def check_paths(
    datasets: Iterable[Mapping[str, Any]],
    models: Iterable[Mapping[str, Any]],
    *,
    checkpoints: bool = True,
    made_here: str = "",
) -> None:
    """Text files of every dataset and (``checkpoints``) local checkpoints of every model
    exist. A checkpoint under ``made_here`` (this experiment's results folder, whose rules
    may write it) is left to Snakemake."""
    for d in datasets:
        texts = d.get("texts")
        if texts and not Path(texts).is_file():
            raise ConfigError(
                f"config datasets: the text file {texts!r} of {d.get('name')!r} does not exist "
                f"(datasets[].texts{did_you_mean(texts, _siblings(texts))}); shipped ones are "
                "in config/texts/, their keys described in config/texts/planted.yaml"
            )
    if not checkpoints:
        return
    for m in models:
        pre = str(m.get("pretrained", ""))
        if pre == "train" or not is_checkpoint_path(pre):
            continue
        if made_here and Path(pre).is_relative_to(made_here):
            continue
        if not Path(pre).is_file():
            other = (
                " (another experiment's output: run that experiment first)"
                if Path(pre).parts[0] == "results"
                else ""
            )
            raise ConfigError(
                f"config models: the checkpoint {pre!r} of {m.get('id') or m.get('name')!r} "
                f"does not exist{other}. pretrained: a path with a folder or a suffix is a local "
                "checkpoint (an open_clip .safetensors or weights-only state dict), anything "
                "else an open_clip pretrained tag (docs/OWN_DATA.md)"
            )


def known_model_names(own_configs: str | os.PathLike) -> list[str] | None:
    """open_clip model names: the configs shipped with open_clip and with clipbias
    (``own_configs``, registered by :func:`clipbias.open_clip_configs.register_model_configs`),
    from their JSON file names, without importing open_clip (torch); None when open_clip is
    not installed where the workflow runs (its conda envs have it)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folders = [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    folders.append(Path(own_configs))
    return sorted({f.stem for d in folders if d.is_dir() for f in d.glob("*.json")})


def check_model_names(models: Iterable[Mapping[str, Any]], known: Sequence[str] | None) -> None:
    """Every model name is an open_clip config (or an ``hf-hub:`` / ``local-dir:`` model);
    skipped when ``known`` is None (open_clip not installed here)."""
    if known is None:
        return
    for m in models:
        name = str(m.get("name", ""))
        if name.startswith(("hf-hub:", "local-dir:")) or name in known:
            continue
        raise ConfigError(
            f"config models: {name!r} is not an open_clip model config"
            f"{did_you_mean(name, known)}\nFor your own architecture add "
            "src/clipbias/model_configs/<name>.json (docs/OWN_DATA.md)."
        )


def _siblings(path: str) -> list[str]:
    folder = Path(path).parent
    return [str(p) for p in folder.glob("*.yaml")] if folder.is_dir() else []


# ----------------------------------------------------------------------------- texts


def planted_attributes(synth: Mapping[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """(classes, attributes) of a planted dataset with generator settings ``synth``, as its
    dataset.json will list them (clipbias.synth.generate)."""
    classes = list(synth.get("classes") or PLANTED_DEFAULT_CLASSES)
    colours = list(synth.get("colours") or PLANTED_DEFAULT_COLOURS)
    attrs = {
        "background": list(PLANTED_BACKGROUNDS),
        "colour": colours,
        "place": list(PLANTED_PLACES),
    }
    return classes, attrs


def texts_errors(
    spec: Mapping[str, Any],
    classes: Sequence[str],
    attributes: Mapping[str, Sequence[str]],
    *,
    colours: Sequence[str] | None = None,
) -> list[str]:
    """What in a text file does not fit a dataset with ``classes`` and ``attributes``
    ({name: values}); ``colours``: a planted generator's colours (the file's ``colours``).

    Checked: the file's declared ``classes`` (and ``colours``), the keys of ``prism.objects``,
    the classes of ``class_insight_pairs``, ``attribute_prompts`` (an attribute, one prompt
    per value, values in the dataset's order) and every ``protected_attributes`` entry
    (a dataset attribute; concept values among its values), which the methods and the
    audit would otherwise reject after the model is trained and the features extracted."""
    errs = []
    classes = [str(c) for c in classes]
    declared = spec.get("classes")
    if declared is not None and [str(c) for c in declared] != classes:
        errs.append(f"written for classes {list(declared)}, the dataset has {classes}")
    if colours is not None and spec.get("colours") is not None:
        if sorted(map(str, spec["colours"])) != sorted(map(str, colours)):
            errs.append(
                f"written for colours {list(spec['colours'])}, the generator draws {list(colours)}"
            )
    objects = (spec.get("prism") or {}).get("objects")
    if objects and list(map(str, objects)) != classes:
        errs.append(f"prism.objects has words for {list(objects)}, not for the classes {classes}")
    for k, entry in enumerate(spec.get("class_insight_pairs") or []):
        unknown = [c for c in (entry or {}).get("classes") or [] if str(c) not in classes]
        if unknown:
            errs.append(f"class_insight_pairs[{k}] names {unknown}, not classes of the dataset")
            break
    ap = spec.get("attribute_prompts") or {}
    if ap.get("attribute"):
        name = str(ap["attribute"])
        if name not in attributes:
            errs.append(
                f"attribute_prompts.attribute is {name!r}, not an attribute of the dataset "
                f"{list(attributes)}"
            )
        elif ap.get("values") and list(map(str, ap["values"])) != list(attributes[name]):
            errs.append(
                f"attribute_prompts.values {list(ap['values'])} are not the values of "
                f"{name!r} in the dataset's order {list(attributes[name])}"
            )
    for name, entry in (spec.get("protected_attributes") or {}).items():
        if str(name) not in attributes:
            errs.append(
                f"protected_attributes.{name} is not an attribute of the dataset {list(attributes)}"
            )
            continue
        values = list(((entry or {}).get("values") or {}).keys())
        unknown = [v for v in values if str(v) not in list(map(str, attributes[name]))]
        if unknown:
            errs.append(
                f"protected_attributes.{name}.values names {unknown}, not values of {name!r} "
                f"in the dataset {list(attributes[name])}"
            )
    return errs


def check_texts(
    spec: Mapping[str, Any],
    path: str,
    dataset: str,
    classes: Sequence[str],
    attributes: Mapping[str, Sequence[str]],
    *,
    colours: Sequence[str] | None = None,
    hint: str = "",
) -> None:
    """Raise :class:`ConfigError` listing :func:`texts_errors` (at most four)."""
    errs = texts_errors(spec, classes, attributes, colours=colours)
    if errs:
        more = [f"... and {len(errs) - 4} more"] if len(errs) > 4 else []
        raise ConfigError(
            f"config datasets: the text file {path} does not fit dataset {dataset!r}:\n  "
            + "\n  ".join(errs[:4] + more)
            + f"\n{hint or 'Write a text file for this dataset and set datasets[].texts.'}"
        )


# ----------------------------------------------------------------------- config files


def _leaves(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, key))
        else:
            out[key] = v
    return out


def check_overlay_order(configfiles: Sequence[str | os.PathLike]) -> None:
    """An overlay (a file in a folder named ``overlays``) is meant to be given last: a later
    ``--configfile`` that sets one of its keys to another value silently wins (Snakemake
    merges the files in order). Raise naming the files and the keys."""
    files = [Path(f) for f in configfiles]
    for i, over in enumerate(files):
        if over.parent.name != "overlays" or not over.is_file():
            continue
        mine = _leaves(load_yaml(over, "--configfile") or {})
        for later in files[i + 1 :]:
            theirs = _leaves(load_yaml(later, "--configfile") or {}) if later.is_file() else {}
            clash = sorted(k for k in mine if k in theirs and theirs[k] != mine[k])
            if clash:
                raise ConfigError(
                    f"--configfile: {later} comes after the overlay {over} and overrides its "
                    f"key(s) {clash} (later files win); give overlays last: "
                    f"--configfile {later} {over}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipbias.config_check FILE...``: the YAML error of each file with its line
    (Snakemake reads ``--configfile`` files before the workflow runs and does not name them)."""
    import logging
    import sys

    # the command's own output: its errors on this call's stderr, whatever logging the
    # caller configured
    log = logging.getLogger("clipbias.config_check.cli")
    log.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    try:
        bad = 0
        for f in list(sys.argv[1:] if argv is None else argv):
            try:
                load_yaml(f, "--configfile")
            except ConfigError as err:
                log.error("%s", err)
                bad += 1
    finally:
        log.removeHandler(handler)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
