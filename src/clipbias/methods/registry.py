"""The method registry: every method the pipeline can run, what it needs, where its code is.

Pure Python (no numpy): the workflow imports this module to expand the experiment grid, build
rule inputs and validate ``config["methods"]``. The code of a method is imported only when it
runs (:meth:`MethodSpec.load`).

A **locator** writes head lists (or descriptions) under
``results/{experiment}/heads/{dataset}/{model}/seed-{seed}/`` (file name in :data:`LOCATORS`).
A **method** turns stored features (+ the located heads and encoded texts it declares) into
test-split predictions, ``predictions/{dataset}/{model}/seed-{seed}/{method}.parquet``;
its function has the signature ``fn(ctx: MethodContext, **params) -> MethodOutput``
(:mod:`clipbias.methods.api`).

How to add a method (docs/DESIGN.md, "How to add a method"): write the module with its
``predict`` function, add one :class:`MethodSpec` to :data:`METHODS` below, add its name to the
``methods`` enum of ``workflow/schemas/config.schema.yaml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class MethodConfigError(ValueError):
    """``config["methods"]`` names an unknown method or parameter, or lacks a requirement."""


@dataclass(frozen=True)
class Locator:
    """A stage that locates heads (or fits what a method applies): its output file in the
    heads folder and the rule writing it.

    A ``per_method`` locator runs with a method's own parameters (e.g. RefineCLIP's few-shot
    sampling); its ``file`` contains ``{method}``. Other locators run once per grid cell and
    serve every method. ``shared_on`` names the parameters a per-method locator's output
    depends on: configured ids that agree on all of them share one output (that of the first
    such id in config order, :func:`locator_owner`), so e.g. RefineCLIP phase 1 runs once for
    ``refineclip``, ``refineclip_adapt`` and ``refineclip_std_ft`` when their shots agree.
    ``None``: one output per configured id.
    """

    name: str
    file: str
    rule: str
    description: str
    per_method: bool = False
    shared_on: tuple[str, ...] | None = None

    def path(self, method: str) -> str:
        """File name in the heads folder for ``method`` (a configured method id)."""
        return self.file.format(method=method) if self.per_method else self.file


#: Parameters that phase 1 (rule locate_refineclip) reads; the others rerun only phase 2.
REFINECLIP_PHASE1_PARAMS = (
    "n_per_class", "shots_split", "shot_sampling", "shot_classes", "T", "score_layers",
    "similarity", "selection", "val_split", "T_ratio", "utility_label",
)  # fmt: skip

LOCATORS: Mapping[str, Locator] = MappingProxyType(
    {
        "ltc": Locator(
            "ltc", "ltc.json", "locate_ltc", "LTC S and Y heads on bias-conflicting groups"
        ),
        "ltc_full": Locator(
            "ltc_full", "ltc_full.json", "locate_ltc", "LTC S and Y from all correct/wrong"
        ),
        "textspan": Locator("textspan", "textspan.csv", "textspan", "TextSpan descriptions"),
        "audit": Locator(
            "audit", "audit.json", "audit", "Fairness audit: top-k and greedy heads per attribute"
        ),
        # RefineCLIP (METHODS §5): phase 1 and the phase-2 adapter depend on the method's own
        # parameters (shots, T, ...), so they run once per configured method id.
        "refineclip": Locator(
            "refineclip",
            "refineclip/{method}.json",
            "locate_refineclip",
            "RefineCLIP phase 1: shots, candidate lists (Table 4), selected heads S*",
            per_method=True,
            shared_on=REFINECLIP_PHASE1_PARAMS,
        ),
        "refineclip_adapter": Locator(
            "refineclip_adapter",
            "refineclip_adapter/{method}.safetensors",
            "adapt_refineclip",
            "RefineCLIP phase 2 adapter (+ {method}_curves.csv)",
            per_method=True,
        ),
    }
)


def _frozen(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``module``/``function``: where ``fn(ctx, **params) -> MethodOutput`` lives.
    ``params``: user-settable parameters with their defaults (config ``methods`` entries may
    override them); ``fixed``: parameters that define this variant and cannot be overridden.
    ``locators``: located-head files it reads; ``texts``: whether it needs the dataset's
    encoded method texts; ``shots``: whether it samples labelled few-shot examples (seeded);
    ``env``: conda env of its predict rule (``analysis`` has no torch, ``torch`` has);
    ``control_of``: for random controls, the method whose result they are compared with (its
    predictions file then holds draws, and ``requires`` must list it).
    """

    name: str
    label: str
    family: str
    module: str
    function: str = "predict"
    description: str = ""
    locators: tuple[str, ...] = ()
    texts: bool = False
    shots: bool = False
    env: str = "analysis"
    params: Mapping[str, Any] = field(default_factory=_frozen)
    fixed: Mapping[str, Any] = field(default_factory=_frozen)
    requires: tuple[str, ...] = ()
    control_of: str | None = None

    def load(self) -> Callable[..., Any]:
        """Import the method's module and return its predict function."""
        return getattr(importlib.import_module(self.module), self.function)

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated by ``overrides`` (unknown or fixed keys are errors), then fixed."""
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(self.params))
        if bad:
            fixed = sorted(set(bad) & set(self.fixed))
            why = f" ({', '.join(fixed)} define(s) this variant)" if fixed else ""
            raise MethodConfigError(
                f"method {self.name!r}: unknown parameter(s) {bad}{why}; "
                f"settable: {sorted(self.params) or 'none'}"
            )
        for key, value in overrides.items():
            default = self.params[key]
            if default is not None and not _same_kind(default, value):
                raise MethodConfigError(
                    f"method {self.name!r}: parameter {key}={value!r} should be of the kind "
                    f"of its default {default!r}"
                )
        return {**self.params, **overrides, **self.fixed}


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


_LTC = "clipbias.methods.ltc"
# insight: "global" (one accept basis, the reference's binary path) or "per_class" (per
# pseudo-class Y heads and class-pair texts, the reference's multi-class path; METHODS §4.7-4.8)
_LTC_PARAMS = {
    "ablation_stats": "locate",
    "ablation": "mean",
    "renormalize_after_edit": False,
    "insight": "global",
}
_AUDIT = "clipbias.methods.audit_ablation"
# attribute "" = the dataset's protected_attribute; variant: split | single_pool (selection)
_AUDIT_PARAMS = {"attribute": "", "variant": "split", "ablation_stats": "locate"}

# ------------------------------------------------------------------------------ RefineCLIP
# METHODS §5 (phase 1, phase 2, baselines). Shots: ``n_per_class`` labelled samples per class
# of split ``shots_split``, drawn with the cell's seed (the same draw for every method of the
# family). ``tau``: the softmax temperature of g (phase 2) / Tip-Adapter's logit scale; null or
# "checkpoint" = the classifier's logit scale (exp(logit_scale) of the checkpoint, 100 for the
# laion2b weights), or a number.
# ``shot_sampling``: "random" (the paper: n per class uniformly) or "group_balanced" (n per
# class spread over the class's groups, so bias-conflicting samples are among the shots;
# clipbias.methods.fewshot.group_balanced_shots).
# ``shot_classes`` (phase 1 and everything built on its shots): "all", or "edit_targets" = the
# shots come from the dataset's ``edit_targets`` classes only (METHODS §5.8: 10 Waterbirds
# shots per bird class in the 20-way Waterbirds + ImageNet-R task, 4 per target class on
# ImageNet-A); n_per_class shots of each of those classes.
SHOT_SAMPLING = ("random", "group_balanced")
SHOT_CLASSES = ("all", "edit_targets")
INSIGHT = ("global", "per_class")  # LTC's accept texts (clipbias.methods.ltc.INSIGHT)
_SHOTS = {"n_per_class": 10, "shots_split": "train", "shot_sampling": "random"}
# ``T_ratio`` (null = T heads per list, the paper at every shape it ran): lists of
# min(T, round(T_ratio · K)) of the K scored heads, for models with fewer heads than the paper's
# 4 × 16 (15/64 is its ratio there). ``utility_label``: eq. 10 with each shot's own label
# ("own") or the error direction's y_e ("y_e") (clipbias.methods.refineclip).
_PHASE1 = {**_SHOTS, "shot_classes": "all", "T": 15, "score_layers": 4, "similarity": "cosine",
           "T_ratio": None, "utility_label": "own"}  # fmt: skip
# ``edit_sets`` (phase 2): "selected_direction" = L_success on W and L_locality on C ∪ A of the
# error direction S* was selected for (eqs. 11-12), "all_directions" = every misclassified shot
# and every direction's C ∪ A. ``step_split``: null = keep the last step's adapter, or a split
# (not the test split) whose worst-group accuracy chooses the step among the evaluated ones.
_ADAPT = {"steps": 500, "lr": 1e-3, "tau": None, "eval_every": 10,
          "edit_sets": "selected_direction", "step_split": None}  # fmt: skip
_RC = "clipbias.methods.refineclip_ablate"
_RC_TORCH = "clipbias.methods.refineclip_torch"
_RC_LOCATE = ("refineclip",)
_RC_ADAPT = ("refineclip", "refineclip_adapter")


def _adapter(name, label, description, params, **fixed):
    return MethodSpec(
        name,
        label,
        "refineclip",
        _RC_TORCH,
        function="predict_adapter",
        description=description,
        locators=_RC_ADAPT,
        shots=True,
        env="torch",
        params=_frozen({**_PHASE1, **params}),
        fixed=_frozen({"selection": "utility", **fixed}),
    )


_REFINECLIP_METHODS = (
    MethodSpec(
        "refineclip",
        "RefineCLIP phase 1",
        "refineclip",
        _RC,
        description="Zero-ablate S*, the candidate list and t of largest utility (§5.2-5.5)",
        locators=_RC_LOCATE,
        shots=True,
        params=_frozen(_PHASE1),
        fixed=_frozen({"selection": "utility"}),
    ),
    MethodSpec(
        "refineclip_star",
        "RefineCLIP phase 1* (validation)",
        "refineclip",
        _RC,
        description="Ours*: the list (t of largest utility) chosen by worst-group accuracy on "
        "val_split (paper App. A.2)",
        locators=_RC_LOCATE,
        shots=True,
        params=_frozen({**_PHASE1, "val_split": "val"}),
        fixed=_frozen({"selection": "validation"}),
    ),
    MethodSpec(
        "refineclip_star_t",
        "RefineCLIP phase 1* (validation, list and t)",
        "refineclip",
        _RC,
        description="Ours* variant: list and t both chosen by worst-group accuracy on val_split",
        locators=_RC_LOCATE,
        shots=True,
        params=_frozen({**_PHASE1, "val_split": "val"}),
        fixed=_frozen({"selection": "validation_t"}),
    ),
    _adapter(
        "refineclip_adapt",
        "RefineCLIP (diag adapter)",
        "Phase 2: diag(θ) with L_CE + α L_success + β L_locality (§5.6)",
        {**_ADAPT, "alpha": 1e3, "beta": 1e3},
        variant="diag",
        objective="refineclip",
    ),
    _adapter(
        "refineclip_adapt_full",
        "RefineCLIP (full-matrix adapter)",
        "Phase 2 with a full D x D matrix (paper Appendix D)",
        {**_ADAPT, "alpha": 1e3, "beta": 1e3},
        variant="full",
        objective="refineclip",
    ),
    _adapter(
        "refineclip_adapt_lora",
        "RefineCLIP (LoRA adapter)",
        "Phase 2 with M = I + BA of rank `rank` (paper Appendix D)",
        {**_ADAPT, "alpha": 1e3, "beta": 1e3, "rank": 4},
        variant="lora",
        objective="refineclip",
    ),
    _adapter(
        "refineclip_std_ft",
        "STD-FT (diag, CE only)",
        "Standard fine-tuning of diag(θ): alpha = beta = 0 (§5.7)",
        _ADAPT,
        variant="diag",
        objective="std_ft",
    ),
    _adapter(
        "refineclip_no_teacher",
        "RefineCLIP without ablated teacher",
        "KL to the original model on all shots, no success loss (paper Appendix B)",
        {**_ADAPT, "beta": 1e3},
        variant="diag",
        objective="no_ablated_teacher",
    ),
    MethodSpec(
        "refineclip_classifier",
        "RefineCLIP phase 1 + linear classifier",
        "refineclip",
        _RC_TORCH,
        function="predict_classifier",
        description="Zero-ablate S*, then a linear probe on the ablated shots (paper Table 6)",
        locators=_RC_LOCATE,
        shots=True,
        env="torch",
        params=_frozen({**_PHASE1, "ablate": True, "l2": 0.01, "steps": 200}),
        fixed=_frozen({"selection": "utility"}),
    ),
    MethodSpec(
        "tip_adapter",
        "Tip-Adapter",
        "baseline",
        "clipbias.methods.tip_adapter_fewshot",
        description="Training-free cache model on the same shots, alpha_t = 1, beta_t = 5.5 (§5.7)",
        shots=True,
        params=_frozen({**_SHOTS, "alpha": 1.0, "beta": 5.5, "tau": None}),
    ),
    MethodSpec(
        "tip_adapter_f",
        "Tip-Adapter-F",
        "baseline",
        _RC_TORCH,
        function="predict_tip_adapter_f",
        description="Tip-Adapter with learnable keys: AdamW, cosine schedule (§5.7)",
        shots=True,
        env="torch",
        params=_frozen(
            {**_SHOTS, "alpha": 1.0, "beta": 5.5, "tau": None, "lr": 1e-3, "epochs": 20}
        ),
    ),
)

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        s.name: s
        for s in (
            MethodSpec(
                "zero_shot",
                "Zero-shot",
                "baseline",
                "clipbias.methods.zero_shot",
                description="Sum of all stored contributions, original classifier (§4.9)",
            ),
            MethodSpec(
                "ortho_cali",
                "Ortho-Cali",
                "baseline",
                "clipbias.methods.ortho_cali",
                description="Debiased text classifier of Chuang et al. (§4.10)",
                texts=True,
                params=_frozen({"orientation": "original"}),
            ),
            MethodSpec(
                "roboshot",
                "RoboShot",
                "baseline",
                "clipbias.methods.roboshot",
                description="Reject then accept projections of the full embedding (§4.7)",
                texts=True,
                fixed=_frozen({"mode": "both"}),
            ),
            MethodSpec(
                "roboshot_accept",
                "RoboShot (accept only)",
                "baseline",
                "clipbias.methods.roboshot",
                description="Accept projections of the full embedding only (§4.7)",
                texts=True,
                fixed=_frozen({"mode": "accept"}),
            ),
            MethodSpec(
                "textspan_ablation",
                "TextSpan ablation",
                "baseline",
                "clipbias.methods.textspan_ablation",
                description="Mean-ablate heads whose TextSpan texts name the spurious attribute",
                locators=("textspan",),
                texts=True,
                params=_frozen({"top_k": 5, "ablation": "mean"}),
            ),
            MethodSpec(
                "ltc",
                "LTC",
                "ltc",
                _LTC,
                description="Mean-ablate S, accept-project each Y head (§4.6-4.7)",
                locators=("ltc",),
                texts=True,
                params=_frozen(_LTC_PARAMS),
            ),
            MethodSpec(
                "ltc_transductive",
                "LTC (test-split means)",
                "ltc",
                _LTC,
                description="LTC with ablation means from the test split (reference code)",
                locators=("ltc",),
                texts=True,
                params=_frozen({k: v for k, v in _LTC_PARAMS.items() if k != "ablation_stats"}),
                fixed=_frozen({"ablation_stats": "test"}),
            ),
            MethodSpec(
                "ltc_scale_preserving",
                "LTC (scale-preserving)",
                "ltc",
                _LTC,
                description="LTC with Y heads rescaled to their original norm (§4.7 [REC])",
                locators=("ltc",),
                texts=True,
                params=_frozen(_LTC_PARAMS),
                fixed=_frozen({"scale_preserving": True}),
            ),
            MethodSpec(
                "ablate",
                "Ablate S only",
                "ltc",
                _LTC,
                description="Mean-ablate the LTC spurious heads only",
                locators=("ltc",),
                params=_frozen({k: v for k, v in _LTC_PARAMS.items() if k != "insight"}),
                fixed=_frozen({"project": False}),
            ),
            MethodSpec(
                "ltc_no_ablate",
                "LTC without ablation",
                "ltc",
                _LTC,
                description="Accept-project the LTC salient heads only",
                locators=("ltc",),
                texts=True,
                params=_frozen({"renormalize_after_edit": False, "insight": "global"}),
                fixed=_frozen({"ablate": False}),
            ),
            MethodSpec(
                "ltc_full",
                "LTC (all samples)",
                "ltc",
                _LTC,
                description="LTC with S and Y located on all correct vs all wrong samples",
                locators=("ltc_full",),
                texts=True,
                params=_frozen(_LTC_PARAMS),
                fixed=_frozen({"heads_from": "ltc_full"}),
            ),
            MethodSpec(
                "ltc_random",
                "LTC-random (mean of draws)",
                "ltc",
                "clipbias.methods.ltc_random",
                description="|S| and |Y| random heads of the last layers, many seeded draws",
                locators=("ltc",),
                texts=True,
                params=_frozen(
                    {
                        "n_draws": 100,
                        "last_layers": 4,
                        "ablation_stats": "locate",
                        "insight": "global",
                    }
                ),
                requires=("ltc",),
                control_of="ltc",
            ),
            MethodSpec(
                "audit_ablation",
                "Audit: top-k heads ablated",
                "audit",
                _AUDIT,
                description="Mean-ablate the fairness audit's top-k heads of one attribute (§6.6)",
                locators=("audit",),
                params=_frozen(_AUDIT_PARAMS),
                fixed=_frozen({"head_set": "top_k"}),
            ),
            MethodSpec(
                "audit_ablation_greedy",
                "Audit: greedy heads ablated",
                "audit",
                _AUDIT,
                description="Mean-ablate the fairness audit's greedy head set (§6.6 [REC])",
                locators=("audit",),
                params=_frozen(_AUDIT_PARAMS),
                fixed=_frozen({"head_set": "greedy"}),
            ),
            *_REFINECLIP_METHODS,
        )
    }
)

#: Always evaluated: the reference of every paired comparison.
REFERENCE_METHOD = "zero_shot"


def names() -> list[str]:
    return list(METHODS)


def get(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodConfigError(
            f"unknown method {name!r}; known methods: {', '.join(METHODS)}"
        ) from None


def labels() -> dict[str, str]:
    """Display name of every method (report tables)."""
    return {name: spec.label for name, spec in METHODS.items()}


@dataclass(frozen=True)
class Configured:
    """A configured method: its id (output paths, tables), registry name and parameters."""

    id: str
    name: str
    params: Mapping[str, Any]

    @property
    def spec(self) -> MethodSpec:
        return get(self.name)


_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def configured(entries: Iterable[str | Mapping[str, Any]]) -> dict[str, Configured]:
    """``config["methods"]`` -> ``{id: Configured}`` in config order.

    Entries are method names or mappings ``{name: ..., <param>: value, ...}``; a mapping may
    set ``id`` to run one method several times with different parameters (e.g.
    ``{name: refineclip, id: refineclip_n20, n_per_class: 20}``; default id = name). The
    reference method (zero-shot) is added first when missing. Raises
    :class:`MethodConfigError` for unknown methods or parameters, duplicate ids, and unmet
    requirements (e.g. ``ltc_random`` without ``ltc``).
    """
    out: dict[str, Configured] = {}
    for entry in entries:
        if isinstance(entry, str):
            name, mid, overrides = entry, entry, {}
        elif isinstance(entry, Mapping) and "name" in entry:
            name = entry["name"]
            mid = entry.get("id") or name
            overrides = {k: v for k, v in entry.items() if k not in ("name", "id")}
        else:
            raise MethodConfigError(
                f"a methods entry must be a name or a mapping with 'name', got {entry!r}"
            )
        spec = get(name)
        if not mid or set(mid) - _ID_CHARS:
            raise MethodConfigError(f"method id {mid!r}: use lower-case letters, digits and _")
        if mid in out:
            raise MethodConfigError(f"method {mid!r} is listed twice in methods (set an id)")
        out[mid] = Configured(mid, name, spec.resolve_params(overrides))
    if REFERENCE_METHOD not in out:
        ref = Configured(REFERENCE_METHOD, REFERENCE_METHOD, get(REFERENCE_METHOD).resolve_params())
        out = {REFERENCE_METHOD: ref, **out}
    names = {c.name for c in out.values()}
    for c in out.values():
        for key, allowed in (
            ("shot_sampling", SHOT_SAMPLING),
            ("shot_classes", SHOT_CLASSES),
            ("insight", INSIGHT),
        ):
            if key in c.params and c.params[key] not in allowed:
                raise MethodConfigError(
                    f"method {c.id!r}: {key} must be one of {list(allowed)}, got {c.params[key]!r}"
                )
        missing = [r for r in c.spec.requires if r not in out and r not in names]
        if missing:
            raise MethodConfigError(
                f"method {c.id!r} needs {missing} in methods as well (it is compared with them)"
            )
    return out


def locator_owner(configured: Mapping[str, Configured], locator: str, method_id: str) -> str:
    """The configured id whose output of the per-method ``locator`` ``method_id`` reads.

    With ``shared_on`` parameters (:class:`Locator`), that is the first id in config order
    that reads ``locator`` and agrees with ``method_id`` on all of them (absent parameters
    compare as absent, so e.g. ``val_split`` of the validation-selected variant keeps it
    apart); otherwise ``method_id`` itself."""
    loc = LOCATORS[locator]
    if not loc.per_method or loc.shared_on is None:
        return method_id
    mine = configured[method_id]

    def key(c: Configured) -> tuple:
        return tuple((k, k in c.params, c.params.get(k)) for k in loc.shared_on)

    for mid, c in configured.items():
        if locator in c.spec.locators and key(c) == key(mine):
            return mid
    return method_id


def locator_owners(configured: Mapping[str, Configured], locator: str) -> list[str]:
    """Configured ids that own an output of the per-method ``locator`` (each runs its rule
    once), in config order."""
    ids = [m for m, c in configured.items() if locator in c.spec.locators]
    return list(dict.fromkeys(locator_owner(configured, locator, m) for m in ids))


def feature_splits(
    configured: Mapping[str, Configured],
    method_ids: Iterable[str],
    dataset_splits: Iterable[str],
) -> list[str]:
    """The splits a cell's stages read from its features (``features.splits: auto``):
    ``dataset_splits`` (the dataset's locate, test and evaluation splits and counterfactual
    twins, which the head-locating, evaluation and ground-truth stages read), then every
    ``*_split`` parameter (``shots_split``, ``val_split``) of the methods ``method_ids``,
    in first-seen order without repeats."""
    out = [str(s) for s in dataset_splits]
    for mid in method_ids:
        out += [str(v) for k, v in configured[mid].params.items() if k.endswith("_split") and v]
    return list(dict.fromkeys(out))


def label(method_id: str, name: str | None = None) -> str:
    """Display name of a configured method id (registry label; aliases keep their id)."""
    spec = METHODS.get(name or method_id)
    if spec is None or (name is not None and method_id != name):
        return method_id
    return spec.label


def by_env(env: str) -> list[str]:
    return [name for name, spec in METHODS.items() if spec.env == env]
