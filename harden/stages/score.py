"""Score: run the configured scorer(s) by registry name on a copy of the model; scorers never prune."""

from __future__ import annotations

import copy

from ..artifacts import ChannelScores, ModelArtifact
from ..config import ScoreStage
from ..data import ImageSet
from ..errors import StageError
from ..scorers import SCORERS


def configured(cfg: ScoreStage) -> list[tuple[str, object]]:
    return [(name, getattr(cfg.methods, name)) for name in SCORERS.names() if getattr(cfg.methods, name) is not None]


def run(cfg: ScoreStage, art: ModelArtifact, tune: ImageSet) -> ChannelScores:
    methods = configured(cfg)
    if len(methods) != 1:
        raise StageError("score", f"exactly one scoring method is supported for now, got {[n for n, _ in methods]}")
    name, method_cfg = methods[0]
    info = SCORERS.get(name)
    scorer = info.factory(method_cfg)
    return scorer.score(copy.deepcopy(art.model).eval(), tune if info.needs_data else None)
