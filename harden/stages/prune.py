"""The prune stage: the selected channels removed physically (harden.prune.remove), or, with pruning off, the
model carried through unpruned."""

from __future__ import annotations

from typing import Any

import torch

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.progress import console
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.prune.remove import (
    ZeroMask,
    count,
    run,
)


@register_stage("prune", 50, "remove the selected channels physically (torch-pruning), checked against the mask")
class Prune:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.prune.enabled and cfg.stages.score.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        chosen = state.selection
        state.model, pr = run(cfg.stages.prune, state.model, state.scores, ctx.device, state.prepared)
        state.hooks.append(ZeroMask(pr.zeroed, pr.gamma_zeroed))
        if pr.kept_whole:
            root, why = next(iter(pr.kept_whole.items()))
            console.print(f"  {len(pr.kept_whole)} channel group(s) left whole, e.g. {root}: {why} (all of them: "
                          "pruning.json, kept_whole); the fine-tune's repairs still run on them")
        ctx.write_json("pruning.json", {"threshold": chosen.threshold, "selection": chosen.trace,
                                        "removed": pr.removed, "zeroed": pr.zeroed, "gamma_zeroed": pr.gamma_zeroed,
                                        "folded": pr.folded, "kept_whole": pr.kept_whole, "history": pr.history},
                       "prune")
        ctx.tracker.log_metrics({"params_before": pr.params_before, "params_after": pr.params_after,
                                 "macs_before": pr.macs_before, "macs_after": pr.macs_after,
                                 "max_abs_diff_vs_masked": pr.max_abs_diff_vs_masked})
        return {"prune": {"threshold": chosen.threshold, "flagged": state.scores.num_flagged(),
                          "selection": chosen.trace, "removed": sum(map(len, pr.removed.values())),
                          "zeroed": sum(map(len, pr.zeroed.values())),
                          "gamma_zeroed": sum(map(len, pr.gamma_zeroed.values())),
                          "max_abs_diff_vs_masked": pr.max_abs_diff_vs_masked,
                          "folded": sum(map(len, pr.folded.values())), "fold_max_abs_diff": pr.fold_max_abs_diff,
                          "groups_kept_whole": len(pr.kept_whole)},
                "params": {"before": pr.params_before, "after": pr.params_after},
                "macs": {"before": pr.macs_before, "after": pr.macs_after}}


@register_stage("size", 55, "parameters and MACs of a model nothing pruned", span=False)
class Unpruned:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return not Prune().enabled(cfg)

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        src = state.source
        macs, params = count(src.model.cpu(), torch.zeros(1, *src.contract.input_size))
        return {"params": {"before": params, "after": params}, "macs": {"before": macs, "after": macs}}
