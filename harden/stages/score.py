"""Score: run the configured scorer(s) by registry name on a copy of the model; scorers never prune."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from harden.config.prune import SCORERS, ScoreStage
from harden.config.schema import PipelineConfig
from harden.core.artifacts import ChannelScores, ModelArtifact
from harden.core.context import RunContext
from harden.core.errors import StageError
from harden.core.resume import StageCache, scores_from_arrays, scores_to_arrays
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.fusion import fuse
from harden.report.plots import score_histograms


def configured(cfg: ScoreStage) -> list[tuple[str, object]]:
    return list(cfg.methods.items())


@dataclass(frozen=True)
class ScoreOutcome:
    combined: ChannelScores  # what selection and pruning use: the one method's scores, or their fusion
    per_method: dict[str, ChannelScores]
    seconds: dict[str, float]  # scoring cost per method (the benchmark reports it)


def run(cfg: ScoreStage, art: ModelArtifact, tune: ImageSet, cache: StageCache | None = None) -> ScoreOutcome:
    """``cache``: per-method scores keyed by the model, the tune split and the method's settings (resume)."""
    methods = configured(cfg)
    if not methods:
        raise StageError("score", f"stages.score.methods names no scorer; known: {', '.join(SCORERS.names())}")
    per_method, seconds = {}, {}
    for name, method_cfg in methods:
        info = SCORERS.get(name)
        t0 = time.perf_counter()
        key = StageCache.key(name, method_cfg.model_dump(mode="json"), art.source_sha256, tune.sha256)
        cached = cache.load_arrays(f"score-{name}", key) if cache else None
        if cached is not None:
            per_method[name] = scores_from_arrays(cached)
        else:
            per_method[name] = info.factory(method_cfg).score(copy.deepcopy(art.model).eval(),
                                                              tune if info.needs_data else None, art.contract)
            if cache:
                cache.save_arrays(f"score-{name}", key, scores_to_arrays(per_method[name]))
        seconds[name] = round(time.perf_counter() - t0, 3)
    combined = per_method[methods[0][0]] if len(methods) == 1 else fuse(per_method, cfg.fusion)
    return ScoreOutcome(combined, per_method, seconds)


@register_stage("score", 30, "score every conv channel's suspicion with the configured scorers (nothing is pruned)")
class Score:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.score.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        outcome = run(cfg.stages.score, state.model, state.inputs.tune, ctx.cache)
        scores = outcome.combined
        ctx.write_json("scores.json", {**scores.to_json(), "per_method": {
            name: s.to_json() for name, s in outcome.per_method.items()}}, "score")
        score_histograms(scores, ctx.out_dir / "scores.png", cfg.name)
        ctx.tracker.log_file(ctx.out_dir / "scores.png", "score")
        ctx.tracker.log_metrics({"flagged": scores.num_flagged(), "channels": scores.num_channels(),
                                 **{f"seconds_{k}": v for k, v in outcome.seconds.items()}})
        state.scored, state.scores = outcome, scores
        return {"score": {"method": scores.method, "flagged": scores.num_flagged(), "channels": scores.num_channels(),
                          "seconds": outcome.seconds}}
