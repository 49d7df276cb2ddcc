"""The pipeline schema, assembled from each domain's settings (harden/config/<domain>.py). It imports without torch,
so a pipeline file can be checked, documented or generated where harden's methods are not installed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from harden.config.deploy import ExportStage, GateConfig, Int8Config
from harden.config.detect import ScanConfig
from harden.config.evaluate import VerifyStage
from harden.config.ingest import DataConfig, ModelConfig
from harden.config.lineage import TrackingConfig
from harden.config.prune import PruneStage, ScoreStage
from harden.config.repair import FinetuneStage, PolarizeConfig
from harden.core.base import StrictModel


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


