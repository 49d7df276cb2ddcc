"""Fixtures: tiny_cnn (a registered architecture) in the zoo folder layout, with synthetic 16x16 data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import harden.ingest.models  # noqa: F401  (registers architectures)
from harden.core.artifacts import InputContract
from harden.ingest.models.registry import create_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HARDEN_SHARED", REPO.parent / "shared"))
ZOO = Path(os.environ.get("HARDEN_ZOO", SHARED / "zoo"))
DATA = Path(os.environ.get("HARDEN_DATA", SHARED / "data"))

needs_zoo = pytest.mark.skipif(not (ZOO / "preact18-badnets").is_dir(),
                               reason=f"shared zoo not found at {ZOO} (set HARDEN_ZOO)")
needs_cifar = pytest.mark.skipif(not (DATA / "cifar10" / "test.npz").is_file(),
                                 reason=f"CIFAR-10 not found under {DATA} (set HARDEN_DATA)")

TINY_CLASSES = ["a", "b", "c", "d"]
TINY_CONTRACT = InputContract((3, 16, 16), (0.5,) * 3, (0.25,) * 3, tuple(TINY_CLASSES))


def synthetic_images(n: int, seed: int, size: int = 16, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy data: each class brightens a different colour channel / quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 110, size=(n, size, size, 3)).astype(np.int64)
    half = size // 2
    for i, c in enumerate(y):
        x[i, (c // 2) * half:(c // 2 + 1) * half, (c % 2) * half:(c % 2 + 1) * half, c % 3] += 120
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def write_model_folder(folder: Path, model: torch.nn.Module, arch: str = "tiny_cnn", width: int = 8,
                       size: int = 16, labels: list[str] = TINY_CLASSES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    cfg = {"architecture": arch, "model_args": {"width": width}, "num_classes": len(labels), "label_names": labels,
           "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 4, {"width": 8})
    with torch.no_grad():  # non-trivial BN statistics so pairing and pruning bugs change outputs
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def tiny_workspace(tmp_path: Path, tiny_cnn: torch.nn.Module) -> Path:
    """A model folder, clean/test npz files and a pipeline YAML, all small enough to run in seconds."""
    write_model_folder(tmp_path / "model", tiny_cnn)
    x, y = synthetic_images(200, seed=1)
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    x, y = synthetic_images(120, seed=2)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    (tmp_path / "pipeline.yaml").write_text(SMOKE_YAML)
    return tmp_path


SMOKE_YAML = """
name: smoke
seed: 0
device: cpu
model:
  path: model
data:
  clean: {path: clean.npz, heldout_fraction: 0.25}
  test: {path: test.npz}
stages:
  score: {methods: {clp: {u: 1.0}}}
  prune: {round_to: 8, max_round_extra: 0.5, select: {policy: flags}}
  finetune: {epochs: 2, batch_size: 32, lr: 0.01}
  export: {atol: 1.0e-4}
  verify:
    triggers:
      patch: {kind: patch, target: 0, size: 3}
tracking: {experiment: smoke}
"""


@pytest.fixture(scope="session")
def trained_tiny() -> torch.nn.Module:
    """tiny_cnn trained to >90% on the synthetic task, so pruning has accuracy to lose."""
    from harden.core.train import TrainSettings, train
    from harden.ingest.data.sources import ImageSet

    torch.manual_seed(0)
    x, y = synthetic_images(256, 0)
    out = train(create_model("tiny_cnn", 4, {"width": 8}), ImageSet(x, y, "t", "0"), TINY_CONTRACT,
                TrainSettings(epochs=3, lr=0.05, batch_size=32, freeze_bn=False), lambda m: 0.0, torch.device("cpu"))
    return out.model.eval()


def write_smoke_workspace(ws: Path) -> Path:
    """A tiny_cnn model folder, clean/test npz files and SMOKE_YAML in ``ws`` (for runs shared by a test module)."""
    torch.manual_seed(0)
    write_model_folder(ws / "model", create_model("tiny_cnn", 4, {"width": 8}).eval())
    for name, n, seed in (("clean", 200, 1), ("test", 120, 2)):
        x, y = synthetic_images(n, seed)
        np.savez(ws / f"{name}.npz", x=x, y=y)
    (ws / "pipeline.yaml").write_text(SMOKE_YAML)
    return ws


def backdoored_tiny_model():
    """tiny_cnn trained on synthetic images with 15 % poisoned by a white 3-pixel patch to class 0:
    (model, 200 held-out images, the trigger)."""
    from harden.config.evaluate import PatchTrigger
    from harden.core.train import TrainSettings, train
    from harden.evaluate.metrics import accuracy, torch_predictor
    from harden.ingest.data.sources import ImageSet
    from harden.redteam.recipes import PoisonConfig
    from harden.redteam.zoo import poisoned_training_set

    data = ImageSet(*synthetic_images(800, seed=7), "train", "0")
    trig = PatchTrigger(target=0, size=3, value=1.0)
    poisoned, _ = poisoned_training_set(data, trig, PoisonConfig(ratio=0.15), 4, seed=0)
    held = ImageSet(*synthetic_images(200, seed=8), "held", "1")
    torch.manual_seed(0)
    settings = TrainSettings(epochs=12, lr=0.05, batch_size=64, patience=99, freeze_bn=False, clip_grad_norm=None,
                             max_regression=1.0)
    model = train(create_model("tiny_cnn", 4, {"width": 8}), poisoned, TINY_CONTRACT, settings,
                  lambda m: accuracy(torch_predictor(m, TINY_CONTRACT, torch.device("cpu")), held),
                  torch.device("cpu")).model.eval()
    return model, held, trig
