"""Fine-tune: the one training loop on the tune split, early stopping on the held-out split."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..artifacts import FinetuneResult, InputContract, ModelArtifact
from ..config import FinetuneStage, PipelineConfig
from ..context import RunContext
from ..core.stage import register_stage
from ..core.state import RunState
from ..data import ImageSet
from ..evaluate import accuracy, torch_predictor
from ..fst import FeatureShift
from ..mcl import ContrastiveHook, kept_features
from ..progress import console
from ..resume import StageCache, load_state, state_to_arrays
from ..sau import SharedAdversarialUnlearn
from ..detect import ScanResult
from ..train import TrainSettings, frozen_copy, train
from ..unlearn import GratingUnlearn, UniversalUnlearn, softened_kl, trigger_unlearn
from .polarize import log_history


class Distill:
    """Training hook: match the suspect model's softened outputs on the same clean, augmented images.

    2,000 hard labels cannot re-teach what pruning removed; the suspect's clean-input behaviour is the richer
    signal and is what we want to keep. The teacher only ever sees clean images, so it cannot hand the trigger
    response back. Zoo BadNets, same pruning: 3.2 points of clean accuracy lost without it (2,000 test images),
    1.6 with it (full test set), ASR 6%.
    """

    def __init__(self, teacher: nn.Module, contract: InputContract, weight: float, temperature: float,
                 mix: bool = False, seed: int = 0):
        self.teacher = frozen_copy(teacher)
        self.contract, self.weight, self.t, self.mix = contract, weight, temperature, mix
        self.gen = torch.Generator().manual_seed(seed)

    def _kl(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(self.contract.normalize(x))
        return softened_kl(student_logits, teacher_logits, self.t)

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.teacher.to(x.device)
        kl = self._kl(logits, x)
        if self.mix:  # label-free extra inputs: blends of two clean images, matched to the teacher as well
            lam = torch.rand(len(x), 1, 1, 1, generator=self.gen).to(x.device)
            xm = lam * x + (1 - lam) * x[torch.randperm(len(x), generator=self.gen).to(x.device)]
            kl = (kl + self._kl(model(self.contract.normalize(xm)), xm)) / 2
        return self.weight * kl


def active_repairs(cfg: FinetuneStage, scan: ScanResult | None) -> dict[str, bool]:
    """Which repair hooks act, given the scan's verdict (None or an unflagged scan: none of the trigger-based ones).
    A grating verdict is repaired by grating unlearning when that is configured: the peak grating the scan found is
    one member of the family the backdoor answers, and the hook searches that family again on every batch."""
    verdict = scan.kind if scan is not None and scan.target is not None else None
    grating = cfg.grating_unlearn_weight > 0 and (cfg.grating_unlearn_on == "always" or verdict == "grating")
    fixed = verdict is not None and not (verdict == "grating" and grating)
    return {"grating_unlearn": grating, "contrastive": cfg.contrastive_weight > 0 and fixed,
            "trigger_unlearn": cfg.trigger_unlearn_weight > 0 and fixed}


def run(cfg: FinetuneStage, art: ModelArtifact, teacher: nn.Module, tune: ImageSet, heldout: ImageSet,
        device: torch.device, seed: int, hooks: list[object], scan: ScanResult | None = None
        ) -> tuple[ModelArtifact, FinetuneResult]:
    """``scan``: the scan's result (MCL and trigger unlearning need its inverted trigger when it flagged)."""
    repairs = active_repairs(cfg, scan)
    settings = TrainSettings(
        epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        patience=cfg.patience, augment=cfg.augment, max_steps=cfg.max_steps, seed=seed, freeze_bn=cfg.freeze_bn,
        clip_grad_norm=cfg.clip_grad_norm,
    )
    if cfg.distill_weight > 0:
        hooks = [*hooks, Distill(teacher, art.contract, cfg.distill_weight, cfg.distill_temperature,
                                 cfg.distill_mix, seed)]

    if cfg.unlearn_weight > 0:
        hooks = [*hooks, UniversalUnlearn(art.contract, cfg.unlearn_weight, cfg.unlearn_radius, cfg.unlearn_steps)]

    if cfg.fst.enabled:
        hooks = [*hooks, FeatureShift(art.classifier, cfg.fst.weight, seed)]
    if cfg.sau.enabled:
        hooks = [*hooks, SharedAdversarialUnlearn(teacher, art.contract, cfg.sau.weight, cfg.sau.eps, cfg.sau.steps,
                                                  cfg.sau.adv_weight, seed)]
    if repairs["grating_unlearn"]:
        hooks = [*hooks, GratingUnlearn(teacher, art.contract, cfg.grating_unlearn_weight, cfg.grating_amplitude,
                                        cfg.grating_max_freq, cfg.grating_candidates, cfg.grating_keep, seed=seed)]
    if repairs["contrastive"]:
        hooks = [*hooks, ContrastiveHook(teacher, art.classifier, scan.stamp, art.contract, cfg.contrastive_weight,
                                         cfg.contrastive_temperature,
                                         kept_features(art.model, teacher, art.classifier))]
    if repairs["trigger_unlearn"]:
        hooks = [*hooks, trigger_unlearn(scan, art.contract, cfg.trigger_unlearn_weight, cfg.trigger_unlearn_steps,
                                         cfg.trigger_unlearn_step_size)]

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
        log_history(ctx, ft.history)
        if ft.diverged:
            console.print("[yellow]fine-tuning diverged (held-out accuracy fell); kept the model from before it[/]")
        return {"finetune": {"epochs_run": ft.epochs_run, "best_epoch": ft.best_epoch, "diverged": ft.diverged,
                             **active_repairs(st.finetune, found), "heldout_acc_start": ft.heldout_acc_before,
                             "heldout_acc_best": ft.best_heldout_acc, "history": ft.history}}
