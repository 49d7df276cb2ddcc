"""Neural Cleanse (Wang et al., S&P 2019), algorithms.md §5: is there a class that a tiny patch reaches from
everywhere? Trigger-free: it needs only clean data, never the attack's trigger or target.

All K classes are inverted at once: every step stamps each class's candidate (mask, pattern) on the same clean batch,
so one forward pass serves all classes. Each class keeps its own lambda schedule, best mask and early stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.config.detect import NeuralCleanseConfig
from harden.core.artifacts import InputContract
from harden.core.progress import track
from harden.core.train import frozen_copy
from harden.detect.base import Trigger, flag_text, marker, register_detector, target_array, target_from
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.fusion import MAD_TO_SIGMA

_EPS = 1e-7


@dataclass(frozen=True)
class NeuralCleanseFinding:
    kind: ClassVar[str] = "patch"
    detector: ClassVar[str]
    norms: list[float]  # L1 norm of the best mask per class (inf where the class never reached `success`)
    anomaly: list[float]  # MAD anomaly index per class
    failed: list[int]  # classes whose inversion never reached `success`
    masks: np.ndarray  # (K, H, W) in [0, 1]
    patterns: np.ndarray  # (K, C, H, W) in [0, 1]
    target: int | None

    def trigger(self) -> Trigger:
        """The pattern inside the flagged class's mask."""
        mask = torch.from_numpy(self.masks[self.target])[None, None]

        def patch(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
            m = mask.to(x.device, x.dtype)
            return (1 - m) * x + m * pattern[None]

        return torch.from_numpy(self.patterns[self.target]), patch, (0.0, 1.0)

    def min_norm_ratio(self) -> float | None:
        finite = [n for n in self.norms if np.isfinite(n)]
        return min(finite) / float(np.median(finite)) if finite else None

    def statistic(self) -> float:
        """How many times smaller than the median the smallest trigger is (1: no class stands out)."""
        ratio = self.min_norm_ratio()
        return 1.0 / max(ratio, 1e-12) if ratio is not None else 0.0

    def class_statistics(self) -> list[float]:
        """Per class, the median norm over its own (0 where the class's inversion failed)."""
        finite = [n for n in self.norms if np.isfinite(n)]
        med = float(np.median(finite)) if finite else 0.0
        return [med / max(n, 1e-12) if np.isfinite(n) else 0.0 for n in self.norms]

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "statistic": self.statistic(), "norms": self.norms, "anomaly": self.anomaly,
                "failed": self.failed, "max_anomaly": max(self.anomaly) if self.anomaly else 0.0,
                "min_norm_ratio": self.min_norm_ratio()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"norms": np.array(self.norms), "anomaly": np.array(self.anomaly),
                "failed": np.array(self.failed, dtype=np.int64), "masks": self.masks, "patterns": self.patterns,
                "target": target_array(self.target)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> NeuralCleanseFinding:
        return cls(a["norms"].tolist(), a["anomaly"].tolist(), a["failed"].tolist(), a["masks"], a["patterns"],
                   target_from(a["target"]))

    def trigger_arrays(self) -> dict[str, np.ndarray]:
        return {"mask": self.masks[self.target], "pattern": self.patterns[self.target]}

    def plot_row(self, axes, labels: tuple[str, ...], marked: int | None) -> None:
        """Each class's best trigger (mask * pattern), with its norm and anomaly index."""
        for i, ax in enumerate(axes):
            img = (self.masks[i][None] * self.patterns[i]).transpose(1, 2, 0)
            ax.imshow(img.clip(0, 1), interpolation="nearest")
            ax.set_title(f"{labels[i][:10]}{marker(i, marked)}\nL1 {self.norms[i]:.0f}  A {self.anomaly[i]:.1f}",
                         fontsize=6)
            ax.axis("off")


@register_detector("neural_cleanse", "Neural Cleanse: the smallest patch that sends clean images to each class; "
                   "flags a class whose patch is an outlier")
class NeuralCleanse:
    config_cls = NeuralCleanseConfig
    finding_cls = NeuralCleanseFinding
    reinverts = True

    def __init__(self, cfg: NeuralCleanseConfig):
        self.cfg = cfg

    def detect(self, model: nn.Module, data: ImageSet, contract: InputContract,
               device: torch.device) -> NeuralCleanseFinding:
        norms, best_mask, best_pat = invert(model, data, contract, self.cfg, device)  # inverts a copy of the model
        anomaly = anomaly_index(norms)
        return NeuralCleanseFinding([float(v) for v in norms], [float(v) for v in anomaly],
                                    [int(i) for i in np.flatnonzero(~np.isfinite(norms))], best_mask[:, 0].numpy(),
                                    best_pat.numpy(), verdict(norms, anomaly, self.cfg))

    def reinverted(self, finding: NeuralCleanseFinding, model: nn.Module, data: ImageSet, contract: InputContract,
                   device: torch.device) -> tuple[float, bool]:
        """Invert the flagged class afresh on ``model`` (e.g. a pruning candidate): (its new mask norm, whether the
        verdict still flags it among the scan's other norms). Unlike ITASR, which replays one fixed inverted patch,
        a fresh inversion finds whatever small trigger still works, as for a blended backdoor whose tiny inverted
        patch stops working after mild pruning while the blend itself still does (trigger-free: clean data only)."""
        t = finding.target
        new, *_ = invert(model, data, contract, self.cfg, device, classes=[t], label=f"re-inversion of class {t}")
        norms = np.array(finding.norms, dtype=np.float64)
        norms[t] = new[0]
        return float(new[0]), verdict(norms, anomaly_index(norms), self.cfg) == t

    @staticmethod
    def row(summary: dict[str, Any]) -> tuple[str, str, str]:
        return "Neural Cleanse", f"max anomaly {summary['max_anomaly']:.2f}", flag_text(summary["target"])


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """|L - median| / (1.4826 * MAD) per class; only finite norms enter the median and MAD."""
    finite = norms[np.isfinite(norms)]
    if len(finite) < 3:
        return np.zeros_like(norms)
    med = np.median(finite)
    mad = MAD_TO_SIGMA * np.median(np.abs(finite - med))
    out = np.abs(norms - med) / max(mad, 1e-12)
    return np.where(np.isfinite(norms), out, 0.0)


def verdict(norms: np.ndarray, anomaly: np.ndarray, cfg: NeuralCleanseConfig) -> int | None:
    """The suspected target class, or None when the norms show no backdoor."""
    finite = np.isfinite(norms)
    if not finite.any():
        return None
    t_star = int(np.argmin(norms))
    med = float(np.median(norms[finite]))
    small = norms[t_star] <= cfg.max_norm_ratio * med and anomaly[t_star] > cfg.anomaly_threshold
    decisive = norms[t_star] <= cfg.decisive_norm_ratio * med
    return t_star if small or decisive else None


def _squash(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t) / (2 - _EPS) + 0.5


def invert(model: nn.Module, data: ImageSet, contract: InputContract, cfg: NeuralCleanseConfig,
           device: torch.device = torch.device("cpu"), classes: list[int] | None = None,
           label: str = "Neural Cleanse scan") -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Neural Cleanse's inversion for ``classes`` (default: all): per class the L1 norm of the smallest mask that
    reached ``cfg.success`` (inf where none did), that mask (n, 1, H, W) and its pattern."""
    model = frozen_copy(model).to(device)  # never touch the caller's model (its grads feed fine-tuning)
    chosen = list(range(contract.num_classes)) if classes is None else list(classes)
    k = len(chosen)
    c, h, w = contract.input_size
    gen = torch.Generator().manual_seed(cfg.seed)
    init = lambda *shape: torch.atanh((torch.rand(*shape, generator=gen) - 0.5) * (2 - _EPS) * 0.999)  # noqa: E731
    mask_raw = init(k, 1, h, w).to(device).requires_grad_(True)
    pat_raw = init(k, c, h, w).to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pat_raw], lr=cfg.lr, betas=(0.5, 0.9))
    lam = torch.zeros(k)
    up, down = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
    raised, lowered = torch.zeros(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)
    best = torch.full((k,), float("inf"))
    best_mask, best_pat = torch.zeros(k, 1, h, w), torch.zeros(k, c, h, w)
    stale = torch.zeros(k, dtype=torch.long)
    done = torch.zeros(k, dtype=torch.bool)
    targets = torch.tensor(chosen, device=device)
    rng = np.random.default_rng(cfg.seed)
    for _ in track(range(cfg.epochs), label):
        hits, seen, norms_sum = torch.zeros(k), 0, torch.zeros(k)
        for _ in range(cfg.steps_per_epoch):
            idx = np.sort(rng.choice(len(data), size=min(cfg.batch_size, len(data)), replace=False))
            x = data.batch01(idx, device)  # (B, C, H, W)
            m, p = _squash(mask_raw), _squash(pat_raw)  # (K, 1, H, W), (K, C, H, W)
            stamped = (1 - m[:, None]) * x[None] + (m * p)[:, None]  # (K, B, C, H, W)
            logits = model(contract.normalize(stamped.flatten(0, 1))).view(k, len(idx), -1)
            ce = F.cross_entropy(logits.flatten(0, 1), targets.repeat_interleave(len(idx)), reduction="none")
            l1 = m.flatten(1).sum(1)
            loss = (ce.view(k, -1).mean(1) + lam.to(device) * l1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                hits += (logits.argmax(-1) == targets[:, None]).float().sum(1).cpu()
                norms_sum += l1.detach().cpu() * len(idx)
                seen += len(idx)
        success, norm = hits / seen, norms_sum / seen
        with torch.no_grad():
            m_now, p_now = _squash(mask_raw).cpu(), _squash(pat_raw).cpu()
        better = (success >= cfg.success) & (norm < best) & ~done
        improved = better & (norm < best * 0.99)
        best_mask[better], best_pat[better] = m_now[better], p_now[better]
        best = torch.where(better, norm, best)
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        # lambda schedule per class (algorithms.md §5.4)
        ok = success >= cfg.success
        up = torch.where(ok, up + 1, torch.zeros_like(up))
        down = torch.where(ok, torch.zeros_like(down), down + 1)
        start = (lam == 0) & (up >= cfg.patience)
        lam = torch.where(start, torch.full_like(lam, cfg.init_cost), lam)
        grow = (lam > 0) & ~start & (up >= cfg.patience)
        shrink = (lam > 0) & (down >= cfg.patience)
        lam = torch.where(grow, lam * 2, torch.where(shrink, lam / 2 ** 1.5, lam))
        raised |= grow
        lowered |= shrink
        up = torch.where(grow | start, torch.zeros_like(up), up)
        down = torch.where(shrink, torch.zeros_like(down), down)
        done |= raised & lowered & (stale >= cfg.early_stop_epochs)
        if bool(done.all()):
            break
    return best.numpy().astype(np.float64), best_mask, best_pat
