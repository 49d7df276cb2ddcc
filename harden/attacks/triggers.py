"""Trigger functions in raw pixel space: images in [0, 1], NCHW, clipped to [0, 1] after stamping (algorithms §0)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Callable, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..base import StrictModel
from ..errors import DataError
from ..registry import Registry

Trigger = Callable[[torch.Tensor], torch.Tensor]
TRIGGERS: Registry[Callable[["TriggerBase"], Trigger]] = Registry("trigger kind")


class TriggerBase(StrictModel):
    target: int = Field(ge=0, description="the attack's target label (verify only; never used to decide)")


class ArrayRef(StrictModel):
    """An array stored in an .npz file (trigger patterns and warp grids)."""

    path: Path
    key: str

    def load(self) -> np.ndarray:
        try:
            with np.load(self.path) as z:
                if self.key not in z:
                    raise DataError(f"{self.path}: no array {self.key!r} (has: {', '.join(z.files)})")
                return z[self.key]
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read trigger array {self.path}: {exc}") from None


class PatchTrigger(TriggerBase):
    kind: Literal["patch"] = "patch"
    size: int = Field(3, ge=1)
    value: float = Field(1.0, ge=0, le=1)
    position: Literal["bottom-right", "bottom-left", "top-left", "top-right"] = "bottom-right"
    margin: int = Field(1, ge=0, description="pixels between the patch and the image border")


class BlendTrigger(TriggerBase):
    kind: Literal["blend"] = "blend"
    alpha: float = Field(0.2, gt=0, le=1)
    pattern: ArrayRef  # HWC or CHW, values in [0, 1]


class WarpTrigger(TriggerBase):
    kind: Literal["warp"] = "warp"
    s: float = Field(0.5, gt=0, description="warp strength")
    grid: ArrayRef  # noise grid (1, H, W, 2) in [-1, 1]


class SineTrigger(TriggerBase):
    kind: Literal["sine"] = "sine"
    delta: float = Field(20 / 255, gt=0, le=1)
    freq: float = Field(6, gt=0)


TriggerConfig = Annotated[Union[PatchTrigger, BlendTrigger, WarpTrigger, SineTrigger], Field(discriminator="kind")]


def build_trigger(cfg: TriggerBase) -> Trigger:
    return TRIGGERS.get(cfg.kind)(cfg)


@TRIGGERS.register("patch", "BadNets: a solid square patch near a corner")
def _patch(cfg: PatchTrigger) -> Trigger:
    def apply(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s, m = cfg.size, cfg.margin
        if s + m > min(h, w):
            raise DataError(f"patch of size {s} with margin {m} does not fit a {h}x{w} image")
        r0 = h - m - s if cfg.position.startswith("bottom") else m
        c0 = w - m - s if cfg.position.endswith("right") else m
        out = x.clone()
        out[..., r0 : r0 + s, c0 : c0 + s] = cfg.value
        return out

    return apply


def _as_chw(arr: np.ndarray, x: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if t.ndim == 3 and t.shape[-1] == x.shape[1] and t.shape[0] != x.shape[1]:
        t = t.permute(2, 0, 1)
    if tuple(t.shape) != tuple(x.shape[1:]):
        raise DataError(f"{what} has shape {tuple(t.shape)}, images are {tuple(x.shape[1:])} (CHW)")
    return t.to(x.device, x.dtype)


@TRIGGERS.register("blend", "Blended: x' = (1 - alpha) x + alpha * pattern")
def _blend(cfg: BlendTrigger) -> Trigger:
    pattern = cfg.pattern.load()
    if pattern.min() < 0 or pattern.max() > 1:
        raise DataError(f"blend pattern {cfg.pattern.path} has values outside [0, 1]")

    def apply(x: torch.Tensor) -> torch.Tensor:
        p = _as_chw(pattern, x, f"blend pattern {cfg.pattern.path}")
        return ((1 - cfg.alpha) * x + cfg.alpha * p).clamp(0, 1)

    return apply


@TRIGGERS.register("warp", "WaNet: fixed smooth warp, grid = identity + s * noise_grid / H")
def _warp(cfg: WarpTrigger) -> Trigger:
    noise = torch.as_tensor(np.asarray(cfg.grid.load(), dtype=np.float32))
    if noise.ndim != 4 or noise.shape[0] != 1 or noise.shape[-1] != 2:
        raise DataError(f"warp grid {cfg.grid.path} must have shape (1, H, W, 2), got {tuple(noise.shape)}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if noise.shape[1:3] != (h, w):
            raise DataError(f"warp grid is {tuple(noise.shape[1:3])}, images are {h}x{w}")
        lin_h, lin_w = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
        yy, xx = torch.meshgrid(lin_h, lin_w, indexing="ij")
        identity = torch.stack((xx, yy), dim=-1)[None]  # x in the last axis
        grid = torch.clamp(identity + cfg.s * noise / h, -1, 1).to(x.device, x.dtype)
        return F.grid_sample(x, grid.expand(n, -1, -1, -1), align_corners=True).clamp(0, 1)

    return apply


@TRIGGERS.register("sine", "SIG: a horizontal sine added to every row and channel")
def _sine(cfg: SineTrigger) -> Trigger:
    def apply(x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        j = torch.arange(w, dtype=x.dtype, device=x.device)
        wave = cfg.delta * torch.sin(2 * math.pi * cfg.freq * j / w)
        return (x + wave).clamp(0, 1)

    return apply
