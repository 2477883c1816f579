# Helpers shared by all stages: config validation, the experiment grid, paths, resources.
import functools
import re
import sys
from collections import Counter
from pathlib import Path

from snakemake.io import report as report_file
from snakemake.utils import validate

# The package's pure-Python parts (version, method registry) are read by the workflow itself.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from clipbias import __version__ as CODE_VERSION  # noqa: E402
from clipbias import config_check  # noqa: E402
from clipbias import rehearsal  # noqa: E402
from clipbias.data.folder import FolderDatasetError  # noqa: E402
from clipbias.methods import registry  # noqa: E402
from clipbias.methods.audit.params import TEXT_KEYS as _AUDIT_TEXT_KEYS  # noqa: E402

# Methods first: an unknown name gets a message listing the registry, not a schema dump.
if isinstance(config.get("methods"), list):
    try:
        registry.configured(config["methods"])
    except registry.MethodConfigError as err:
        raise ValueError(f"config methods: {err}") from None
# Generator settings on a downloaded dataset are a mistake (checked before defaults fill them).
_SYNTH_ON_REAL = [
    d.get("name")
    for d in config.get("datasets", [])
    if isinstance(d, dict) and d.get("synth") and d.get("kind", "registry") != "planted"
]
if _SYNTH_ON_REAL:
    raise ValueError(
        f"config datasets: {_SYNTH_ON_REAL} have synth settings but are not kind planted"
    )
_FOLDER_ON_OTHER = [
    d.get("name")
    for d in config.get("datasets", [])
    if isinstance(d, dict) and d.get("folder") and d.get("kind", "registry") != "folder"
]
if _FOLDER_ON_OTHER:
    raise ValueError(
        f"config datasets: {_FOLDER_ON_OTHER} have folder settings; set kind: folder on them"
    )
# Config-time checks (clipbias.config_check) stop with a few lines naming the key or file;
# a ConfigError is re-raised here without its traceback, which Snakemake would print too.
try:
    # an overlay given before a file that overrides its keys (later --configfile files win)
    config_check.check_overlay_order(workflow.config_settings.configfiles)
    # schema errors as key, value and allowed values; then Snakemake's validation fills the
    # defaults
    config_check.check_schema(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except config_check.ConfigError as err:
    raise err.with_traceback(None) from None
validate(config, schema="../schemas/config.schema.yaml")

# A dress rehearsal (config/overlays/rehearsal.yaml, clipbias.rehearsal): random weights of
# the real architectures and fixture datasets, in its own experiment folder.
REHEARSAL = config["rehearsal"]
IS_REHEARSAL = bool(REHEARSAL["enabled"])
if config["experiment"].endswith(rehearsal.SUFFIX):
    raise ValueError(
        f"config experiment: names ending in {rehearsal.SUFFIX!r} are reserved for "
        f"rehearsals; name the experiment {config['experiment'][: -len(rehearsal.SUFFIX)]!r} "
        "and add config/overlays/rehearsal.yaml to rehearse it"
    )
EXPERIMENT = config["experiment"] + (rehearsal.SUFFIX if IS_REHEARSAL else "")
SEEDS = [int(s) for s in config["seeds"]]
if IS_REHEARSAL and REHEARSAL["seeds"] == "first":
    SEEDS = SEEDS[:1]
RESULTS = f"results/{EXPERIMENT}"
# Prepared registry datasets: the downloads, or a rehearsal's fixtures (never the same folder).
DATASETS_DIR = REHEARSAL["datasets_dir"] if IS_REHEARSAL else "resources/datasets"


def _model_id(entry):
    return entry.get("id") or entry["name"]


def _unique(entries, key, what):
    names = [key(e) for e in entries]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"config {what}: {dups} listed more than once; give each a unique name")
    return {key(e): e for e in entries}


MODELS = _unique(config["models"], _model_id, "models (id or name)")
# Rehearsal: a tag's or checkpoint's weights become random weights of the same architecture
# (rule make_rehearsal_weights); models trained by the pipeline are kept.
REHEARSAL_WEIGHTS = {}
if IS_REHEARSAL:
    if REHEARSAL["models"] == "smallest":
        _keep = _model_id(rehearsal.smallest(MODELS.values()))
        MODELS = {_keep: MODELS[_keep]}
    for _m in MODELS.values():
        if _m["pretrained"] != "train":
            _stem = rehearsal.weights_stem(_m["name"], _m["pretrained"])
            REHEARSAL_WEIGHTS[_stem] = {"name": _m["name"], "pretrained": _m["pretrained"]}
            _m["pretrained"] = f"{REHEARSAL['weights_dir']}/{_stem}.safetensors"
DATASETS = _unique(config["datasets"], lambda d: d["name"], "datasets")
METHODS = registry.configured(config["methods"])


def _registry_entries(path):
    """The dataset registry (clipbias.data.registry, which also validates it: a broken
    registry stops the run here, before any job)."""
    from clipbias.data.registry import RegistryError, load_registry

    try:
        return load_registry(path)
    except (OSError, RegistryError) as err:
        raise ValueError(f"config dataset_registry: {err}") from None


_REGISTRY = _registry_entries(config["dataset_registry"])
# A misspelt name stops here, not in its download job after the weights were fetched.
try:
    config_check.check_registry_names(
        config["datasets"], list(_REGISTRY), config["dataset_registry"]
    )
except config_check.ConfigError as err:
    raise err.with_traceback(None) from None
# {derived dataset: its components}
DERIVED = {n: e.components for n, e in _REGISTRY.items() if e.derived}
# matches no name when the registry derives nothing
DERIVED_PATTERN = "|".join(DERIVED) or "(?!x)x"


def derived_components(wildcards):
    """Index and metadata of every component of a derived dataset."""
    files = {}
    for c in DERIVED[wildcards.dataset]:
        files[f"{c}_index"] = f"{DATASETS_DIR}/{c}/index.parquet"
        files[f"{c}_meta"] = f"{DATASETS_DIR}/{c}/dataset.json"
    return files


def is_planted(dataset):
    return DATASETS[dataset]["kind"] == "planted"


def is_folder(dataset):
    """Your own images (kind folder): a local folder and an index table (docs/OWN_DATA.md)."""
    return DATASETS[dataset]["kind"] == "folder"


def is_trained(model):
    return MODELS[model]["pretrained"] == "train"


def is_local_checkpoint(model):
    p = Path(MODELS[model]["pretrained"])
    return len(p.parts) > 1 or p.suffix != ""


def is_tag(model):
    """Weights named by an open_clip pretrained tag (fetched into the Hugging Face cache)."""
    return not is_trained(model) and not is_local_checkpoint(model)


HF_HOME = config["weights"]["hf_home"]


def weights_record(model):
    return f"{HF_HOME}/fetched/{model}.json"


def hf_home_of_record(wildcards, output):
    """HF_HOME of a fetch record path (``<hf_home>/fetched/<model>.json``)."""
    return str(Path(output[0]).parents[1])


def _check_grid():
    bad = [(m, d) for m in MODELS for d in DATASETS if is_trained(m) and not is_planted(d)]
    if bad:
        raise ValueError(
            f"config: models with pretrained 'train' are trained on planted datasets only; "
            f"these grid cells pair one with a downloaded dataset: {bad}. Use an open_clip "
            f"tag or checkpoint for real datasets, or split the grid into two experiments."
        )


def cell_methods(dataset):
    """Ids of the configured methods that run on ``dataset`` (its ``methods`` filter)."""
    wanted = DATASETS[dataset].get("methods") or list(METHODS)
    return [m for m in METHODS if m in wanted or m == registry.REFERENCE_METHOD]


def _check_dataset_methods():
    for name, d in DATASETS.items():
        unknown = sorted(set(d.get("methods") or []) - set(METHODS))
        if unknown:
            raise ValueError(
                f"config datasets: {name!r} lists methods {unknown} that are not among the "
                f"experiment's methods {list(METHODS)}"
            )
        for m in cell_methods(name):
            missing = [r for r in METHODS[m].spec.requires if r not in cell_methods(name)]
            if missing:
                raise ValueError(f"config datasets: {name!r} runs {m!r} but not {missing}")


def _check_heads_from():
    for name, d in DATASETS.items():
        src = d.get("heads_from")
        if src and src not in DATASETS:
            raise ValueError(
                f"config datasets: {name!r} takes its heads from {src!r}, which is not a dataset "
                f"of this grid; add it to datasets (its heads are located there)"
            )


def _check_edit_shots():
    """Shots of the edit targets only need edit targets on every dataset that runs them."""
    for mid, c in METHODS.items():
        if c.params.get("shot_classes") != "edit_targets":
            continue
        bare = [
            d for d in DATASETS if mid in cell_methods(d) and not DATASETS[d].get("edit_targets")
        ]
        if bare:
            raise ValueError(
                f"config methods: {mid!r} draws its shots from the edit targets "
                f"(shot_classes: edit_targets), but datasets {bare} set no edit_targets; set "
                "datasets[].edit_targets (class names or 'worst:<k>') or leave the method out "
                "of their datasets[].methods"
            )


def _check_method_classes():
    """Methods with a class limit (e.g. FairerCLIP: two classes) refuse, before any job
    runs, a planted or folder dataset with more classes (a registry dataset's class count is
    known only once its index is built; the method then refuses at run time)."""
    for name, d in DATASETS.items():
        classes = (d.get("synth") or {}).get("classes") if is_planted(name) else None
        if is_folder(name):
            classes = FOLDERS[name].classes
        if classes:
            try:
                registry.check_classes(METHODS, name, len(classes), cell_methods(name))
            except registry.MethodConfigError as err:
                raise ValueError(f"config methods: {err}") from None


def dataset_splits(dataset):
    """The splits a dataset's stages evaluate or locate on (they must hold images)."""
    d = DATASETS[dataset]
    return list(dict.fromkeys([d["locate_split"], d["test_split"], *(d["eval_splits"] or [])]))


def _scan_folders():
    """Every folder dataset read and checked (clipbias.data.folder): a missing file, an
    unknown column, a label without a class name, a split without images or a file that is
    not an image stops here. The image files are checked only in the main process (a job
    of a cluster executor parses this file again)."""
    from clipbias.data.folder import scan_folder

    return {
        name: scan_folder(
            name,
            d["folder"],
            splits=dataset_splits(name),
            locate_split=d["locate_split"],
            check_files=workflow.is_main_process,
        )
        for name, d in DATASETS.items()
        if d["kind"] == "folder"
    }


def _check_texts():
    """A planted or folder dataset's text file against its classes and attribute values
    (the generator's settings, the folder's config): a mismatch would stop the method or
    audit jobs after training and extraction."""
    for name, d in DATASETS.items():
        if is_planted(name):
            classes, attrs = config_check.planted_attributes(d["synth"])
            colours, hint = attrs["colour"], (
                "Write a text file for these shapes and colours (config/texts/planted.yaml "
                "shows every key; words from clipbias.synth.vocabulary(classes, colours)) "
                "and set datasets[].texts."
            )
        elif is_folder(name):
            classes, attrs, colours = FOLDERS[name].classes, FOLDERS[name].attributes, None
            hint = "Write a text file for your classes and attributes (docs/OWN_DATA.md)."
        else:
            continue  # a registry dataset's classes are known once its index is built
        config_check.check_texts(
            text_spec(name), texts_file(name), name, classes, attrs, colours=colours, hint=hint
        )


_check_grid()
_check_heads_from()
_check_dataset_methods()
_check_edit_shots()


def fseed(dataset, model, seed):
    """Feature instance of a cell: per seed when data or model depend on it, else shared."""
    return f"seed-{seed}" if is_planted(dataset) or is_trained(model) else "any-seed"


def _seed_of(fs):
    return None if fs == "any-seed" else int(fs[len("seed-") :])


def data_root(dataset, seed):
    """Folder with index.parquet and dataset.json (``seed``: int or None for real data)."""
    if is_planted(dataset):
        return f"{RESULTS}/data/{dataset}/seed-{seed}"
    if is_folder(dataset):
        return f"{RESULTS}/data/{dataset}"
    return f"{DATASETS_DIR}/{dataset}"


def feature_dir(dataset, model, seed):
    return f"{RESULTS}/features/{dataset}/{model}/{fseed(dataset, model, seed)}"


def checkpoint(dataset, model, seed):
    return f"{RESULTS}/models/{dataset}/{model}/seed-{seed}/checkpoint.safetensors"


def planted_synth(wildcards):
    return DATASETS[wildcards.dataset]["synth"]


def n_shards(dataset):
    n = DATASETS[dataset].get("n_shards") or config["features"]["n_shards"]
    return min(n, REHEARSAL["max_shards"]) if IS_REHEARSAL else n


def rehearsal_weights_params(wildcards):
    """Architecture and tag whose random weights a rehearsal checkpoint stands in for."""
    return REHEARSAL_WEIGHTS[wildcards.weights]


# matches no name when nothing is rehearsed
REHEARSAL_WEIGHTS_PATTERN = "|".join(map(re.escape, REHEARSAL_WEIGHTS)) or "(?!x)x"
# Logs of the dataset rules (not per experiment: prepared datasets are shared).
DATA_LOGS = "logs/rehearsal-datasets" if IS_REHEARSAL else "logs"


def rehearsal_weights_mem_mb(wildcards, attempt):
    """Building and saving random weights holds them about twice (model + contiguous copy)."""
    name = REHEARSAL_WEIGHTS[wildcards.weights]["name"]
    return 2 * _costs.text_mem_mb(COSTS, name, False, attempt)


def text_pool_cap():
    """General TextSpan pool cap: a rehearsal's (rehearsal.text_pool_cap), else none."""
    return REHEARSAL["text_pool_cap"] if IS_REHEARSAL else 0


def templates(dataset):
    return DATASETS[dataset].get("templates") or config["classifier"]["templates"]


def texts_file(dataset):
    return DATASETS[dataset]["texts"]


_TEXT_SPECS = {}


def text_spec(dataset):
    """The parsed text file of ``dataset`` ({} when missing: config_check.check_paths stops
    the run first); a YAML error names the file and line."""
    if dataset not in _TEXT_SPECS:
        path = Path(texts_file(dataset))
        spec = (
            config_check.load_yaml(path, f"datasets[].texts of {dataset!r}")
            if path.is_file()
            else {}
        )
        _TEXT_SPECS[dataset] = spec or {}
    return _TEXT_SPECS[dataset]


try:
    # text files and local checkpoints exist (a rehearsal replaces checkpoints by random
    # weights); folder datasets; text files against the classes and attribute values
    config_check.check_paths(
        DATASETS.values(), MODELS.values(), checkpoints=not IS_REHEARSAL, made_here=RESULTS
    )
    config_check.check_model_names(
        MODELS.values(),
        config_check.known_model_names(Path(workflow.basedir) / "src/clipbias/model_configs"),
    )
    FOLDERS = _scan_folders()
    _check_method_classes()
    _check_texts()
except (config_check.ConfigError, FolderDatasetError) as err:
    raise err.with_traceback(None) from None

# Folder datasets: their names, and the inputs and params of prepare_folder_dataset.
FOLDER_PATTERN = "|".join(n for n, d in DATASETS.items() if d["kind"] == "folder") or "(?!x)x"


def folder_index(wildcards):
    from clipbias.data.folder import index_path

    return str(index_path(DATASETS[wildcards.dataset]["folder"]))


def folder_params(wildcards):
    """The folder block and the splits it must hold (editing them rebuilds the dataset)."""
    d = DATASETS[wildcards.dataset]
    return {
        "folder": d["folder"],
        "splits": dataset_splits(wildcards.dataset),
        "locate_split": d["locate_split"],
    }


def cells():
    """Every (dataset, model, seed) of the grid."""
    return [(d, m, s) for d in DATASETS for m in MODELS for s in SEEDS]


# ----------------------------------------------------------------------- input functions
# Feature rules have wildcards dataset, model, fseed; analysis rules dataset, model, seed.


def dataset_files(wildcards):
    """Index and metadata of a feature instance's dataset (+ images of a planted one)."""
    root = data_root(wildcards.dataset, _seed_of(wildcards.fseed))
    files = {"index": f"{root}/index.parquet", "meta": f"{root}/dataset.json"}
    if is_planted(wildcards.dataset):
        files["images"] = f"{root}/images"
    return files


def model_inputs(wildcards):
    """The checkpoint the model loads: trained by the pipeline, a local file, or (for a tag)
    the record of its weights in the Hugging Face cache (rule fetch_weights)."""
    if is_trained(wildcards.model):
        seed = _seed_of(wildcards.fseed)
        return {"checkpoint": checkpoint(wildcards.dataset, wildcards.model, seed)}
    if is_local_checkpoint(wildcards.model):
        return {"checkpoint": MODELS[wildcards.model]["pretrained"]}
    return {"weights": weights_record(wildcards.model)}


def hf_home_arg(wildcards):
    """HF_HOME to load a tag's weights from offline ("" for checkpoints)."""
    return HF_HOME if is_tag(wildcards.model) else ""


def extract_inputs(wildcards):
    return {**dataset_files(wildcards), **model_inputs(wildcards)}


def text_inputs(wildcards):
    return {**model_inputs(wildcards), "texts": texts_file(wildcards.dataset)}


def pretrained_arg(wildcards, input):
    return (
        input.checkpoint if is_trained(wildcards.model) else MODELS[wildcards.model]["pretrained"]
    )


def model_name(wildcards):
    return MODELS[wildcards.model]["name"]


def model_pretrained(wildcards):
    return MODELS[wildcards.model]["pretrained"]


def shard_count(wildcards):
    return n_shards(wildcards.dataset)


def extract_splits(wildcards):
    """Splits to extract (features.splits): "auto" = the splits the dataset's stages read
    (locate, test and eval splits, counterfactual twins, methods' *_split parameters)."""
    spec = config["features"].get("splits", "auto")
    if spec != "auto":
        return list(spec)
    d = DATASETS[wildcards.dataset]
    own = [d["locate_split"], d["test_split"], *(d.get("eval_splits") or [])]
    if is_planted(wildcards.dataset) and d["synth"].get("twin_splits", ["test"]):
        # clipbias.synth.TWIN_SPLIT (not imported: pandas/PIL would slow every start-up)
        own += ["twin_background", "twin_protected"]
    return registry.feature_splits(METHODS, cell_methods(wildcards.dataset), own)


def dataset_templates(wildcards):
    return templates(wildcards.dataset)


def feature_shards(wildcards):
    folder = f"{RESULTS}/features/{wildcards.dataset}/{wildcards.model}/{wildcards.fseed}"
    return [f"{folder}/shard-{i:05d}.parquet" for i in range(n_shards(wildcards.dataset))]


def feature_checksums(wildcards):
    return [f"{s}.sha256" for s in feature_shards(wildcards)]


def cell_features(wildcards):
    """Features, classifier, method texts and dataset metadata of a grid cell."""
    folder = feature_dir(wildcards.dataset, wildcards.model, wildcards.seed)
    return {
        "manifest": f"{folder}/manifest.json",
        "classifier": f"{folder}/classifier.parquet",
        "texts": f"{folder}/texts.parquet",
        "meta": f"{data_root(wildcards.dataset, wildcards.seed)}/dataset.json",
    }


def cell_meta(wildcards):
    return f"{data_root(wildcards.dataset, wildcards.seed)}/dataset.json"


def cell_texts_yaml(wildcards):
    return texts_file(wildcards.dataset)


def locate_split(wildcards):
    return DATASETS[wildcards.dataset]["locate_split"]


def test_split(wildcards):
    return DATASETS[wildcards.dataset]["test_split"]


def eval_splits(wildcards):
    return DATASETS[wildcards.dataset]["eval_splits"]


def protocol(wildcards):
    return DATASETS[wildcards.dataset]["protocol"]


HEADS = f"{RESULTS}/heads/{{dataset}}/{{model}}/seed-{{seed}}"
GROUND_TRUTH = f"{RESULTS}/ground_truth/{{dataset}}/{{model}}/seed-{{seed}}"
PREDICTIONS = f"{RESULTS}/predictions/{{dataset}}/{{model}}/seed-{{seed}}"
METRICS = f"{RESULTS}/metrics/{{dataset}}/{{model}}/seed-{{seed}}"


def heads_source(dataset):
    """The dataset whose located heads this dataset's methods use (``heads_from``)."""
    return DATASETS[dataset].get("heads_from") or dataset


def located_files(wildcards):
    """Located-heads files the method (a configured id) of a predict job reads, by locator."""
    folder = HEADS.format(**{**wildcards, "dataset": heads_source(wildcards.dataset)})
    spec = METHODS[wildcards.method].spec
    return {loc: f"{folder}/{locator_path(loc, wildcards.method)}" for loc in spec.locators}


def locator_path(loc, method):
    """File of ``loc`` in the heads folder that the configured id ``method`` reads (a
    per-method locator's output may be shared by ids with equal parameters)."""
    return registry.LOCATORS[loc].path(registry.locator_owner(METHODS, loc, method))


def score_locators_inputs(wildcards):
    """Planted ground truth and every located-heads file (JSON) the cell's methods produce."""
    heads = HEADS.format(**wildcards)
    files = {"ground_truth": f"{GROUND_TRUTH.format(**wildcards)}/heads.csv"}
    files["meta"] = cell_meta(wildcards)
    # the report always locates LTC heads (both variants)
    for loc in ("ltc", "ltc_full"):
        files[loc] = f"{heads}/{registry.LOCATORS[loc].file}"
    for m in cell_methods(wildcards.dataset):
        for loc in METHODS[m].spec.locators:
            locator = registry.LOCATORS[loc]
            if locator.file.endswith(".json"):
                # one row per file: ids sharing a per-method output are scored once
                owner = registry.locator_owner(METHODS, loc, m)
                key = owner if locator.per_method else loc
                files[key] = f"{heads}/{locator.path(owner)}"
    return files


def has_retrieval(dataset):
    """The dataset's text file defines retrieval prompts (FairFace's concepts): every method's
    predictions then carry retrieval scores, so every method gets MaxSkew."""
    return bool(((text_spec(dataset).get("retrieval") or {}).get("concepts")))


def predict_inputs(wildcards):
    spec = METHODS[wildcards.method].spec
    texts = spec.texts or has_retrieval(wildcards.dataset)
    files = {k: v for k, v in cell_features(wildcards).items() if k != "texts" or texts}
    if spec.class_templates:
        folder = feature_dir(wildcards.dataset, wildcards.model, wildcards.seed)
        files["class_templates"] = f"{folder}/class_templates.parquet"
    return {**files, "texts_yaml": cell_texts_yaml(wildcards), **located_files(wildcards)}


def method_params(wildcards):
    """The configured parameters of a method id (only they rerun its jobs when edited)."""
    return dict(METHODS[wildcards.method].params)


def method_name(wildcards):
    return METHODS[wildcards.method].name


def method_pattern(env):
    """Regex of the configured method ids whose predict rule runs in ``env``."""
    ids = [m for m, c in METHODS.items() if c.spec.env == env]
    return "|".join(ids) if ids else "(?!)"


def per_method_pattern(locator):
    """Regex of the configured method ids whose output of the per-method ``locator`` is made
    (ids sharing it with an earlier id read that id's file)."""
    ids = registry.locator_owners(METHODS, locator)
    return "|".join(ids) if ids else "(?!)"


def cell_predictions(wildcards):
    folder = PREDICTIONS.format(**wildcards)
    return {m: f"{folder}/{m}.parquet" for m in cell_methods(wildcards.dataset)}


def seed_metrics(wildcards):
    folder = f"{RESULTS}/metrics/{wildcards.dataset}/{wildcards.model}"
    return {str(s): f"{folder}/seed-{s}/metrics.csv" for s in SEEDS}


def grid_summaries(wildcards):
    return [f"{RESULTS}/metrics/{d}/{m}/summary_over_seeds.csv" for d in DATASETS for m in MODELS]


def cell_table_metrics(dataset):
    """Metrics summarised over seeds and shown in the grid table for ``dataset``: the seed
    metrics and the metrics its paper table reports (clipbias.protocols.table_metrics)."""
    from clipbias.tables import table_metrics

    own = table_metrics(
        DATASETS[dataset]["protocol"],
        edit_targets=bool(DATASETS[dataset].get("edit_targets")),
        protected=dataset_audits(dataset),
    )
    return own


def seed_metric_names(wildcards):
    from clipbias.tables import SEED_METRICS

    return list(dict.fromkeys([*SEED_METRICS, *cell_table_metrics(wildcards.dataset)]))


def completeness_cells():
    """Every (dataset, model, seed) cell with its metrics file, evaluation split, methods and
    the metrics its paper table reports (rule table_completeness)."""
    out = []
    for d, m, s in cells():
        methods = cell_methods(d)
        out.append(
            {
                "dataset": d,
                "model": m,
                "seed": s,
                "path": f"{METRICS.format(dataset=d, model=m, seed=s)}/metrics.csv",
                "meta": f"{data_root(d, s)}/dataset.json",
                "split": DATASETS[d]["test_split"],
                "methods": [x for x in methods if not METHODS[x].spec.control_of],
                "controls": [x for x in methods if METHODS[x].spec.control_of],
                "metrics": cell_table_metrics(d),
            }
        )
    return out


def completeness_inputs(wildcards):
    return [p for c in completeness_cells() for p in (c["path"], c["meta"])]


def grid_cells():
    return [
        {"dataset": d, "model": m, "metrics": cell_table_metrics(d)}
        for d in DATASETS
        for m in MODELS
    ]


# ---------------------------------------------------------------------------- resources
# Requests from measured costs (clipbias.costs, workflow/resources.yaml written by
# benchmarks/rehearse.py --fit; docs/DESIGN.md "Resources"), with each job's own sizes: the
# rows of its feature shard (dataset index), the MiB of its cell's shards, its model. A
# profile or --set-resources still overrides them. Failed jobs are retried with attempt x.
import yaml as _yaml  # noqa: E402

from clipbias import costs as _costs  # noqa: E402

COSTS = _yaml.safe_load((Path(workflow.basedir) / "workflow" / "resources.yaml").read_text())
ON_GPU = config["device"] != "cpu"
# rows assumed for a job whose inputs do not exist yet (a dry run prints these requests)
_PLANNED_ROWS = 1000


def _arch(wildcards):
    return MODELS[wildcards.model]["name"]


def _row_mib(wildcards):
    """MiB of one in-memory feature row of the job's model and stored layers."""
    cfg = (rehearsal._model_config(_arch(wildcards)) or {}).get("vision_cfg", {})
    n_layers, width = int(cfg.get("layers", 32)), int(cfg.get("width", 1280))
    n_heads = width // int(cfg.get("head_width", 64))
    dim = int((rehearsal._model_config(_arch(wildcards)) or {}).get("embed_dim", 1024))
    spec = config["features"]["layers"]
    stored = n_layers if spec == "all" else (-spec if isinstance(spec, int) else len(spec))
    return _costs.feature_row_mib(n_layers, n_heads, dim, min(stored, n_layers))


@functools.lru_cache(maxsize=None)
def _split_counts(index, mtime_ns):
    """{split: rows} of a dataset index, read once per file version: every shard job of
    the dataset asks for it twice (mem_mb and runtime) when it is scheduled."""
    import pyarrow.parquet as pq

    return Counter(pq.read_table(index, columns=["split"]).column("split").to_pylist())


def _shard_rows(wildcards, input):
    """Rows of the job's feature shard: its share of the extracted splits of the index."""
    index = Path(input.index)
    if not index.is_file():
        return _PLANNED_ROWS
    counts = _split_counts(str(index), index.stat().st_mtime_ns)
    n = sum(counts.get(s, 0) for s in set(extract_splits(wildcards)))
    n_sh = n_shards(wildcards.dataset)
    base, extra = divmod(n, n_sh)
    return base + (1 if int(wildcards.shard) < extra else 0)


def extract_mem_mb(wildcards, input, attempt):
    rows = _shard_rows(wildcards, input)
    batch = config["features"]["batch_size"]
    return _costs.extract_mem_mb(
        COSTS, _arch(wildcards), rows, _row_mib(wildcards), batch, ON_GPU, attempt
    )


def extract_runtime(wildcards, input):
    return _costs.extract_runtime_min(
        COSTS, _arch(wildcards), _shard_rows(wildcards, input), ON_GPU
    )


def text_mem_mb(wildcards, attempt):
    return _costs.text_mem_mb(COSTS, _arch(wildcards), ON_GPU, attempt)


def text_runtime(wildcards, input):
    """Prompts of the dataset's classifier (its classes x templates) or of its method texts
    (the general TextSpan pool, capped in a rehearsal, and the dataset's own texts)."""
    n = 1448 if not IS_REHEARSAL else REHEARSAL["text_pool_cap"] + 500
    meta = Path(getattr(input, "meta", "") or "")
    if meta.is_file():
        import json

        m = json.loads(meta.read_text())
        n_classes = len(m.get("classifier_subset") or m.get("classes") or [])
        if m.get("classifier_classes") == "imagenet_1k" and not m.get("classifier_subset"):
            n_classes = 1000
        n = max(n_classes * len(templates(wildcards.dataset)), 1)
    return _costs.text_runtime_min(COSTS, _arch(wildcards), n, ON_GPU)


def _feature_mib(input):
    manifest = Path(input.manifest) if hasattr(input, "manifest") else None
    if manifest is None or not manifest.is_file():
        return float(_PLANNED_ROWS)
    return sum(p.stat().st_size for p in manifest.parent.glob("shard-*.parquet")) / 2**20


def stream_mem_mb(rule):
    """mem_mb of the streamed CPU stage ``rule`` (a resource callable)."""

    def mem(wildcards, attempt):
        return _costs.stream_mem_mb(COSTS, rule, attempt)

    return mem


def stream_runtime(rule):
    """runtime of the streamed CPU stage ``rule``, from its cell's feature MiB."""

    def runtime(wildcards, input):
        return _costs.stream_runtime_min(COSTS, rule, _feature_mib(input))

    return runtime


def model_mem_mb(wildcards, attempt):
    """A rule that loads the job's model (text encoding, exporting an edited checkpoint)."""
    return text_mem_mb(wildcards, attempt)


# ------------------------------------------------------------------------------- report
# Report notebooks: figure and table stems each notebook writes, and the caption of each.
PLANTED_FIGURES = [
    "sample_grid",
    "training_curve",
    "zero_shot_groups",
    "head_heatmap_ltc",
    "head_heatmap_ltc_full",
    "textspan_heads",
    "located_vs_ground_truth",
    "group_accuracy",
    "random_distribution",
    "method_plane",
]
PLANTED_TABLES = [
    "zero_shot_groups",
    "heads_table",
    "located_precision",
    "textspan_completeness",
    "group_accuracy",
    "main_table",
    "paired_table",
    "random_summary",
    "protocol_table",
]
METHOD_FIGURES = [
    "zero_shot_groups",
    "head_heatmap_ltc",
    "head_heatmap_ltc_full",
    "textspan_heads",
    "group_accuracy",
    "random_distribution",
    "method_plane",
]
METHOD_TABLES = [
    "heads_table",
    "group_accuracy",
    "main_table",
    "paired_table",
    "random_summary",
    "reference_heads",
    "protocol_table",
]
SEEDS_FIGURES = ["seeds_scatter"]
SEEDS_TABLES = ["seeds_table"]
_CAPTIONS = {
    "head_heatmap_ltc": "head_heatmap",
    "head_heatmap_ltc_full": "head_heatmap",
    "zero_shot_groups_table": "group_table",
    "group_accuracy_table": "group_table",
}
REPORT_DIR = f"{RESULTS}/report/{{dataset}}/{{model}}/seed-{{seed}}"
SEEDS_REPORT_DIR = f"{RESULTS}/report/{{dataset}}/{{model}}/seeds"


def caption(name, kind):
    key = f"{name}_table" if kind == "table" else name
    return f"../report/{_CAPTIONS.get(key, name)}.rst"


def _report_files(folder, names, kind):
    sub, ext = ("Figures", "png") if kind == "figure" else ("Tables", "csv")
    return [
        report_file(
            f"{folder}/{kind}s/{n}.{ext}",
            caption=caption(n, kind),
            category="{dataset} / {model}",
            subcategory=sub,
            labels={
                kind: n.replace("_", " "),
                **({"seed": "{seed}"} if "{seed}" in folder else {}),
            },
        )
        for n in names
    ]


def report_figures(names, folder=REPORT_DIR):
    return _report_files(folder, names, "figure")


def report_tables(names, folder=REPORT_DIR):
    return _report_files(folder, names, "table")


def report_kind(dataset, model):
    return "planted" if is_planted(dataset) and is_trained(model) else "method"


def report_targets():
    out = []
    for d, m, s in cells():
        folder = REPORT_DIR.format(dataset=d, model=m, seed=s)
        out.append(f"{folder}/report_{report_kind(d, m)}.html")
    if len(SEEDS) > 1:
        out += [
            f"{SEEDS_REPORT_DIR.format(dataset=d, model=m)}/report_seeds.html"
            for d in DATASETS
            for m in MODELS
        ]
    out += audit_report_targets()
    out += refineclip_report_targets()
    return out


def table_targets():
    """Every result table of the grid (everything but the report notebooks)."""
    targets = []
    for d, m, s in cells():
        # complete, verified features (a deleted or corrupt shard is rebuilt)
        targets.append(f"{feature_dir(d, m, s)}/manifest.json")
        folder = METRICS.format(dataset=d, model=m, seed=s)
        targets += [f"{folder}/metrics.csv", f"{folder}/paired.csv"]
        if is_planted(d):
            targets.append(f"{GROUND_TRUTH.format(dataset=d, model=m, seed=s)}/locator_scores.csv")
    targets += [
        f"{RESULTS}/metrics/{d}/{m}/summary_over_seeds.csv" for d in DATASETS for m in MODELS
    ]
    targets.append(f"{RESULTS}/tables/grid_main.csv")
    targets.append(f"{RESULTS}/tables/completeness.csv")
    targets += audit_table_targets()
    targets += refineclip_table_targets()
    return list(dict.fromkeys(targets))


def all_targets():
    return table_targets() + report_targets() + refineclip_model_targets()


def report_common_inputs(wildcards):
    """Result tables every report notebook reads (paths become notebook parameters)."""
    heads = HEADS.format(**{**wildcards, "dataset": heads_source(wildcards.dataset)})
    metrics = METRICS.format(**wildcards)
    return {
        "dataset_meta": cell_meta(wildcards),
        "metrics": f"{metrics}/metrics.csv",
        "paired": f"{metrics}/paired.csv",
        "methods": f"{metrics}/methods.csv",
        "random_draws": f"{metrics}/random_draws.csv",
        "random_summary": f"{metrics}/random_summary.csv",
        "ltc_json": f"{heads}/ltc.json",
        "ltc_full_json": f"{heads}/ltc_full.json",
        "textspan": f"{heads}/textspan.csv",
    }


def report_planted_inputs(wildcards):
    root = data_root(wildcards.dataset, wildcards.seed)
    return {
        **report_common_inputs(wildcards),
        "images": f"{root}/images",
        "train_log": f"{RESULTS}/models/{wildcards.dataset}/{wildcards.model}/seed-{wildcards.seed}/train_log.json",
        "ground_truth": f"{GROUND_TRUTH.format(**wildcards)}/heads.csv",
        "locator_scores": f"{GROUND_TRUTH.format(**wildcards)}/locator_scores.csv",
        "texts_yaml": cell_texts_yaml(wildcards),
    }


def report_dataset_dir(wildcards):
    return data_root(wildcards.dataset, wildcards.seed)


# -------------------------------------------------------------------------------- audit
# The mechanistic fairness audit (METHODS §6; workflow/rules/audit.smk) runs on every cell
# when a configured method reads its located heads (registry locator "audit").
AUDIT = f"{RESULTS}/audit/{{dataset}}/{{model}}/seed-{{seed}}"
AUDIT_FIGURES = ["audit_random_control", "audit_cav_heatmap", "audit_transitions"]
AUDIT_TABLES = ["audit_outcome", "audit_heads", "audit_random_control", "audit_transitions"]


def dataset_audits(dataset):
    """True when a method that reads the audit runs on ``dataset`` (datasets[].methods)."""
    return any("audit" in METHODS[m].spec.locators for m in cell_methods(dataset))


def _check_audit_texts():
    """Every dataset needs a protected_attributes block when an audit method is configured."""
    for name, entry in DATASETS.items():
        if not dataset_audits(name):
            continue
        path = Path(entry["texts"])
        spec = text_spec(name)
        if not isinstance(spec, dict) or not spec.get("protected_attributes"):
            raise ValueError(
                f"config: the audit methods need a protected_attributes block in the text "
                f"file of dataset {name!r} ({path}; structure: config/texts/facet.yaml), or "
                f"remove audit_ablation* from methods"
            )


_check_audit_texts()


def audit_params():
    """The audit block without the text-file checks (edits of those rerun only encoding)."""
    return {k: v for k, v in config["audit"].items() if k not in _AUDIT_TEXT_KEYS}


def audit_inputs(wildcards):
    folder = feature_dir(wildcards.dataset, wildcards.model, wildcards.seed)
    return {**cell_features(wildcards), "audit_texts": f"{folder}/audit_texts.parquet"}


def audit_table_targets():
    return [
        path.format(dataset=d, model=m, seed=s)
        for d, m, s in cells()
        if dataset_audits(d)
        for path in (AUDIT, f"{HEADS}/audit.json")
    ]


def audit_report_targets():
    return [
        f"{REPORT_DIR.format(dataset=d, model=m, seed=s)}/report_audit.html"
        for d, m, s in cells()
        if dataset_audits(d)
    ]


def report_audit_inputs(wildcards):
    return {
        "audit_dir": AUDIT.format(**wildcards),
        "audit_heads": f"{HEADS.format(**wildcards)}/audit.json",
        "dataset_meta": cell_meta(wildcards),
    }


# ----------------------------------------------------------------------------- RefineCLIP
# Per-method phase-1 and adapter files, edited checkpoints, the α/β sensitivity study and the
# RefineCLIP report (workflow/rules/refineclip.smk).
REFINECLIP_FIGURES = ["utility_vs_t", "edit_success_vs_locality", "alpha_beta_sensitivity"]
REFINECLIP_TABLES = [
    "refineclip_heads",
    "refineclip_main",
    "refineclip_stability",
    "refineclip_edit",
]
EDITED_MODELS = f"{RESULTS}/models/{{dataset}}/{{model}}/seed-{{seed}}/edited"


def refineclip_ids(locator):
    """Configured method ids that read ``locator`` (refineclip or refineclip_adapter)."""
    return [m for m, c in METHODS.items() if locator in c.spec.locators]


def dataset_refineclip_ids(dataset, locator):
    """The ids of refineclip_ids(locator) that run on ``dataset`` (datasets[].methods)."""
    return [m for m in refineclip_ids(locator) if m in cell_methods(dataset)]


def dataset_refineclip(dataset):
    """True when a method of the RefineCLIP family runs on ``dataset`` (its report is made)."""
    return any(METHODS[m].spec.family == "refineclip" for m in cell_methods(dataset))


def dataset_sensitivity(dataset):
    """True when the α/β study's method runs on ``dataset``."""
    return sensitivity_method() in cell_methods(dataset)


def sensitivity_method():
    """Method id of the α/β sensitivity study, or None without a refineclip_adapt* method."""
    ids = [
        m
        for m in refineclip_ids("refineclip_adapter")
        if METHODS[m].params.get("objective") == "refineclip"
    ]
    chosen = config["analysis"]["sensitivity"]["method"]
    if chosen and chosen not in ids:
        raise ValueError(
            f"config analysis.sensitivity.method: {chosen!r} is not a configured "
            f"refineclip_adapt* method id ({ids or 'none configured'})"
        )
    return chosen or (ids[0] if ids else None)


def phase1_file(wildcards, method=None):
    """Phase-1 JSON that the configured id ``method`` (default: the job's) reads."""
    return f"{HEADS.format(**wildcards)}/{locator_path('refineclip', method or wildcards.method)}"


def phase1_params(wildcards):
    """The parameters phase 1 reads (editing α, β, steps, ... reruns only phase 2)."""
    params = METHODS[wildcards.method].params
    return {k: v for k, v in params.items() if k in registry.REFINECLIP_PHASE1_PARAMS}


def dataset_edit_targets(wildcards):
    return DATASETS[wildcards.dataset].get("edit_targets") or []


def adapt_inputs(wildcards):
    files = {k: v for k, v in cell_features(wildcards).items() if k != "texts"}
    return {**files, "phase1": phase1_file(wildcards)}


def sensitivity_inputs(wildcards):
    files = {k: v for k, v in cell_features(wildcards).items() if k != "texts"}
    return {**files, "phase1": phase1_file(wildcards, sensitivity_method())}


def sensitivity_params(wildcards):
    return dict(METHODS[sensitivity_method()].params)


def export_inputs(wildcards):
    folder = HEADS.format(**wildcards)
    files = {"adapter": f"{folder}/refineclip_adapter/{wildcards.method}.safetensors"}
    if is_trained(wildcards.model):
        files["checkpoint"] = checkpoint(wildcards.dataset, wildcards.model, wildcards.seed)
    return files


def export_pretrained(wildcards, input):
    if is_trained(wildcards.model):
        return input.checkpoint
    return MODELS[wildcards.model]["pretrained"]


def _report_phase1_id(dataset):
    """The phase-1 file the RefineCLIP report of ``dataset`` shows: that of a method named
    refineclip first, else the first of the dataset's methods that read phase 1 (None)."""
    ids = [m for m in cell_methods(dataset) if "refineclip" in METHODS[m].spec.locators]
    named = [m for m in ids if METHODS[m].name == "refineclip"]
    return (named or ids or [None])[0]


def report_refineclip_inputs(wildcards):
    metrics = METRICS.format(**wildcards)
    heads = HEADS.format(**wildcards)
    files = {
        "dataset_meta": cell_meta(wildcards),
        "metrics": f"{metrics}/metrics.csv",
        "paired": f"{metrics}/paired.csv",
        "summary": f"{RESULTS}/metrics/{wildcards.dataset}/{wildcards.model}/summary_over_seeds.csv",
        "curves": [
            f"{heads}/refineclip_adapter/{m}_curves.csv"
            for m in dataset_refineclip_ids(wildcards.dataset, "refineclip_adapter")
        ],
    }
    shown = _report_phase1_id(wildcards.dataset)
    if shown:
        files["phase1_json"] = phase1_file(wildcards, shown)
    if dataset_sensitivity(wildcards.dataset):
        files["sensitivity"] = f"{metrics}/refineclip_sensitivity.csv"
    return files


def report_phase1_json(wildcards):
    """Notebook parameter: the phase-1 file, or "" (none configured)."""
    return report_refineclip_inputs(wildcards).get("phase1_json", "")


def report_sensitivity(wildcards):
    """Notebook parameter: the sensitivity table, or "" (no refineclip_adapt* method)."""
    return report_refineclip_inputs(wildcards).get("sensitivity", "")


def refineclip_method_info(wildcards):
    """Registry name and shots of every configured method (paper reference rows)."""
    return {
        m: {
            "name": c.name,
            "n_per_class": c.params.get("n_per_class"),
            "shot_classes": c.params.get("shot_classes"),
            "ablate": c.params.get("ablate"),
        }
        for m, c in METHODS.items()
    }


def refineclip_table_targets():
    return [
        f"{METRICS.format(dataset=d, model=m, seed=s)}/refineclip_sensitivity.csv"
        for d, m, s in cells()
        if dataset_sensitivity(d)
    ]


def refineclip_model_targets():
    return [
        f"{EDITED_MODELS.format(dataset=d, model=m, seed=s)}/{method}.safetensors"
        for d, m, s in cells()
        for method in dataset_refineclip_ids(d, "refineclip_adapter")
    ]


def refineclip_report_targets():
    return [
        f"{REPORT_DIR.format(dataset=d, model=m, seed=s)}/report_refineclip.html"
        for d, m, s in cells()
        if dataset_refineclip(d)
    ]
