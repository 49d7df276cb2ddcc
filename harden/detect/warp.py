"""Warp inversion: is there a class that one tiny, smooth warp of the image reaches from everywhere?

Neural Cleanse (neural_cleanse.py) looks for a small *patch*. Warping triggers (WaNet) move every pixel by a fraction
of a pixel along a smooth field; no patch is small, so Neural Cleanse passes them. This is the same question asked of the warp
family: for every class at once, fit one smooth displacement field (a k x k grid of control points, bicubic-upsampled,
each displacement bounded by `max_shift` pixels) that sends the clean images to that class, then measure how often it
does. A model trained to obey a warp trigger has a class that such a warp reaches from nearly every image; a clean
model's classes are all hard to reach with a sub-pixel warp (measurements: docs/methods.md). Trigger-free: clean data
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.detect import WarpConfig
from harden.core.artifacts import InputContract
from harden.core.progress import track
from harden.core.train import frozen_copy
from harden.detect.base import Trigger, flag_text, marker, register_detector, target_array, target_from
from harden.ingest.data.sources import ImageSet


@dataclass(frozen=True)
class WarpFinding:
    kind: ClassVar[str] = "warp"
    detector: ClassVar[str]
    success: list[float]  # per class: share of the other classes' images its fitted warp sends to it
    fields: np.ndarray  # (K, 2, grid, grid) displacement of each control point in pixels (x, y)
    target: int | None  # the class whose warp succeeds most, when it reaches cfg.success
    max_shift: float  # the bound the fields were fitted under (pixels)

    def trigger(self) -> Trigger:
        """The flagged class's control points."""
        s = self.max_shift
        return torch.from_numpy(self.fields[self.target]), warp_images, (-s, s)

    def statistic(self) -> float:
        return max(self.success)

    def class_statistics(self) -> list[float]:
        return list(self.success)

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "statistic": self.statistic(), "success": self.success,
                "max_success": max(self.success)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"success": np.array(self.success), "fields": self.fields, "max_shift": np.array(self.max_shift),
                "target": target_array(self.target)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> WarpFinding:
        return cls(a["success"].tolist(), a["fields"], target_from(a["target"]), float(a["max_shift"]))

    def trigger_arrays(self) -> dict[str, np.ndarray]:
        return {"field": self.fields[self.target]}

    def plot_row(self, axes, labels: tuple[str, ...], marked: int | None) -> None:
        """Each class's displacement field (arrows, in pixels) and its success rate."""
        g = self.fields.shape[-1]
        yy, xx = np.mgrid[0:g, 0:g]
        for i, ax in enumerate(axes):
            field = self.fields[i]
            ax.quiver(xx, yy, field[0], -field[1], angles="xy", scale_units="xy", scale=self.max_shift * 1.5)
            ax.set_xlim(-1, g)
            ax.set_ylim(g, -1)
            ax.set_title(f"{labels[i][:10]}{marker(i, marked)}\nwarp {100 * self.success[i]:.0f}%", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])


@register_detector("warp", "warp inversion: one smooth sub-pixel warp per class; flags a class it reaches from "
                   "everywhere (WaNet-style triggers)")
class Warp:
    config_cls = WarpConfig
    finding_cls = WarpFinding
    reinverts = False

    def __init__(self, cfg: WarpConfig):
        self.cfg = cfg

    def detect(self, model: nn.Module, data: ImageSet, contract: InputContract, device: torch.device) -> WarpFinding:
        return warp_scan(model, data, contract, self.cfg, device)

    @staticmethod
    def row(summary: dict[str, Any]) -> tuple[str, str, str]:
        return "warp inversion", f"max success {100 * summary['max_success']:.2f}%", flag_text(summary["target"])


def warp_images(x: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Warp a batch (B, C, H, W) by one control-point field (2, g, g) in pixels, bicubic in between."""
    h, w = x.shape[-2:]
    flow = F.interpolate(field[None], size=(h, w), mode="bicubic", align_corners=True)[0]  # (2, H, W) pixels
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=x.device, dtype=x.dtype)
    ident = F.affine_grid(torch.eye(2, 3, device=x.device, dtype=x.dtype)[None], (1, 1, h, w), align_corners=True)
    grid = (ident + flow.permute(1, 2, 0)[None] * scale).clamp(-1, 1)
    return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), align_corners=True)


def warp_scan(model: nn.Module, data: ImageSet, contract: InputContract, cfg: WarpConfig,
              device: torch.device = torch.device("cpu")) -> WarpFinding:
    model = frozen_copy(model).to(device)
    k = contract.num_classes
    gen = torch.Generator().manual_seed(cfg.seed)
    raw = (0.1 * torch.randn(k, 2, cfg.grid, cfg.grid, generator=gen)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=cfg.lr)
    targets = torch.arange(k, device=device)
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.batch_size, len(data))
    for _ in track(range(cfg.steps), "warp inversion"):
        x = data.batch01(np.sort(rng.choice(len(data), size=n, replace=False)), device)
        fields = torch.tanh(raw) * cfg.max_shift
        stamped = torch.cat([warp_images(x, fields[c]) for c in range(k)])
        loss = F.cross_entropy(model(contract.normalize(stamped)), targets.repeat_interleave(n))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fields = (torch.tanh(raw) * cfg.max_shift).detach()
    success = []
    with torch.no_grad():
        for c in range(k):
            idx = np.flatnonzero(data.y != c)
            hits = 0
            for start in range(0, len(idx), 256):
                x = data.batch01(idx[start:start + 256], device)
                hits += int((model(contract.normalize(warp_images(x, fields[c]))).argmax(1) == c).sum())
            success.append(hits / max(len(idx), 1))
    best = int(np.argmax(success))
    return WarpFinding(success=[float(s) for s in success], fields=fields.cpu().numpy(),
                          target=best if success[best] >= cfg.success else None, max_shift=cfg.max_shift)
