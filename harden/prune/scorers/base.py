"""Scorer protocol and registry. A scorer maps a model (and optional clean data) to ChannelScores; it never prunes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch.nn as nn

from harden.config.prune import SCORERS, ScorerConfig
from harden.core.artifacts import ChannelScores, InputContract
from harden.ingest.data.sources import ImageSet


@dataclass(frozen=True)
class ScorerInfo:
    config_cls: type[ScorerConfig]
    factory: Callable[[ScorerConfig], "Scorer"]
    needs_data: bool
    thresholds: tuple[float, ...]
    min_scale: float = 0.0  # fusion: the smallest spread, in score units, a layer's scores are divided by


class Scorer(Protocol):
    needs_data: ClassVar[bool]
    thresholds: ClassVar[list[float]]  # the accuracy guard's default candidates, in this scorer's score units

    def score(self, model: nn.Module, data: ImageSet | None, contract: InputContract) -> ChannelScores: ...


def register_scorer(name: str, description: str, config_cls: type[ScorerConfig]):
    """Class decorator: registers a scorer under its YAML name with its config class and capabilities."""

    def deco(cls):
        SCORERS.register(name, description)(ScorerInfo(config_cls, cls, bool(getattr(cls, "needs_data", False)),
                                                          tuple(cls.thresholds), float(getattr(cls, "min_scale", 0.0))))
        return cls

    return deco
