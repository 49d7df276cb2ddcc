"""Detector protocol and registry. A detector asks one trigger-free question of the suspect model (is there a class
that a small patch / a smooth warp / a faint grating reaches from everywhere?) and answers with a Finding.

A Finding carries what every consumer needs without knowing which detector made it: the class it flags (or None),
its inverted trigger for that class (ITASR, MCL and trigger unlearning stamp it), a JSON summary for the report, one
scalar statistic (higher = more suspect; the red-team benchmark calibrates each detector's threshold on the null of
clean models), arrays for the resume cache, and its own row of the scan picture.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import torch
import torch.nn as nn

from harden.config.detect import DETECTORS, DetectorConfig
from harden.core.artifacts import InputContract
from harden.ingest.data.sources import ImageSet

ApplyTrigger = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images in [0, 1], trigger parameters) -> images
Trigger = tuple[torch.Tensor, ApplyTrigger, tuple[float, float]]  # (free parameters, apply, the parameters' range)


class Finding(Protocol):
    detector: ClassVar[str]  # the registry name of the detector that made it
    kind: ClassVar[str]  # the trigger family its inversion expresses: "patch", "warp", "grating", ...

    @property
    def target(self) -> int | None: ...  # the flagged class; None: this detector finds no backdoor

    def trigger(self) -> Trigger: ...  # the flagged class's inverted trigger

    def statistic(self) -> float: ...  # how suspect the model looks to this detector, higher = more

    def class_statistics(self) -> list[float]: ...  # the same per class; statistic() is their maximum

    def summary(self) -> dict[str, Any]: ...  # JSON for report.json: at least "target" and "statistic"

    def to_arrays(self) -> dict[str, np.ndarray]: ...

    def trigger_arrays(self) -> dict[str, np.ndarray]: ...  # the flagged class's trigger, as itasr-trigger.npz

    def plot_row(self, axes, labels: tuple[str, ...], marked: int | None) -> None: ...  # one row of scan-triggers.png


class Detector(Protocol):
    config_cls: ClassVar[type[DetectorConfig]]
    finding_cls: ClassVar[type]  # has from_arrays(arrays) -> Finding
    reinverts: ClassVar[bool]  # offers `reinverted`, a fresh inversion of its flagged class on another model

    def __init__(self, cfg: DetectorConfig) -> None: ...

    def detect(self, model: nn.Module, data: ImageSet, contract: InputContract, device: torch.device) -> Finding: ...

    def reinverted(self, finding: Finding, model: nn.Module, data: ImageSet, contract: InputContract,
                   device: torch.device) -> tuple[float, bool] | None:
        """Only when ``reinverts``: invert the flagged class afresh on ``model`` (a pruning candidate): (its
        statistic, whether the verdict still stands)."""
        ...

    @staticmethod
    def row(summary: dict[str, Any]) -> tuple[str, str, str]: ...  # the summary table's row from report.json


def register_detector(name: str, description: str) -> Callable[[type], type]:
    """Class decorator: registers a detector class under its YAML name; its findings learn the name too."""

    def deco(cls: type) -> type:
        cls.finding_cls.detector = name
        DETECTORS.register(name, description)(cls)
        return cls

    return deco


def stamp(finding: Finding, x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] stamped with the finding's inverted trigger."""
    params, apply, _ = finding.trigger()
    return apply(x, params.to(x.device, x.dtype))


def flag_text(target: int | None) -> str:
    """A verdict in the summary table's words."""
    return "not flagged" if target is None else f"target {target}"


def target_array(target: int | None) -> np.ndarray:
    """A flagged class (or None, stored as -1) for a finding's cache arrays."""
    return np.array(-1 if target is None else target)


def target_from(a: np.ndarray) -> int | None:
    return None if int(a) < 0 else int(a)


def marker(i: int, marked: int | None) -> str:
    """The scan picture's mark on the class whose verdict stands."""
    return " *" if marked == i else ""
