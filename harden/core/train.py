"""The one training loop. Methods add loss terms and post-step actions through hooks, never by copying the loop."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.core.artifacts import InputContract
from harden.core.progress import track
from harden.ingest.data.sources import ImageSet


class TrainHook:
    """What a repair, a pruning mask or an attack adds to the one training loop. Every method is a no-op here:
    override what you need."""

    def start(self, model: nn.Module) -> None:
        """Once, on the model about to be trained, before its first step."""

    def extra_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor | None:
        """A term added to the batch's cross-entropy (x: raw pixels in [0, 1], augmented; logits: the model's on x),
        or None for none."""
        return None

    def after_step(self, model: nn.Module) -> None:
        """After each optimizer step (e.g. keep removed channels at zero)."""

    def state_dict(self) -> dict | None:
        """What the hook carries from epoch to epoch, saved in the loop's checkpoints (None: nothing)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned, when a run resumes."""


@dataclass
class TrainSettings:
    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    patience: int = 4
    augment: bool = True
    max_steps: int | None = None
    seed: int = 0
    freeze_bn: bool = True
    clip_grad_norm: float | None = 5.0
    max_regression: float = 0.05  # best fine-tuned score this far below the start means training diverged
    keep_last: bool = False  # return the last epoch, not the best-scoring one (when the score is not the goal)
    checkpoint: Path | None = None  # written after every epoch and resumed from when present (long red-team runs)
    channels_last: bool = False  # NHWC convolutions: about 18 % faster on this CPU (red-team training; the pipeline
    # keeps the default layout so its figures stay what they were)


@dataclass
class TrainOutcome:
    model: nn.Module
    epochs_run: int
    best_epoch: int
    best_score: float
    start_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False  # True: every fine-tuned epoch scored far below the start; the start model is returned


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per image, on a raw [0, 1] batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose parameters take no gradient: a teacher or a model under inspection that nothing trains
    and whose use never writes into the caller's .grad."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Train mode, optionally keeping BatchNorm running statistics frozen.

    Re-estimating BN statistics on a small clean set was measured to bring a pruned backdoor back (docs/methods.md),
    and small batches make the estimates noisy anyway.
    """
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(
    model: nn.Module,
    tune: ImageSet,
    contract: InputContract,
    settings: TrainSettings,
    evaluate: Callable[[nn.Module], float],
    device: torch.device,
    hooks: Sequence[TrainHook] = (),
    label: str = "fine-tune",
) -> TrainOutcome:
    """SGD + cosine on ``tune``; after each epoch ``evaluate`` (held-out score, higher is better) picks the best
    checkpoint and stops early after ``patience`` epochs without improvement. Trains a copy; returns the best one."""
    model = copy.deepcopy(model).to(device)  # never train the caller's model: "before" must stay the source
    if settings.channels_last:  # only then: converting a plain model would change the layout of odd parameters
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(tune) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    # The optimizer is created here, after any pruning, because pruning replaces parameter objects.
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    # The best checkpoint is chosen among fine-tuned epochs only: fine-tuning is also what overwrites backdoor
    # behaviour, so returning the untouched start because it scored equally would defeat the stage.
    start, best = evaluate(model), -math.inf
    start_state = copy.deepcopy(model.state_dict())
    best_state, best_epoch, stale, step = start_state, 0, 0, 0
    history: list[dict[str, float]] = []
    epoch, first = 0, 1
    for hook in hooks:
        hook.start(model)
    saved = _load_checkpoint(settings.checkpoint)
    if saved is not None:  # resume: every state that the next epoch depends on, so the result is the same
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["torch_rng"])
        for hook, hook_state in zip(hooks, saved["hooks"]):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        best, best_state, best_epoch, stale, step = saved["best"], saved["best_state"], saved["best_epoch"], \
            saved["stale"], saved["step"]
        start, start_state, history = saved["start"], saved["start_state"], saved["history"]
        epoch = saved["epoch"]
        first = settings.epochs + 1 if saved.get("finished") else epoch + 1  # stopped early: nothing left to run
    for epoch in range(first, settings.epochs + 1):
        set_train_mode(model, settings.freeze_bn)
        order = torch.randperm(len(tune), generator=gen).numpy()
        losses = []
        for b in track(range(steps_per_epoch), f"{label} epoch {epoch}/{settings.epochs}"):
            idx = np.sort(order[b * settings.batch_size:(b + 1) * settings.batch_size])
            x = tune.batch01(idx, device)
            if settings.augment:
                x = augment_batch(x, gen)
            y = torch.from_numpy(tune.y[idx]).to(device)
            inputs = contract.normalize(x)
            logits = model(inputs.contiguous(memory_format=torch.channels_last) if settings.channels_last else inputs)
            loss = F.cross_entropy(logits, y)
            for hook in hooks:
                term = hook.extra_loss(model, x, y, logits)
                if term is not None:
                    loss = loss + term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm)
            opt.step()
            sched.step()
            for hook in hooks:
                hook.after_step(model)
            losses.append(float(loss.detach()))
            step += 1
            if step >= total:
                break
        score = evaluate(model)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "heldout_acc": score})
        if score > best or settings.keep_last:
            best, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        finished = stale >= settings.patience or step >= total
        if settings.checkpoint is not None:
            _save_checkpoint(settings.checkpoint, {"finished": finished,
                "epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "hooks": [h.state_dict() for h in hooks],
                "best": best, "best_state": best_state, "best_epoch": best_epoch, "stale": stale, "step": step,
                "start": start, "start_state": start_state, "history": history})
        if finished:
            break
    diverged = best < start - settings.max_regression
    if diverged:  # never hand on a model that training broke; the caller reports it
        best_state, best_epoch, best = start_state, 0, start
    model.load_state_dict(best_state)
    if settings.channels_last:  # safetensors and ONNX export want the plain layout back
        model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    return TrainOutcome(model, epoch, best_epoch, best, start, history, diverged)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous epoch's checkpoint


def _load_checkpoint(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # our own file, but tensors only all the same
