"""Settings of the scan stage and of each built-in detector (torch-free: the schema imports without torch; each
detector's code is in harden/detect/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, model_validator

from harden.core.base import StrictModel
from harden.core.registry import Registry
from harden.core.sections import plugin_sections

if TYPE_CHECKING:  # the implementations import torch; this module must not
    from harden.detect.base import Detector


class DetectorConfig(StrictModel):
    """Base of every detector's YAML section (stages.scan.detectors.<name>)."""

    statistic_threshold: Optional[float] = Field(
        None, description="flag the class with the highest statistic when the model's statistic reaches this, in "
        "place of the detector's own rule (null: its own rule); the red-team benchmark's calibration "
        "(benchmarks/calibrate.py) derives it from the statistic on clean models only")


DETECTORS: Registry[type[Detector]] = Registry("detector")


class NeuralCleanseConfig(DetectorConfig):
    """Neural Cleanse's inversion and its verdict."""

    epochs: int = Field(30, ge=1, description="most epochs per class (reference: up to 1000)")
    steps_per_epoch: int = Field(8, ge=1, description="mini-batches per epoch")
    batch_size: int = Field(32, ge=1, description="clean images per step (each stamped with every class's trigger)")
    lr: float = Field(0.1, gt=0)
    success: float = Field(0.99, gt=0, le=1, description="attack success that counts a mask as a working trigger")
    patience: int = Field(5, ge=1)
    init_cost: float = Field(1e-3, gt=0, description="starting weight of the mask-size term (Neural Cleanse's lambda)")
    early_stop_epochs: int = Field(25, ge=1, description="epochs without a smaller trigger before a class stops")
    anomaly_threshold: float = Field(2.0, gt=0, description="flag the model when the smallest norm's index exceeds it")
    max_norm_ratio: float = Field(0.5, gt=0, le=1, description="and when that norm is at most this share of the "
                                  "median norm: with 10 classes the MAD is noisy, so an index above 2 alone is not "
                                  "enough (docs/methods.md)")
    decisive_norm_ratio: float = Field(0.25, ge=0, le=1, description="flag whatever the anomaly index when the "
                                       "smallest norm is at most this share of the median: a trigger that small is "
                                       "decisive, while the MAD of 10 norms misses it when the other classes spread "
                                       "widely (docs/methods.md); 0: off")
    seed: int = 0


class WarpConfig(DetectorConfig):
    """The warp inversion (finds WaNet-style triggers)."""

    grid: int = Field(4, ge=2, le=32, description="control points per side of the displacement field")
    max_shift: float = Field(0.5, gt=0, le=4, description="largest displacement of a control point, in pixels")
    steps: int = Field(80, ge=1, description="optimisation steps (each stamps one batch with every class's warp)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    success: float = Field(0.5, gt=0, le=1, description="flag the model when one class's warp sends at least this "
                           "share of the other classes' images to it")
    seed: int = 0


class GratingConfig(DetectorConfig):
    """The grating scan (finds SIG-style periodic triggers)."""

    amplitude: float = Field(0.08, gt=0, le=0.5, description="peak of every grating, raw pixels")
    directions: int = Field(24, ge=1, description="grating directions over 180 degrees")
    max_freq: float = Field(16.0, ge=1, description="highest frequency, cycles per image width (grid from 1)")
    freq_step: float = Field(0.75, gt=0, description="frequency grid step, cycles per image width")
    images: int = Field(200, ge=10, description="tune images each grating is added to")
    batch_size: int = Field(1024, ge=1, description="images per forward pass")
    min_gap: float = Field(0.5, gt=0, le=1, description="flag a class whose best grating sends this much more of "
                           "the other classes' images to it than any grating far from that one")
    far_angle: float = Field(25.0, gt=0, le=90, description="degrees from the peak's direction that count as far")
    far_freq: float = Field(2.5, gt=0, description="cycles per image width from the peak's frequency that count as far")
    seed: int = 0


# One optional section per detector, keyed by its YAML name; a detector registered later is accepted by name.
DetectorSections = plugin_sections("DetectorSections", DETECTORS, {
    "grating": GratingConfig, "neural_cleanse": NeuralCleanseConfig, "warp": WarpConfig})


class ScanConfig(StrictModel):
    enabled: bool = False
    detectors: DetectorSections = Field(  # type: ignore[valid-type]
        default_factory=lambda: DetectorSections(neural_cleanse={}),  # type: ignore[call-arg]
        description="the detectors to run, each with its settings (a detector not named does not run)")
    priority: list[str] = Field(["warp", "neural_cleanse", "grating"], description="which detector's verdict "
                                "stands when several flag the model: the first in this order")
    rescan: bool = Field(False, description="also scan the hardened model afresh (trigger-free verification; "
                         "costs a second scan); the report gets `rescan` and the gate can require it not to flag")

    @model_validator(mode="after")
    def _priority_names_detectors(self):
        unknown = sorted(set(self.priority) - set(DetectorSections.known()))
        if unknown:
            raise ValueError(f"priority names {unknown}; known detectors: {', '.join(DetectorSections.known())}")
        return self

    def configured(self) -> list[tuple[str, Any]]:
        """(name, settings) of every detector to run, in priority order (those the priority omits last)."""
        given = dict(self.detectors.items())
        ranked = [n for n in self.priority if n in given] + [n for n in given if n not in self.priority]
        return [(n, given[n]) for n in ranked]
