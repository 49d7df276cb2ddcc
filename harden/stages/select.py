"""The select stage: how much to prune (harden.prune.select), with the scan's trigger-free tie-breaks wired in:
the inverted trigger's ASR of each candidate and, where the detector can, a fresh inversion."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.detect.scan import can_reinvert, inverted_asr, reinverted
from harden.evaluate.metrics import torch_predictor
from harden.prune.remove import prepare
from harden.prune.select import run


@register_stage("select", 40, "choose how many channels to prune on the tune split (accuracy budget, trigger-free "
                "tie-breaks when the scan flagged the model)")
class Select:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.prune.enabled and cfg.stages.score.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        found, src, tune = state.scan, state.source, state.inputs.tune
        prep = prepare(state.model)

        def inverted(m: nn.Module) -> float:  # the tie-break: how well the scan's trigger still works
            return inverted_asr(torch_predictor(m, src.contract, ctx.device), found, tune, src.contract.num_classes,
                                label="ITASR (tune)")

        def fresh(m: nn.Module) -> tuple[float, bool]:  # and whether a fresh inversion still finds one
            return reinverted(found, cfg.stages.scan, m, tune, src.contract, ctx.device)

        flagged = found is not None and found.flagged
        reinvert = can_reinvert(found) and cfg.stages.prune.select.reinvert
        chosen = run(cfg.stages.prune, state.model, state.scores, tune, prep, ctx.device,
                     None if found is None else found.flagged, inverted if flagged else None,
                     fresh if reinvert else None)
        for i, row in enumerate(chosen.trace):  # top_fraction's one row has no accuracy: it measured none
            ctx.tracker.log_metrics({f"select_{k}": row[k] for k in ("tune_acc", "flagged") if k in row}, step=i)
        state.selection, state.prepared, state.scores = chosen, prep, chosen.scores
        return {}
