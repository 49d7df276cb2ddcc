"""Grating scan: is there a class that one faint, *specific* grating reaches from everywhere?

Neither a small patch (Neural Cleanse) nor a sub-pixel warp expresses a periodic full-image trigger such as SIG's
sinusoid, and a strong enough grating sends most images of these small CIFAR models to a texture class ("frog",
"deer") whether or not the model is backdoored: how far a grating reaches is no evidence. What differs is how
*specific* the response is. A backdoor answers one learnt pattern; a natural texture bias answers a broad family. So
the scan lays a grid of grey gratings over direction and frequency at one faint amplitude, measures for every class the
best grating's success (the share of other classes' images it sends there) and the best success of the gratings far
from that one (in direction or frequency), and flags the class where the peak beats the far gratings by `min_gap`.
A grid, not random sampling: random draws of about as many gratings can miss a narrow peak. Trigger-free: clean
images and the model only. Where the defaults come from: docs/methods.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from harden.config.detect import GratingConfig
from harden.core.artifacts import InputContract
from harden.core.progress import track
from harden.core.train import frozen_copy
from harden.detect.base import Trigger, flag_text, marker, register_detector, target_array, target_from
from harden.ingest.data.sources import ImageSet


@dataclass(frozen=True)
class GratingFinding:
    kind: ClassVar[str] = "grating"
    detector: ClassVar[str]
    success: list[float]  # per class: the best grating's share of the other classes' images sent to the class
    far_success: list[float]  # per class: the best share among gratings far from that peak
    peaks: np.ndarray  # (K, 3): direction (degrees), frequency (cycles per width), phase (radians) of each peak
    amplitude: float
    target: int | None  # the class with the largest gap between its peak and the far gratings, when >= min_gap
    size: tuple[int, int, int]  # C, H, W of the images the gratings are added to

    def pattern(self, cls: int) -> torch.Tensor:
        """The class's peak grating as an additive (C, H, W) pattern in raw pixels."""
        angle, freq, phase = (float(v) for v in self.peaks[cls])
        return gratings(torch.tensor([angle]), torch.tensor([freq]), torch.tensor([phase]), self.size[1:],
                        self.amplitude)[0].expand(self.size[0], -1, -1)

    def trigger(self) -> Trigger:
        """The flagged class's peak grating, added to the image; its range is the grating's amplitude."""
        a = self.amplitude
        return self.pattern(self.target), _add, (-a, a)

    def gaps(self) -> list[float]:
        return [a - b for a, b in zip(self.success, self.far_success)]

    def statistic(self) -> float:
        return max(self.gaps())

    def class_statistics(self) -> list[float]:
        return self.gaps()

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "statistic": self.statistic(), "success": self.success,
                "far_success": self.far_success, "max_gap": self.statistic(),
                "peaks": {"direction_deg": self.peaks[:, 0].tolist(), "cycles": self.peaks[:, 1].tolist()}}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"success": np.array(self.success), "far_success": np.array(self.far_success), "peaks": self.peaks,
                "amplitude": np.array(self.amplitude), "target": target_array(self.target),
                "size": np.array(self.size)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> GratingFinding:
        return cls(a["success"].tolist(), a["far_success"].tolist(), a["peaks"], float(a["amplitude"]),
                   target_from(a["target"]), tuple(int(v) for v in a["size"]))

    def trigger_arrays(self) -> dict[str, np.ndarray]:
        return {"grating": self.pattern(self.target).numpy()}

    def plot_row(self, axes, labels: tuple[str, ...], marked: int | None) -> None:
        """Each class's peak grating and its success against the far gratings'."""
        for i, ax in enumerate(axes):
            img = 0.5 + self.pattern(i).numpy().transpose(1, 2, 0) / (2 * self.amplitude)
            ax.imshow(img.clip(0, 1), interpolation="nearest")
            ax.set_title(f"{labels[i][:10]}{marker(i, marked)}\ngrating {100 * self.success[i]:.0f}/"
                         f"{100 * self.far_success[i]:.0f}%", fontsize=6)
            ax.axis("off")


@register_detector("grating", "grating scan: faint gratings over direction and frequency; flags a class one "
                   "specific grating reaches far better than the others (SIG-style periodic triggers)")
class Grating:
    config_cls = GratingConfig
    finding_cls = GratingFinding
    reinverts = False

    def __init__(self, cfg: GratingConfig):
        self.cfg = cfg

    def detect(self, model: nn.Module, data: ImageSet, contract: InputContract,
               device: torch.device) -> GratingFinding:
        return grating_scan(model, data, contract, self.cfg, device)

    @staticmethod
    def row(summary: dict[str, Any]) -> tuple[str, str, str]:
        return "grating scan", f"max gap {summary['max_gap']:.2f}", flag_text(summary["target"])


def _add(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    return (x + pattern[None]).clamp(0, 1)


def sine_waves(theta: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Unit waves (N, H, W): sin(2 pi f (x cos theta + y sin theta) / W + phase), theta in radians, f in cycles per
    image width. The one formula behind the scan's grid and GratingUnlearn's random draws."""
    h, w = size
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    along = torch.cos(theta)[:, None, None] * cols + torch.sin(theta)[:, None, None] * rows
    return torch.sin(2 * math.pi * freq[:, None, None] * along / w + phase[:, None, None])


def gratings(angle_deg: torch.Tensor, freq: torch.Tensor, phase: torch.Tensor, size: tuple[int, int],
             amplitude: float) -> torch.Tensor:
    """Grey gratings (N, 1, H, W) of peak ``amplitude``, direction in degrees."""
    return amplitude * sine_waves(angle_deg * math.pi / 180, freq, phase, size)[:, None]


def _grid(cfg: GratingConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    angles = torch.arange(cfg.directions).float() * 180 / cfg.directions
    freqs = torch.arange(1.0, cfg.max_freq + 1e-6, cfg.freq_step)
    a, f = torch.meshgrid(angles, freqs, indexing="ij")
    phase = torch.rand(a.numel(), generator=gen) * 2 * math.pi  # a trained trigger's phase is unknown
    return a.flatten(), f.flatten(), phase


def far_from(angles: np.ndarray, freqs: np.ndarray, peak: int, cfg: GratingConfig) -> np.ndarray:
    """Gratings at least `far_angle` degrees (directions wrap at 180) or `far_freq` cycles from grating ``peak``."""
    d = np.abs(angles - angles[peak])
    return (np.minimum(d, 180 - d) > cfg.far_angle) | (np.abs(freqs - freqs[peak]) > cfg.far_freq)


def grating_scan(model: nn.Module, data: ImageSet, contract: InputContract, cfg: GratingConfig,
                 device: torch.device = torch.device("cpu")) -> GratingFinding:
    model = frozen_copy(model).to(device)
    k = contract.num_classes
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(data))[:cfg.images])
    x, y = data.batch01(idx, device), torch.from_numpy(data.y[idx]).to(device)
    angles, freqs, phases = _grid(cfg, gen)
    bank = gratings(angles, freqs, phases, tuple(x.shape[-2:]), cfg.amplitude).to(device)
    others = torch.stack([(y != c).sum() for c in range(k)]).clamp_min(1).float()  # (K,)
    per = max(1, cfg.batch_size // len(x))
    success = torch.zeros(len(bank), k)
    with torch.no_grad():
        for start in track(range(0, len(bank), per), "grating scan"):
            g = bank[start:start + per]
            pred = model(contract.normalize((x[None] + g[:, None]).clamp(0, 1).flatten(0, 1))).argmax(1)
            hit = torch.nn.functional.one_hot(pred.view(len(g), len(x)), k) * (y[None, :, None] != torch.arange(
                k, device=device))  # (G, B, K): sent to class c from another class
            success[start:start + len(g)] = (hit.sum(1) / others).cpu()
    s = success.numpy()
    a, f = angles.numpy(), freqs.numpy()
    best = s.argmax(0)
    peak = s[best, np.arange(k)]
    far = np.array([s[far_from(a, f, int(best[c]), cfg), c].max(initial=0.0) for c in range(k)])
    gap = peak - far
    target = int(np.argmax(gap)) if gap.max() >= cfg.min_gap else None
    peaks = np.stack([a[best], f[best], phases.numpy()[best]], 1)
    return GratingFinding(success=[float(v) for v in peak], far_success=[float(v) for v in far], peaks=peaks,
                          amplitude=cfg.amplitude, target=target, size=contract.input_size)
