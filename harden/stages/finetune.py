"""Fine-tune: the one training loop on the tune split, early stopping on the held-out split."""

from __future__ import annotations

import torch

from ..artifacts import FinetuneResult, ModelArtifact
from ..config import FinetuneStage
from ..data import ImageSet
from ..evaluate import accuracy, torch_predictor
from ..train import TrainSettings, train


def run(cfg: FinetuneStage, art: ModelArtifact, tune: ImageSet, heldout: ImageSet, device: torch.device,
        seed: int, hooks: list[object]) -> tuple[ModelArtifact, FinetuneResult]:
    settings = TrainSettings(
        epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        patience=cfg.patience, augment=cfg.augment, max_steps=cfg.max_steps, seed=seed, freeze_bn=cfg.freeze_bn,
    )

    def heldout_acc(model: torch.nn.Module) -> float:
        return accuracy(torch_predictor(model, art.contract, device), heldout, label="held-out accuracy")

    outcome = train(art.model, tune, art.contract, settings, heldout_acc, device, hooks)
    out = ModelArtifact(**{**art.__dict__, "model": outcome.model})
    return out, FinetuneResult(outcome.epochs_run, outcome.best_epoch, outcome.best_score, outcome.start_score,
                               outcome.history)
