"""RunContext: everything a stage may use besides its own config and the run state, passed in explicitly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harden.core.errors import HardenError
from harden.core.io import atomic_write_bytes
from harden.core.resume import StageCache
from harden.lineage.tracker import Tracker


@dataclass
class RunContext:
    device: torch.device
    seed: int
    out_dir: Path
    tracker: Tracker
    cache: StageCache  # stage outputs keyed by their inputs; read back only by a resumed run

    def write_json(self, name: str, obj: Any, artifact_folder: str | None = None) -> Path:
        """An output file of the run folder, written atomically and (with ``artifact_folder``) logged to MLflow."""
        path = self.out_dir / name
        atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())
        if artifact_folder is not None:
            self.tracker.log_file(path, artifact_folder)
        return path

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Per-epoch loss and held-out accuracy of a training stage, as MLflow metric steps."""
        for row in history:
            self.tracker.log_metrics({"loss": row["loss"], "heldout_acc": row["heldout_acc"]}, step=int(row["epoch"]))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HardenError("device: cuda was requested but no CUDA device is available; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
