"""RunContext: everything a stage may use besides its own config, passed in explicitly (never global)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .lineage import Tracker


@dataclass
class RunContext:
    device: torch.device
    seed: int
    out_dir: Path
    tracker: Tracker


def resolve_device(name: str) -> torch.device:
    from .errors import HardenError

    if name == "cuda" and not torch.cuda.is_available():
        raise HardenError("device: cuda was requested but no CUDA device is available; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
