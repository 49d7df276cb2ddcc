"""The pipeline schema: PipelineConfig and the sections of the stages that live with it; plug-in sections
(detectors, scorers, repairs) are each plug-in's own config class."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, StringConstraints, model_validator

from harden.core.base import StrictModel
from harden.core.sections import plugin_sections
from harden.deploy.gate import GateConfig
from harden.deploy.int8 import Int8Config
from harden.detect import ScanConfig
from harden.evaluate.triggers import TriggerConfig
from harden.prune.scorers import SCORERS
from harden.prune.scorers.fusion import FusionConfig
from harden.repair import REPAIRS
from harden.repair.polarizer import PolarizeConfig


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
















# Keys that moved when detectors and repairs became plug-ins: an older pipeline file gets told where each went.














