"""Settings of the export, int8 and gate stages (torch-free; their code is in harden/deploy/)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from harden.core.base import StrictModel


class GateConfig(StrictModel):
    enabled: bool = False
    max_asr: Optional[float] = Field(None, ge=0, le=1, description="largest ASR after, for every verify trigger")
    max_asr_per_trigger: dict[str, float] = Field(default_factory=dict, description="per trigger name; overrides max_asr")
    max_clean_acc_drop: Optional[float] = Field(None, ge=0, le=1, description="largest clean-accuracy drop, absolute")
    max_onnx_diff: Optional[float] = Field(None, gt=0, description="largest |torch - onnxruntime| logit difference")
    max_itasr: Optional[float] = Field(None, ge=0, le=1, description="largest inverted-trigger ASR after hardening "
                                       "(trigger-free; needs stages.scan; passes when the scan flags nothing)")
    rescan_clean: bool = Field(False, description="fail when a fresh Neural Cleanse scan of the hardened model still "
                               "flags it (needs stages.scan.rescan)")
    max_latency_ratio: Optional[float] = Field(None, gt=0, description="largest hardened / source ONNX latency, at "
                                               "every batch size of stages.export.latency_batches (1.0: no slower)")
    promote_alias: str = Field("production", min_length=1, description="registry alias moved only when the gate passes")


class Int8Config(StrictModel):
    enabled: bool = False
    calibration_images: int = Field(512, ge=1, description="tune-split images used to calibrate activation ranges")
    per_channel: bool = Field(True, description="per-channel weight scales (else one per tensor)")
    method: str = Field("minmax", pattern="^(minmax|entropy|percentile)$", description="activation range calibration")
    fp32_ends: bool = Field(True, description="keep the first conv (fed by the raw image) and the classifier in "
                            "fp32, as is usual (what it buys in top-1 agreement: docs/methods.md)")
    max_top1_disagreement: Optional[float] = Field(
        None, ge=0, le=1, description="fail the stage when INT8 and fp32 disagree on more held-out images than this")


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
