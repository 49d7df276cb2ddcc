"""Pipeline configuration: YAML -> validated, path-resolved PipelineConfig, with every problem reported at once."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

import yaml
from pydantic import Field, StringConstraints, ValidationError, model_validator

from .attacks.triggers import ArrayRef, TriggerConfig
from .base import StrictModel
from .core.sections import plugin_sections
from .errors import ConfigError
from .scorers import SCORERS
from .gate import GateConfig
from .int8 import Int8Config
from .polarizer import PolarizeConfig
from .repair import REPAIRS
from .detect import ScanConfig
from .scorers.fusion import FusionConfig

M = TypeVar("M", bound=StrictModel)


class InputSpec(StrictModel):
    """The input contract, required when model.path is a bare weights file (a model folder carries its own)."""

    size: tuple[int, int, int] = Field(description="C, H, W")
    mean: list[float] = Field(description="per-channel mean subtracted after scaling pixels to [0, 1]")
    std: list[float] = Field(description="per-channel standard deviation divided by after the mean")
    labels: Optional[list[str]] = Field(None, description="class names in output order")
    pixel_scale: float = Field(255.0, description="raw pixel values are divided by this first")


RegistryUri = Annotated[str, StringConstraints(pattern=r"^(models|runs):/\S+$")]


def is_registry_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("models:/", "runs:/"))


class ModelConfig(StrictModel):
    path: Union[RegistryUri, Path] = Field(description="a model folder, a weights file, or an MLflow URI "
                                           "(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run>/<path>) "
                                           "whose artifacts are such a folder")
    architecture: Optional[str] = Field(None, description="a registered name, torchvision/<name>, or module:function "
                                        "(a Python entry point: needs trust_code)")
    trust_code: bool = Field(False, description="allow a module:function architecture to be imported and run; never "
                             "needed for the built-in architectures")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the architecture "
                                       "(e.g. width); a model folder's config.json supplies them")
    num_classes: Optional[int] = Field(None, ge=2, description="outputs of the classifier (default: from the labels)")
    input: Optional[InputSpec] = Field(None, description="the input contract of a bare weights file (a model folder "
                                       "has it in config.json)")
    rename: dict[str, str] = Field(default_factory=dict, description="tensor-name prefixes of the weights file mapped "
                                   "to the architecture's, e.g. {'linear.': 'fc.'} (the longest match wins)")
    name: Optional[str] = Field(None, min_length=1, description="the model's name: the registry entry is "
                                "harden-<name> (default: the model folder's name; for a file, its folder's)")


class DataSource(StrictModel):
    path: Path = Field(description="an npz file (x uint8 NHWC, y int labels) or an ImageFolder directory")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N images after a seeded shuffle")


class CleanData(DataSource):
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="stratified share kept for stopping and checks")
    split_seed: int = Field(0, description="seed of the stratified tune / held-out split")


class DataConfig(StrictModel):
    clean: CleanData
    test: Optional[DataSource] = None


# One optional section per repair, keyed by its YAML name; a repair registered later is accepted by name.
RepairSections = plugin_sections("RepairSections", REPAIRS)

# One optional section per scorer, keyed by its YAML name; a scorer registered later is accepted by name.
ScorerMethods = plugin_sections("ScorerMethods", SCORERS)


class ScoreStage(StrictModel):
    enabled: bool = True
    methods: ScorerMethods = Field(default_factory=lambda: ScorerMethods(clp={}))  # type: ignore[call-arg]
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="how several methods' scores combine")


class SelectPolicy(StrictModel):
    """How many channels to prune, chosen on the tune split of the defender's clean data."""

    policy: Literal["flags", "accuracy_guard", "top_fraction"] = Field(
        "accuracy_guard", description="flags: the scorer's own decision; accuracy_guard: search thresholds; "
        "top_fraction: the highest-scoring `fraction` of all scored channels, across layers"
    )
    fraction: float = Field(0.05, gt=0, lt=1, description="share of all scored channels pruned by top_fraction")
    thresholds: Optional[list[float]] = Field(
        None, min_length=1, description="candidate score thresholds, flag = score > t (default: the scorer's own, "
        "e.g. CLP z-scores 3.0 ... 2.0, ANP 1 - mask 0.9 ... 0.5)")
    max_relative_drop: float = Field(0.10, gt=0, lt=1, description="largest relative tune-accuracy drop, before repair")
    unflagged_relative_drop: Optional[float] = Field(
        None, ge=0, lt=1, description="the budget instead, when the scan ran and no detector flagged the model "
        "(algorithms.md §7: data-free stages still run, with tighter budgets)")
    itasr_tolerance: Optional[float] = Field(
        None, ge=0, le=1, description="when the scan flagged the model, a trigger-free tie-break: among candidates "
        "within budget, take the least pruning one whose inverted-trigger ASR on the tune split is within this of "
        "the lowest (null: always the most pruning candidate within budget)")
    reinvert: bool = Field(
        False, description="with itasr_tolerance, when the verdict's detector can (Neural Cleanse): invert the "
        "suspected target afresh on each such candidate (least pruning first, about a tenth of a scan each) and "
        "take the first that the verdict no longer flags, else the most pruning candidate within budget; catches a "
        "backdoor whose inverted patch stops working while the real trigger (e.g. a full-image blend) still does")


class PruneStage(StrictModel):
    enabled: bool = True
    select: SelectPolicy = Field(default_factory=SelectPolicy)
    coupled: Literal["branch_zero", "remove", "gamma"] = Field(
        "branch_zero", description="flagged channels in a residual group: zero that branch (quorum: remove "
        "stream-wide), always remove stream-wide, or set gamma to 0 and keep beta at the BN each member's score "
        "was measured at (ANP's own operation; in place, since that BN's channel belongs to the stream; in "
        "pre-activation ResNets it is the post-add BN reading the stream)"
    )
    quorum: float = Field(0.5, gt=0, le=1, description="share of a group's producers flagged to remove the index")
    round_to: int = Field(8, ge=1, description="keep remaining widths a multiple of this (ORT's NCHWc block)")
    max_round_extra: float = Field(
        0.125, ge=0, le=1, description="most extra channels, as a share of the width, rounding may remove"
    )
    max_layer_fraction: float = Field(0.5, gt=0, le=1, description="never silence more of one layer than this")
    silence: Literal["zero", "fold"] = Field(
        "zero", description="a removed channel with its own BN: output 0 (zero gamma and beta, as CLP and "
        "Fine-Pruning), or keep its constant ReLU(beta) by folding it into the next layer's bias (fold, as ANP's "
        "gamma-only pruning; exact except at zero-padded borders, and only where the BN feeds convs or a pooled "
        "Linear, otherwise zeroed)"
    )
    atol: float = Field(1e-4, gt=0, description="pruned vs masked model tolerance (catches pairing bugs)")


class FinetuneStage(StrictModel):
    enabled: bool = True
    epochs: int = Field(15, ge=1)
    lr: float = Field(0.005, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    patience: int = Field(6, ge=1, description="epochs without held-out improvement before stopping")
    augment: bool = True
    freeze_bn: bool = Field(True, description="keep BatchNorm running statistics fixed while fine-tuning")
    repairs: RepairSections = Field(  # type: ignore[valid-type]
        default_factory=lambda: RepairSections(distill={}),  # type: ignore[call-arg]
        description="every repair the fine-tune runs, each with its settings: naming any replaces the default "
        "(distillation alone), `{}` is plain fine-tuning; each repair acts only on the models it is for (harden list)")
    clip_grad_norm: Optional[float] = Field(5.0, gt=0, description="gradient-norm clipping (null: off)")
    max_steps: Optional[int] = Field(None, ge=1, description="cap on optimizer steps (tests and smoke runs)")


class ExportStage(StrictModel):
    enabled: bool = True
    exporter: Literal["auto", "dynamo", "legacy"] = Field("auto", description="torch.onnx exporter (auto: dynamo, "
                                                          "legacy when dynamo fails)")
    slim: bool = Field(True, description="simplify the graph with onnxslim after export")
    atol: float = Field(1e-4, gt=0, description="max |torch - onnxruntime| allowed on the parity batches")
    min_top1_agreement: float = Field(0.999, ge=0, le=1, description="least share of parity images whose top-1 "
                                      "class torch and onnxruntime agree on")
    parity_images: int = Field(256, ge=1, description="held-out images the parity check runs")
    latency: bool = Field(True, description="also export the source model the same way and compare ONNX latency")
    latency_batches: list[int] = Field([1, 64], min_length=1, description="batch sizes of the latency comparison")


class VerifyStage(StrictModel):
    enabled: bool = True
    triggers: dict[str, TriggerConfig] = Field(default_factory=dict, description="known triggers by name, measured "
                                               "for the report only (ASR); none by default (docs/attacks.md)")
    batch_size: int = Field(500, ge=1)


class Stages(StrictModel):
    scan: ScanConfig = Field(default_factory=ScanConfig, description="trigger-free detectors: is the model "
                             "backdoored, towards which class?")
    score: ScoreStage = Field(default_factory=ScoreStage)
    prune: PruneStage = Field(default_factory=PruneStage)
    polarize: PolarizeConfig = Field(default_factory=PolarizeConfig, description="Neural Polarizer (off by default)")
    finetune: FinetuneStage = Field(default_factory=FinetuneStage)
    export: ExportStage = Field(default_factory=ExportStage)
    int8: Int8Config = Field(default_factory=Int8Config, description="onnxruntime static INT8, verified again")
    verify: VerifyStage = Field(default_factory=VerifyStage)


class TrackingConfig(StrictModel):
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or <out>/mlflow.db")
    experiment: str = Field("harden", description="MLflow experiment of the runs")
    registered_model: Optional[str] = Field(None, description="default: harden-<model folder name>")


class PipelineConfig(StrictModel):
    name: str = Field("harden", description="the pipeline's name (MLflow run name, report title)")
    seed: int = Field(0, description="seeds every random draw of the run")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when there is a GPU")
    out: Optional[Path] = Field(None, description="output folder (default: harden-runs/<name>; --out wins)")
    model: ModelConfig
    data: DataConfig
    stages: Stages = Field(default_factory=Stages)
    gate: GateConfig = Field(default_factory=GateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _gate_measures_what_it_checks(self):
        unknown = sorted(set(self.gate.max_asr_per_trigger) - set(self.stages.verify.triggers))
        if self.gate.enabled and unknown:
            raise ValueError(f"gate.max_asr_per_trigger names {unknown}, which stages.verify.triggers does not define")
        if self.gate.enabled and self.gate.rescan_clean and not (self.stages.scan.enabled and self.stages.scan.rescan):
            raise ValueError("gate.rescan_clean needs stages.scan.enabled and stages.scan.rescan")
        sel = self.stages.prune.select
        if sel.reinvert and not (self.stages.scan.enabled and sel.itasr_tolerance is not None):
            raise ValueError("stages.prune.select.reinvert needs stages.scan.enabled and "
                             "stages.prune.select.itasr_tolerance (it refines that tie-break)")
        if self.stages.int8.enabled and not self.stages.export.enabled:
            raise ValueError("stages.int8 quantises the exported ONNX: it needs stages.export.enabled: true")
        if self.gate.max_latency_ratio is not None and not (self.stages.export.enabled and self.stages.export.latency):
            raise ValueError("gate.max_latency_ratio needs stages.export.enabled and stages.export.latency")
        return self

    def digest(self) -> str:
        """sha256 of the resolved configuration (paths included): the pipeline hash in lineage and ONNX metadata.
        Settings left at their defaults are not part of it, so a harden release that adds an option (default off)
        does not change the hash of an existing pipeline."""
        blob = json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_pipeline(path: str | Path, overrides: list[str] | None = None, cwd: Path | None = None) -> PipelineConfig:
    """Read, interpolate, override, validate and resolve a pipeline YAML.

    Args:
        path: the YAML file. Relative paths inside it resolve against its folder.
        overrides: ``key.path=value`` strings; values are parsed as YAML scalars, relative paths resolve against cwd.
        cwd: base for relative paths given in overrides (default: the process cwd).

    Raises:
        ConfigError: every problem found, each with its key path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, [("", "file not found" if not path.exists() else "not a regular file")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [("", f"expected a mapping at the top level, got {type(raw).__name__}")])

    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", problems)
    overridden: set[str] = set()
    for item in overrides or []:
        key, value, err = _parse_override(item)
        if err:
            problems.append((key, err))
            continue
        err = _set_path(raw, key, value)
        if err:
            problems.append((key, err))
        overridden.add(key)
    if problems:
        raise ConfigError(path, problems)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:  # report missing files in the same message, not one round later
        schema = [describe_error(e) for e in exc.errors()]
        raise ConfigError(path, schema + _missing_raw_files(raw, path.parent.resolve(), (cwd or Path.cwd()).resolve(),
                                                            overridden, {k for k, _ in schema})) from None
    cfg = _resolve_paths(cfg, path.parent.resolve(), (cwd or Path.cwd()).resolve(), overridden)
    problems = _check_files(cfg)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def read_yaml_model(path: Path, model: type[M]) -> M:
    """A small YAML file (e.g. `harden zoo train --params`) validated into ``model``; every problem at once."""
    if not path.is_file():
        raise ConfigError(path, [("", "file not found")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    problems: list[tuple[str, str]] = []
    raw = _interpolate(raw, "", problems)
    if problems:
        raise ConfigError(path, problems)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, [describe_error(e) for e in exc.errors()]) from None


def _interpolate(node: Any, key: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{key}.{i}", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None or value == "":
                if m.group(2) is not None:
                    return m.group(2)
                problems.append((key, f"environment variable {m.group(1)} is not set (use ${{{m.group(1)}:-default}})"))
                return m.group(0)
            return value

        return _ENV.sub(sub, node)
    return node


def _parse_override(item: str) -> tuple[str, Any, str | None]:
    if "=" not in item:
        return item, None, "an override must look like key.path=value"
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        return key, None, "empty key segment in override"
    try:
        return key, yaml.safe_load(text) if text else "", None
    except yaml.YAMLError as exc:
        return key, None, f"value is not valid YAML: {exc}"


def _set_path(raw: dict[str, Any], key: str, value: Any) -> str | None:
    node: Any = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return f"cannot set {part!r} inside a {type(node).__name__}"
        if node is None:
            return f"{part!r} is null"
    if not isinstance(node, dict):
        return f"cannot set a key inside a {type(node).__name__}"
    node[parts[-1]] = value
    return None


def describe_error(err: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    if err["type"] == "plugin_section":  # a plug-in's own section (core/sections.py): the path goes on below it
        return ".".join([*loc, err["ctx"]["key"]]), err["ctx"]["reason"]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        return key, _unknown_key_message(loc)
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return key, f"{err['msg']}{shown}"


# Keys that moved when detectors and repairs became plug-ins: an older pipeline file gets told where each went.
_NC = ("epochs", "steps_per_epoch", "batch_size", "lr", "success", "patience", "init_cost", "early_stop_epochs",
       "anomaly_threshold", "max_norm_ratio", "decisive_norm_ratio", "seed")
MOVED = {
    **{f"stages.scan.{k}": f"stages.scan.detectors.neural_cleanse.{k}" for k in _NC},
    "stages.scan.warp": "stages.scan.detectors.warp (its settings, without `enabled`: naming it turns it on)",
    "stages.scan.grating": "stages.scan.detectors.grating (its settings, without `enabled`: naming it turns it on)",
    **{f"stages.finetune.{old}": f"stages.finetune.repairs.{new}" for old, new in (
        ("distill_weight", "distill.weight"), ("distill_temperature", "distill.temperature"),
        ("distill_mix", "distill.mix"), ("contrastive_weight", "mcl.weight"),
        ("contrastive_temperature", "mcl.temperature"), ("unlearn_weight", "universal_unlearn.weight"),
        ("unlearn_radius", "universal_unlearn.radius"), ("unlearn_steps", "universal_unlearn.steps"),
        ("grating_unlearn_weight", "grating_unlearn.weight"), ("grating_unlearn_on", "grating_unlearn.when"),
        ("grating_amplitude", "grating_unlearn.amplitude"), ("grating_max_freq", "grating_unlearn.max_freq"),
        ("grating_candidates", "grating_unlearn.candidates"), ("grating_keep", "grating_unlearn.keep"),
        ("trigger_unlearn_weight", "trigger_unlearn.weight"), ("trigger_unlearn_steps", "trigger_unlearn.steps"),
        ("trigger_unlearn_step_size", "trigger_unlearn.step_size"), ("fst", "fst (without `enabled`)"),
        ("sau", "sau (without `enabled`)"))},
}


def _unknown_key_message(loc: list[str]) -> str:
    moved = MOVED.get(".".join(loc))
    if moved is not None:
        return (f"this key has moved: write it as {moved}; `repairs` lists every repair that runs, so name "
                "distill too if you want it (docs/pipeline.md)") if ".repairs." in moved else (
            f"this key has moved: write it as {moved} (docs/pipeline.md)")
    allowed = _allowed_keys(loc[:-1])
    hint = difflib.get_close_matches(loc[-1], allowed, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown key{suggestion} Allowed here: {', '.join(sorted(allowed))}" if allowed else "unknown key"


def _allowed_keys(parent: list[str]) -> list[str]:
    model: Any = PipelineConfig
    for part in parent:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _resolve_paths(cfg: PipelineConfig, yaml_dir: Path, cwd: Path, overridden: set[str]) -> PipelineConfig:
    """Make every Path field absolute: YAML-relative, except values given with --set (cwd-relative)."""

    def walk(obj: Any, key: str) -> Any:
        if isinstance(obj, StrictModel):
            updates = {}
            for name in type(obj).model_fields:
                value = getattr(obj, name)
                new = walk(value, f"{key}.{name}" if key else name)
                if new is not value:
                    updates[name] = new
            return obj.model_copy(update=updates) if updates else obj
        if isinstance(obj, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in obj.items()}
        if isinstance(obj, Path):
            base = cwd if any(key == o or key.startswith(o + ".") for o in overridden) else yaml_dir
            return obj.expanduser() if obj.expanduser().is_absolute() else (base / obj.expanduser()).resolve()
        return obj

    return walk(cfg, "")


def _missing_raw_files(raw: dict[str, Any], yaml_dir: Path, cwd: Path, overridden: set[str],
                       already: set[str]) -> list[tuple[str, str]]:
    """The main input paths, checked on the raw YAML when the schema itself failed."""
    problems = []
    for key in ("model.path", "data.clean.path", "data.test.path"):
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, str) or key in already or is_registry_uri(node):
            continue
        p = Path(node).expanduser()
        p = p if p.is_absolute() else (cwd if key in overridden else yaml_dir) / p
        if not p.exists():
            problems.append((key, f"no such file or folder: {p}"))
    return problems


def _check_files(cfg: PipelineConfig) -> list[tuple[str, str]]:
    problems = []
    checks: list[tuple[str, Path]] = [("model.path", cfg.model.path), ("data.clean.path", cfg.data.clean.path)]
    if cfg.data.test is not None:
        checks.append(("data.test.path", cfg.data.test.path))
    for name, trig in cfg.stages.verify.triggers.items():
        for field_name in type(trig).model_fields:
            ref = getattr(trig, field_name)
            if isinstance(ref, ArrayRef):
                checks.append((f"stages.verify.triggers.{name}.{field_name}.path", ref.path))
    for key, p in checks:
        if isinstance(p, Path) and not p.exists():
            problems.append((key, f"no such file or folder: {p}"))
    return problems


def resolved_dict(cfg: PipelineConfig) -> dict[str, Any]:
    return copy.deepcopy(cfg.model_dump(mode="json"))


def digest_of_resolved(path: Path) -> str | None:
    """The digest, under today's schema, of a run's config.resolved.yaml (None when it no longer validates)."""
    try:
        return PipelineConfig.model_validate(yaml.safe_load(path.read_text())).digest()
    except (OSError, yaml.YAMLError, ValidationError):
        return None
