"""The scan: every configured detector asks its question of the suspect model, and the verdict policy, here and only
here, says which finding stands for the backdoor.

The policy is an order (`stages.scan.priority`): the first detector in it that flags the model gives the verdict.
The default puts the warp inversion first, since a sub-pixel warp that sends half of all images to one class has no
benign reading while Neural Cleanse can flag the wrong class of a warp-backdoored model (docs/methods.md); the
grating scan comes last, since the patch and warp repairs are the
cheaper ones where they apply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from harden.config.detect import DETECTORS, ScanConfig
from harden.config.evaluate import TriggerBase
from harden.core.artifacts import InputContract
from harden.detect import grating, neural_cleanse, warp  # noqa: F401  (registers the built-in detectors)
from harden.detect.base import Finding, Trigger, stamp
from harden.evaluate.metrics import attack_metrics
from harden.ingest.data.sources import ImageSet


@dataclass(frozen=True)
class ScanResult:
    """Every detector's finding, in priority order, and the verdict they add up to."""

    findings: dict[str, Finding]

    @property
    def verdict(self) -> Finding | None:
        return next((f for f in self.findings.values() if f.target is not None), None)

    @property
    def flagged(self) -> bool:
        return self.verdict is not None

    @property
    def target(self) -> int | None:
        return None if self.verdict is None else self.verdict.target

    @property
    def kind(self) -> str | None:
        """The trigger family of the verdict's inversion: "patch", "warp", "grating", ..."""
        return None if self.verdict is None else self.verdict.kind

    @property
    def detector(self) -> str | None:
        return None if self.verdict is None else self.verdict.detector

    def trigger(self) -> Trigger:
        """The verdict's inverted trigger: (free parameters, apply(images in [0, 1], parameters), their range)."""
        assert self.verdict is not None, "no detector flagged the model"
        return self.verdict.trigger()

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] stamped with the verdict's inverted trigger."""
        assert self.verdict is not None, "no detector flagged the model"
        return stamp(self.verdict, x)

    def summary(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "target": self.target, "kind": self.kind, "detector": self.detector,
                "detectors": {name: f.summary() for name, f in self.findings.items()}}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"{name}/{k}": v for name, f in self.findings.items() for k, v in f.to_arrays().items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], names: list[str]) -> ScanResult:
        return cls({n: DETECTORS.get(n).finding_cls.from_arrays(
            {k.split("/", 1)[1]: v for k, v in a.items() if k.startswith(n + "/")}) for n in names})


def scan(model: nn.Module, data: ImageSet, contract: InputContract, cfg: ScanConfig,
         device: torch.device = torch.device("cpu")) -> ScanResult:
    """Every configured detector on ``model`` (each works on its own copy) with clean ``data`` only."""
    return ScanResult({name: calibrated(DETECTORS.get(name)(settings).detect(model, data, contract, device),
                                        settings.statistic_threshold)
                       for name, settings in cfg.configured()})


def calibrated(finding: Finding, threshold: float | None) -> Finding:
    """The finding under a threshold on its statistic (from clean models): it flags the class with the highest
    statistic when the model's statistic reaches the threshold, and nothing otherwise."""
    if threshold is None:
        return finding
    per_class = finding.class_statistics()
    top = int(np.argmax(per_class))
    return dataclasses.replace(finding, target=top if per_class[top] >= threshold else None)


def reinverted(result: ScanResult, cfg: ScanConfig, model: nn.Module, data: ImageSet, contract: InputContract,
               device: torch.device) -> tuple[float, bool] | None:
    """The verdict's detector inverts its class afresh on ``model`` (see Detector.reinverted); None where it cannot."""
    if not can_reinvert(result):
        return None
    name = result.detector
    return DETECTORS.get(name)(dict(cfg.detectors.items())[name]).reinverted(result.verdict, model, data, contract,
                                                                           device)


def can_reinvert(result: ScanResult | None) -> bool:
    """Whether the verdict's detector offers a fresh inversion."""
    return result is not None and result.detector is not None and DETECTORS.get(result.detector).reinverts


def inverted_asr(predict, result: ScanResult, data: ImageSet, num_classes: int, label: str = "ITASR") -> float:
    """ITASR (algorithms.md §5): the share of ``data``'s non-target images that ``predict`` (a torch or ONNX
    predictor) sends to the suspected target once stamped with the verdict's inverted trigger. Trigger-free: used by
    the accuracy guard on the tune split and by the report on held-out images, before and after hardening."""
    return attack_metrics(predict, data, result.stamp, TriggerBase(target=result.target), num_classes, label=label)[0]
