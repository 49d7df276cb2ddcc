"""Fine-tune: the one training loop on the tune split, early stopping on the held-out split."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from harden.config.repair import REPAIRS, FinetuneStage
from harden.config.schema import PipelineConfig
from harden.core.artifacts import FinetuneResult, ModelArtifact
from harden.core.context import RunContext
from harden.core.progress import console
from harden.core.resume import StageCache, load_state, state_to_arrays
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.core.train import TrainSettings, train
from harden.detect import ScanResult
from harden.evaluate.metrics import accuracy, torch_predictor
from harden.ingest.data.sources import ImageSet
from harden.repair import Repair, RepairContext, active


def repairs_for(cfg: FinetuneStage, scan: ScanResult | None) -> dict[str, Repair]:
    """The configured repairs that act on this model, given the scan's findings (None: no scan ran), in hook order."""
    return active({name: REPAIRS.get(name)(settings) for name, settings in cfg.repairs.items()}, scan)


def run(cfg: FinetuneStage, art: ModelArtifact, suspect: nn.Module, tune: ImageSet, heldout: ImageSet,
        device: torch.device, seed: int, hooks: list[object], scan: ScanResult | None = None
        ) -> tuple[ModelArtifact, FinetuneResult]:
    """``hooks``: handed on by earlier stages (prune's masks), run first; then each acting repair's hook."""
    settings = TrainSettings(
        epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        patience=cfg.patience, augment=cfg.augment, max_steps=cfg.max_steps, seed=seed, freeze_bn=cfg.freeze_bn,
        clip_grad_norm=cfg.clip_grad_norm,
    )
    ctx = RepairContext(art, suspect, scan, seed)
    hooks = [*hooks, *(r.hook(ctx) for r in repairs_for(cfg, scan).values())]

    def heldout_acc(model: torch.nn.Module) -> float:
        return accuracy(torch_predictor(model, art.contract, device), heldout, label="held-out accuracy")

    outcome = train(art.model, tune, art.contract, settings, heldout_acc, device, hooks)
    out = ModelArtifact(**{**art.__dict__, "model": outcome.model})
    return out, FinetuneResult(outcome.epochs_run, outcome.best_epoch, outcome.best_score, outcome.start_score,
                               outcome.history, outcome.diverged)


@register_stage("finetune", 70, "repair: the one training loop on the tune split with the configured repairs")
class Finetune:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.finetune.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        """Its weights are cached for --resume, keyed by everything the result depends on; not after a polarizer,
        whose inserted layer is not rebuilt before this point."""
        st, src, inp, found = cfg.stages, state.source, state.inputs, state.scan
        key = StageCache.key(src.source_sha256, inp.tune.sha256, inp.heldout.sha256, cfg.seed,
                             st.finetune.model_dump(mode="json"), state.report.get("prune"),
                             None if found is None else [found.kind, found.target])
        cached = None if st.polarize.enabled else ctx.cache.load_arrays("finetune", key)
        if cached is not None:  # prune has rebuilt the same architecture; only the weights are reused
            current = state.model
            state.model = type(current)(**{**current.__dict__, "model": copy.deepcopy(current.model)})
            load_state(state.model.model, {k[2:]: v for k, v in cached.items() if k.startswith("w:")})
            ft = FinetuneResult(**json.loads(str(cached["result"])))
        else:
            state.model, ft = run(st.finetune, state.model, src.model, inp.tune, inp.heldout, ctx.device, cfg.seed,
                                  state.hooks, found if found is not None and found.flagged else None)
            if not st.polarize.enabled:
                ctx.cache.save_arrays("finetune", key, {
                    **{f"w:{k}": v for k, v in state_to_arrays(state.model.model).items()},
                    "result": np.array(json.dumps(dataclasses.asdict(ft)))})
        ctx.log_history(ft.history)
        if ft.diverged:
            console.print("[yellow]fine-tuning diverged (held-out accuracy fell); kept the model from before it[/]")
        return {"finetune": {"epochs_run": ft.epochs_run, "best_epoch": ft.best_epoch, "diverged": ft.diverged,
                             "repairs": list(repairs_for(st.finetune, found)),
                             "heldout_acc_start": ft.heldout_acc_before,
                             "heldout_acc_best": ft.best_heldout_acc, "history": ft.history}}
