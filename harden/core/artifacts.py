"""Typed hand-offs between stages. Direction convention, stated once: a HIGHER channel score means MORE suspect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


@dataclass(frozen=True)
class InputContract:
    """What the model expects: raw pixels / pixel_scale, then (x - mean) / std, NCHW, and its class names."""

    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    pixel_scale: float = 255.0

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map raw images in [0, 1] (N, C, H, W) to model input."""
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        return (x01 - mean) / std

    def as_metadata(self) -> dict[str, str]:
        return {
            "harden.input_size": ",".join(map(str, self.input_size)),
            "harden.mean": ",".join(f"{v:.6g}" for v in self.mean),
            "harden.std": ",".join(f"{v:.6g}" for v in self.std),
            "harden.pixel_scale": f"{self.pixel_scale:g}",
            "harden.layout": "NCHW",
            "harden.labels": "\n".join(self.labels),
        }


@dataclass
class ModelArtifact:
    """A model in memory plus where it came from. Stages replace ``model`` with a new object, never mutate the source."""

    model: nn.Module
    architecture: str
    model_args: dict[str, Any]
    contract: InputContract
    source_path: Path
    source_sha256: str
    classifier: str  # module name of the final classifier; never pruned so the classes survive


@dataclass(frozen=True)
class LayerScores:
    """One conv's per-output-channel suspicion and the scorer's own flag decision."""

    score: torch.Tensor  # float [C_out], higher = more suspect
    flag: torch.Tensor  # bool [C_out]
    raw: torch.Tensor  # the method's native statistic (e.g. UCLC) for reports


@dataclass(frozen=True)
class ChannelScores:
    """Scores of every scored conv, keyed by module name (the §0.1 score contract)."""

    method: str
    layers: dict[str, LayerScores]
    thresholds: tuple[float, ...] | None = None  # the accuracy guard's candidates when not the registered scorer's

    def num_flagged(self) -> int:
        return int(sum(int(s.flag.sum()) for s in self.layers.values()))

    def num_channels(self) -> int:
        return int(sum(s.flag.numel() for s in self.layers.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "direction": "higher is more suspect",
            "layers": {
                name: {"score": s.score.tolist(), "flag": s.flag.tolist(), "raw": s.raw.tolist()}
                for name, s in self.layers.items()
            },
        }


@dataclass(frozen=True)
class PruneResult:
    removed: dict[str, list[int]]  # group root conv -> original channel indices physically removed
    zeroed: dict[str, list[int]]  # conv name -> channels zeroed in place (coupled branches, rounding remainders)
    history: list[Any]  # torch-pruning DG.pruning_history(); replayable on the original model
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_abs_diff_vs_masked: float
    folded: dict[str, list[int]] = field(default_factory=dict)  # BN -> channels whose constant went into consumers
    fold_max_abs_diff: float | None = None  # folded model vs the gamma-only (ANP-style) model: border effects
    gamma_zeroed: dict[str, list[int]] = field(default_factory=dict)  # BN -> channels with gamma 0, beta kept in place
    kept_whole: dict[str, str] = field(default_factory=dict)  # group root -> why its channels cannot be pruned


@dataclass(frozen=True)
class FinetuneResult:
    epochs_run: int
    best_epoch: int
    best_heldout_acc: float
    heldout_acc_before: float
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    max_abs_diff: float
    top1_agreement: float
    exporter: str
    nodes: int
    op_types: tuple[str, ...]


@dataclass(frozen=True)
class VerifyReport:
    clean_acc_before: float
    clean_acc_after: float
    asr_before: dict[str, float]
    asr_after: dict[str, float]
    robust_acc_after: dict[str, float]
    evaluated_after_with: str  # "onnxruntime" or "torch"
    test_images: int
