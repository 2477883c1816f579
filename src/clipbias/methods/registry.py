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

Every method also says what it fits on and with which labels (:class:`LabelUse`, METHODS
§10.7), its level (head-level, embedding-level, few-shot) and its block of the comparison
protocol (§10.8; :func:`label_use_rows`), and, when it exposes a fitted
:class:`~clipbias.methods.api.Correction` (``fit``), what that correction edits, so it can be
a step of a composition (``{name: compose, steps: [...]}``, :func:`check_steps`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
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
class LabelUse:
    """What a method uses at fit and test time (METHODS §10.7), as shown in the main table.

    ``classes``: class labels at fit time (``no``, ``GT``, ``pseudo`` = zero-shot
    predictions, ``shots`` = ground truth of the few-shot samples); ``attribute``: the
    spurious/protected attribute at fit time (``no``, ``GT``, ``zero-shot``, ``groups`` = LTC's
    locate groups, ground truth or zero-shot as ``locate.ltc.use_group_labels`` says, or
    ``param:<name>`` = chosen by that parameter); ``attribute_test``: the attribute of the
    **test** images (``no``, ``zero-shot``, ``GT`` = an oracle); ``texts``: texts used;
    ``images``: the image split fitted on (``none``, ``locate``, ...).
    """

    classes: str = "no"
    attribute: str = "no"
    attribute_test: str = "no"
    texts: str = "none"
    images: str = "none"


#: Blocks of the comparison protocol (METHODS §10.8), in table order.
BLOCKS = {
    "reference": "Reference (zero-shot)",
    "oracle_a": "Oracle-a: ground-truth attributes of the locate split",
    "inferred_a": "Inferred-a: zero-shot attributes / class labels only",
    "label_free": "Label-free",
    "oracle_test": "Oracle upper bound: test-image attributes (not a main-table entry)",
}
#: Levels (the figure's colours): where a method acts.
LEVELS = {
    "reference": "zero-shot",
    "head": "head-level",
    "embedding": "embedding-level",
    "few_shot": "few-shot",
    "composition": "composition",
}
#: What a fitted Correction may edit (MethodSpec.correction).
CORRECTION_PARTS = ("heads", "embedding", "classifier", "decision")


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
    ``level``, ``block``, ``label_use``: see :data:`LEVELS`, :data:`BLOCKS`, :class:`LabelUse`
    (``block`` ``"by_labels"`` = derived from ``label_use`` and the configuration,
    :func:`label_use_rows`). ``fit``: the function returning the method's fitted
    :class:`~clipbias.methods.api.Correction` (a name in ``module``, or ``"module:function"``),
    ``correction``: the parts of :data:`CORRECTION_PARTS` it sets (empty: not composable).
    ``max_classes``: the most classes the method supports (checked at config time where the
    class count is known). ``class_templates``: it reads the per-template class embeddings
    of the 80 OpenAI templates (rule ``encode_class_templates``).
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
    level: str = "embedding"
    block: str = "label_free"
    label_use: LabelUse = LabelUse()
    fit: str | None = None
    correction: tuple[str, ...] = ()
    max_classes: int | None = None
    class_templates: bool = False

    def load(self) -> Callable[..., Any]:
        """Import the method's module and return its predict function."""
        return getattr(importlib.import_module(self.module), self.function)

    def load_fit(self) -> Callable[..., Any]:
        """The method's ``fit(ctx, **params) -> Correction`` (composition steps)."""
        if not self.fit or not self.correction:
            raise MethodConfigError(f"method {self.name!r} exposes no correction to compose")
        module, _, fn = self.fit.rpartition(":")
        return getattr(importlib.import_module(module or self.module), fn)

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

# ------------------------------------------------------------------------------ peers
# METHODS §10: the published training-free debiasing methods, on the stored embeddings.
_TIE = "clipbias.methods.tie"
_TIE_PARAMS = {"attribute": ""}
_PRISM = "clipbias.methods.prism"
_FAIRER = "clipbias.methods.fairerclip"
# Waterbirds defaults of the reference configs (METHODS §10.3); n_iter: without labels only
_FAIRER_PARAMS = {
    "n_iter": 2, "tau_i": 0.7, "tau_z_i": 0.7, "tau_t": 0.1, "tau_z_t": 0.1,
    "gamma_i": 3e-4, "gamma_t": 2e-4, "dim_z": 1, "m": 3000,
}  # fmt: skip
_PEER_METHODS = (
    MethodSpec(
        "tie",
        "TIE",
        "peer",
        _TIE,
        description="Translate ê by its attribute's text vector; λ from GT locate attributes (§10.1)",
        texts=True,
        params=_frozen(_TIE_PARAMS),
        fixed=_frozen({"fit_attributes": "ground_truth", "test_attributes": "zero_shot"}),
        block="oracle_a",
        label_use=LabelUse("no", "GT", "zero-shot", "attribute prompts", "locate"),
        fit="fit",
        correction=("embedding",),
    ),
    MethodSpec(
        "tie_star",
        "TIE*",
        "peer",
        _TIE,
        description="TIE with zero-shot attributes everywhere (§10.1)",
        texts=True,
        params=_frozen(_TIE_PARAMS),
        fixed=_frozen({"fit_attributes": "zero_shot", "test_attributes": "zero_shot"}),
        block="inferred_a",
        label_use=LabelUse("no", "zero-shot", "zero-shot", "attribute prompts", "locate"),
        fit="fit",
        correction=("embedding",),
    ),
    MethodSpec(
        "tie_oracle",
        "TIE (oracle: test attributes)",
        "peer",
        _TIE,
        description="Upper bound: TIE indexed by the test images' ground-truth attributes (§10.1)",
        texts=True,
        params=_frozen(_TIE_PARAMS),
        fixed=_frozen({"fit_attributes": "ground_truth", "test_attributes": "ground_truth"}),
        block="oracle_test",
        label_use=LabelUse("no", "GT", "GT", "attribute prompts", "locate"),
        fit="fit",
        correction=("embedding",),
    ),
    MethodSpec(
        "prism_mini",
        "PRISM-mini",
        "peer",
        _PRISM,
        function="predict_mini",
        description="Project the attribute words out of ê (closed form, §10.2)",
        texts=True,
        label_use=LabelUse(texts="attribute words"),
        fit="fit_mini",
        correction=("embedding",),
    ),
    MethodSpec(
        "prism",
        "PRISM",
        "peer",
        "clipbias.methods.prism_train",
        function="predict_prism",
        description="Linear map learned on text quadruples from the dataset vocabulary (§10.2)",
        texts=True,
        env="torch",
        params=_frozen({"n_quadruples": 500, "lr": 0.1, "batch": 3, "epochs": 1, "margin": 0.5}),
        label_use=LabelUse(texts="quadruples (vocabulary)"),
        fit="fit_prism",
        correction=("embedding", "classifier"),
    ),
    MethodSpec(
        "fairerclip",
        "FairerCLIP",
        "peer",
        _FAIRER,
        description="Kernel encoders (RFF, generalised eigenproblems); GT class labels (§10.3)",
        texts=True,
        params=_frozen(_FAIRER_PARAMS),
        fixed=_frozen({"labels": "ground_truth"}),
        block="inferred_a",
        label_use=LabelUse("GT", "zero-shot", "no", "attribute prompts", "locate"),
        fit="fit",
        correction=("decision",),
        max_classes=2,
    ),
    MethodSpec(
        "fairerclip_nolabels",
        "FairerCLIP (no labels)",
        "peer",
        _FAIRER,
        description="FairerCLIP on zero-shot pseudo-labels, re-predicted each iteration (§10.3)",
        texts=True,
        params=_frozen(_FAIRER_PARAMS),
        fixed=_frozen({"labels": "pseudo"}),
        label_use=LabelUse("pseudo", "zero-shot", "no", "attribute prompts", "locate"),
        fit="fit",
        correction=("decision",),
        max_classes=2,
    ),
    MethodSpec(
        "sfid",
        "SFID",
        "peer",
        "clipbias.methods.sfid",
        description="Impute the forest's top-k attribute coordinates with a low-confidence mean (§10.4)",
        texts=True,
        params=_frozen(
            {
                "attributes": "ground_truth",
                "attribute": "",
                "k": 100,
                "threshold": 0.7,
                "heldout": 0.2,
                "n_estimators": 100,
                "min_low": 10,
            }
        ),  # fmt: skip
        block="by_labels",
        label_use=LabelUse("no", "param:attributes", "no", "none", "locate + held-out"),
        fit="fit",
        correction=("embedding",),
    ),
    MethodSpec(
        "sage",
        "SAGE",
        "peer",
        "clipbias.methods.sage",
        description="Per-image choice of the most separating of the 80 OpenAI templates (§10.5)",
        params=_frozen({"k": 1}),
        label_use=LabelUse(texts="80 templates"),
        fit="fit",
        correction=("decision",),
        class_templates=True,
    ),
    MethodSpec(
        "closed_form_debias",
        "Closed-form debiasing",
        "peer",
        "clipbias.methods.closed_form",
        description="Closed-form shrinking of the group-prompt subspace, image and text (§10.6)",
        texts=True,
        label_use=LabelUse(texts="group prompts (synonyms)"),
        fit="fit",
        correction=("embedding", "classifier"),
    ),
    MethodSpec(
        "compose",
        "Composition",
        "composition",
        "clipbias.methods.compose",
        description="Chain a head-level correction with embedding-level ones (DESIGN.md)",
        params=_frozen({"steps": []}),
        level="composition",
        block="by_labels",
    ),
)

_COMPOSE = "clipbias.methods.compose"
_LTC_USE = LabelUse("GT", "groups", "no", "accept texts", "locate")
_SHOTS_USE = LabelUse("shots", "shots", "no", "none", "shots")
#: Level, block, label use and correction of the methods registered before the peers.
_PROTOCOL: Mapping[str, Mapping[str, Any]] = {
    "zero_shot": {"level": "reference", "block": "reference"},
    "ortho_cali": {"label_use": LabelUse(texts="spurious + candidate prompts"),
                   "fit": "fit", "correction": ("classifier",)},
    "roboshot": {"label_use": LabelUse(texts="insight pairs"), "fit": "fit",
                 "correction": ("embedding",)},
    "roboshot_accept": {"label_use": LabelUse(texts="insight pairs"),
                        "fit": "fit", "correction": ("embedding",)},
    "textspan_ablation": {"level": "head", "label_use": LabelUse(texts="TextSpan pool",
                          images="locate"), "fit": "fit",
                          "correction": ("heads",)},
    **{m: {"level": "head", "block": "by_labels", "label_use": _LTC_USE,
           "fit": f"{_COMPOSE}:fit_ltc", "correction": ("heads",)}
       for m in ("ltc", "ltc_transductive", "ltc_scale_preserving", "ablate", "ltc_no_ablate",
                 "ltc_full")},
    "ltc_random": {"level": "head", "block": "by_labels", "label_use": _LTC_USE},
    **{m: {"level": "head", "block": "oracle_a", "label_use": LabelUse("no", "GT", "no",
           "concept texts", "locate"), "fit": "fit", "correction": ("heads",)}
       for m in ("audit_ablation", "audit_ablation_greedy")},
    **{m: {"level": "head", "block": "by_labels", "label_use": _SHOTS_USE}
       for m in ("refineclip", "refineclip_star")},
}  # fmt: skip


def _with_protocol(spec: MethodSpec) -> MethodSpec:
    if spec.name in _PROTOCOL:
        return replace(spec, **_PROTOCOL[spec.name])
    if spec.family == "refineclip" or spec.shots:
        return replace(spec, level="few_shot", block="by_labels", label_use=_SHOTS_USE)
    return spec


METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        s.name: _with_protocol(s)
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
            *_PEER_METHODS,
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
        return spec_for(self.name, self.params)


def step_entry(entry: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, parameter overrides) of one composition step (a name or ``{name, ...}``)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and "name" in entry:
        return str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}
    raise MethodConfigError(f"a composition step must be a name or {{name: ...}}, got {entry!r}")


def check_steps(steps: Iterable[str | Mapping[str, Any]], owner: str = "compose") -> list[str]:
    """Validate a composition's steps (names, parameters, order) -> their names.

    Every step must expose a correction (:attr:`MethodSpec.correction`); a head-level edit
    (``heads``) can only come first (later steps see an embedding, not heads), a decision
    rule (``decision``) only last, and at most one step may change the classifier."""
    steps = list(steps)
    if len(steps) < 2:
        raise MethodConfigError(f"method {owner!r}: a composition needs at least two steps")
    names = []
    for i, entry in enumerate(steps):
        name, overrides = step_entry(entry)
        spec = get(name)
        if name == "compose":
            raise MethodConfigError(f"method {owner!r}: compositions do not nest")
        if not spec.correction:
            raise MethodConfigError(
                f"method {owner!r}: step {name!r} cannot compose: it exposes no correction "
                "(an embedding edit or a classifier), only its own predictions; composable: "
                f"{sorted(n for n, s in METHODS.items() if s.correction)}"
            )
        if "heads" in spec.correction and i > 0:
            raise MethodConfigError(
                f"method {owner!r}: step {name!r} edits attention heads, so it must be the "
                "first step (later steps receive an embedding, not the heads)"
            )
        if "decision" in spec.correction and i < len(steps) - 1:
            raise MethodConfigError(
                f"method {owner!r}: step {name!r} outputs a decision, not an embedding, so it "
                "must be the last step"
            )
        spec.resolve_params(overrides)
        names.append(name)
    deciders = [n for n in names if {"classifier", "decision"} & set(get(n).correction)]
    if len(deciders) > 1:
        raise MethodConfigError(
            f"method {owner!r}: steps {deciders} each change the classifier; keep one"
        )
    return names


def spec_for(name: str, params: Mapping[str, Any] | None = None) -> MethodSpec:
    """The spec of a configured method: the registry's, or for a composition one whose needs
    (locators, texts, env, class templates, shots, class limit) are those of its steps."""
    spec = get(name)
    if name != "compose":
        return spec
    steps = [get(step_entry(e)[0]) for e in (params or {}).get("steps", [])]
    limits = [s.max_classes for s in steps if s.max_classes is not None]
    return replace(
        spec,
        locators=tuple(dict.fromkeys(loc for s in steps for loc in s.locators)),
        texts=any(s.texts for s in steps),
        shots=any(s.shots for s in steps),
        env="torch" if any(s.env == "torch" for s in steps) else "analysis",
        class_templates=any(s.class_templates for s in steps),
        max_classes=min(limits) if limits else None,
    )


def check_classes(
    configured: Mapping[str, Configured], dataset: str, n_classes: int, method_ids: Iterable[str]
) -> None:
    """Refuse, before any job runs, a method whose ``max_classes`` is below ``n_classes``."""
    for mid in method_ids:
        limit = configured[mid].spec.max_classes
        if limit is not None and n_classes > limit:
            raise MethodConfigError(
                f"method {mid!r} supports at most {limit} classes (METHODS §10), but dataset "
                f"{dataset!r} has {n_classes}; remove it from methods or from this dataset's "
                "datasets[].methods"
            )


_BLOCK_ORDER = ("reference", "label_free", "inferred_a", "oracle_a", "oracle_test")


def _attribute_use(use: LabelUse, params: Mapping[str, Any], ltc_group_labels: bool) -> str:
    a = use.attribute
    if a == "groups":
        return "GT" if ltc_group_labels else "zero-shot"
    if a == "shots":
        return "GT" if params.get("shot_sampling") == "group_balanced" else "no"
    if a.startswith("param:"):
        v = params.get(a.split(":", 1)[1])
        return {"ground_truth": "GT", "zero_shot": "zero-shot"}.get(v, str(v))
    return a


def _block(spec: MethodSpec, params: Mapping[str, Any], ltc_group_labels: bool) -> str:
    if spec.name == "compose":
        blocks = [
            _block(get(n), {**get(n).params, **o}, ltc_group_labels)
            for n, o in map(step_entry, params.get("steps", []))
        ]
        return max(blocks, key=_BLOCK_ORDER.index) if blocks else "label_free"
    if spec.block != "by_labels":
        return spec.block
    attr = _attribute_use(spec.label_use, params, ltc_group_labels)
    if attr == "GT":
        return "oracle_a"
    if attr == "zero-shot" or spec.label_use.classes in ("GT", "shots"):
        return "inferred_a"
    return "label_free"


def label_use_rows(
    configured: Mapping[str, Configured], ltc_group_labels: bool = True
) -> list[dict[str, str]]:
    """One row per configured method: its block (§10.8), level and label use (§10.7), in
    config order. ``ltc_group_labels``: ``locate.ltc.use_group_labels`` (LTC's groups are
    then ground truth, else zero-shot)."""
    rows = []
    for mid, c in configured.items():
        spec = c.spec
        use = spec.label_use
        if spec.name == "compose":
            entries = [step_entry(e) for e in c.params.get("steps", [])]
            parts = [get(n) for n, _ in entries]
            steps = " → ".join(s.name for s in parts)
            uses = [
                _attribute_use(s.label_use, {**s.params, **o}, ltc_group_labels)
                for s, (_, o) in zip(parts, entries, strict=True)
            ]
            use = LabelUse(
                classes=" + ".join(dict.fromkeys(s.label_use.classes for s in parts)),
                attribute=" + ".join(dict.fromkeys(uses)),
                attribute_test=" + ".join(dict.fromkeys(s.label_use.attribute_test for s in parts)),
                texts=" + ".join(dict.fromkeys(s.label_use.texts for s in parts)),
                images=" + ".join(dict.fromkeys(s.label_use.images for s in parts)),
            )
            attr = use.attribute
        else:
            steps = ""
            attr = _attribute_use(use, c.params, ltc_group_labels)
        rows.append(
            {
                "method": mid,
                "block": _block(spec, c.params, ltc_group_labels),
                "level": spec.level,
                "classes": use.classes,
                "attribute": attr,
                "attribute_test": use.attribute_test,
                "texts": use.texts,
                "images": use.images,
                "steps": steps,
            }
        )
    return rows


_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _check_bare_steps(out: Mapping[str, Configured]) -> None:
    """A composition's step given by a bare name runs with the registry defaults; when the
    experiment also lists that method with other parameters, the step silently differs from
    the method it appears beside (planted_multiclass: ``steps: [ltc, ...]`` ran global
    insight pairs while its ``ltc`` entry used per-class ones). Refused: name the step's
    parameters, or write ``{name: <method>}`` to mean the defaults."""
    for c in out.values():
        if c.name != "compose":
            continue
        for step in c.params.get("steps", []):
            if not isinstance(step, str) or step not in out or out[step].name != step:
                continue
            defaults = get(step).resolve_params()
            diff = {k: v for k, v in out[step].params.items() if defaults.get(k) != v}
            if diff:
                raise MethodConfigError(
                    f"method {c.id!r}: step {step!r} runs with the registry defaults, but "
                    f"methods lists {step!r} with {diff}; write the step as "
                    f"{{name: {step}, ...}} with the parameters you mean ({{name: {step}}} "
                    "for the defaults)"
                )


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
        if name == "compose":
            check_steps(overrides.get("steps", []), mid)
        if not mid or set(mid) - _ID_CHARS:
            raise MethodConfigError(f"method id {mid!r}: use lower-case letters, digits and _")
        if mid in out:
            raise MethodConfigError(f"method {mid!r} is listed twice in methods (set an id)")
        out[mid] = Configured(mid, name, spec.resolve_params(overrides))
    _check_bare_steps(out)
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
