"""Polarize: insert a Neural Polarizer before the classifier's last feature stage and train it (polarizer.py)."""

from __future__ import annotations

from typing import Any

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.progress import console
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.evaluate.metrics import accuracy, torch_predictor
from harden.repair import polarizer


@register_stage("polarize", 60, "insert and train a Neural Polarizer (a learnable filter layer), folded into a conv")
class Polarize:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.polarize.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        inp, contract = state.inputs, state.source.contract
        state.model, pol = polarizer.run(cfg.stages.polarize, state.model, inp.tune, inp.heldout, ctx.device,
                                         cfg.seed, lambda m: accuracy(torch_predictor(m, contract, ctx.device),
                                                                      inp.heldout, label="held-out accuracy"))
        ctx.log_history(pol.history)
        if pol.diverged:
            console.print("[yellow]polarizer training lost too much held-out accuracy; kept it at identity[/]")
        return {"polarize": {"at": pol.at, "channels": pol.channels, "epochs_run": pol.epochs_run,
                             "diverged": pol.diverged, "heldout_acc_before": pol.heldout_acc_before,
                             "heldout_acc_calibrated": pol.heldout_acc_calibrated,
                             "heldout_acc_after": pol.heldout_acc_after}}
