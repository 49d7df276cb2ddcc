"""Crash safety: stage outputs cached in the run folder under a hash of everything they depend on, so
`harden run --resume` after a crash or kill -9 recomputes only what did not finish. Every run writes the cache;
only a resumed run reads it. A changed input (model, data, settings, seed) changes the key, so nothing stale is
reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harden.core.artifacts import ChannelScores, LayerScores
from harden.core.io import atomic_write_bytes, write_npz


class StageCache:
    def __init__(self, out_dir: Path, read: bool):
        self.root = out_dir / ".stages"
        self.read = read
        self.hits: list[str] = []

    @staticmethod
    def key(*parts: Any) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _path(self, stage: str, key: str, ext: str) -> Path:
        return self.root / f"{stage}-{key}.{ext}"

    def load_arrays(self, stage: str, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(stage, key, "npz")
        if not self.read or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        self.hits.append(stage)
        return out

    def save_arrays(self, stage: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        write_npz(self._path(stage, key, "npz"), **arrays)

    def load_json(self, name: str) -> Any:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if self.read and path.is_file() else None

    def save_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.root / f"{name}.json", json.dumps(obj).encode())


def scores_to_arrays(scores: ChannelScores) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"__meta__": np.array(json.dumps({
        "method": scores.method, "thresholds": list(scores.thresholds) if scores.thresholds else None,
        "layers": list(scores.layers)}))}
    for i, s in enumerate(scores.layers.values()):
        arrays[f"score{i}"], arrays[f"flag{i}"], arrays[f"raw{i}"] = (
            s.score.numpy(), s.flag.numpy(), s.raw.numpy())
    return arrays


def scores_from_arrays(arrays: dict[str, np.ndarray]) -> ChannelScores:
    meta = json.loads(str(arrays["__meta__"]))
    layers = {name: LayerScores(torch.from_numpy(arrays[f"score{i}"]), torch.from_numpy(arrays[f"flag{i}"]),
                                torch.from_numpy(arrays[f"raw{i}"]))
              for i, name in enumerate(meta["layers"])}
    thresholds = tuple(meta["thresholds"]) if meta["thresholds"] is not None else None
    return ChannelScores(meta["method"], layers, thresholds)


def state_to_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    device = next(model.parameters()).device
    model.load_state_dict({k: torch.from_numpy(v).to(device) for k, v in arrays.items()})
