"""Checks against ../shared (skipped with a reason where it is absent). attack.json is ground truth, read here only
to evaluate harden's own code, never by the pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harden.evaluate.metrics import attack_metrics, onnx_predictor, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import load_images
from harden.ingest.models.loading import load_model
from harden.redteam.groundtruth import trigger_from_attack

from .conftest import DATA, ZOO, needs_cifar, needs_zoo

pytestmark = [needs_zoo, needs_cifar]


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "sig"])
def test_harden_triggers_reproduce_the_zoo_asr(name):
    folder = ZOO / f"preact18-{name}"
    attack = json.loads((folder / "attack.json").read_text())
    art = load_model(folder)
    test = load_images(DATA / "cifar10" / "test.npz", art.contract, "test")
    cfg = trigger_from_attack(folder, attack)
    asr, _ = attack_metrics(torch_predictor(art.model, art.contract, torch.device("cpu")), test,
                            build_trigger(cfg), cfg, art.contract.num_classes)
    assert abs(asr - attack["asr"]) <= 0.01, (asr, attack["asr"])


def test_zoo_onnx_matches_harden_architecture():
    folder = ZOO / "preact18-clean"
    art = load_model(folder)
    test = load_images(DATA / "cifar10" / "test.npz", art.contract, "test", limit=256)
    x = test.batch01(slice(0, 256))
    ours = torch_predictor(art.model, art.contract, torch.device("cpu"))(x)
    theirs = onnx_predictor(folder / "model.onnx", art.contract)(x)
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("pipeline", sorted(p.name for p in (Path(__file__).parents[1] / "pipelines").glob("*.yaml")))
def test_every_shipped_pipeline_validates(pipeline):
    from harden.config.loading import load_pipeline

    cfg = load_pipeline(Path(__file__).parents[1] / "pipelines" / pipeline)
    assert cfg.model.path.is_dir() and cfg.data.clean.path.is_file()


@pytest.mark.parametrize("name", ["badnets", "blended", "clean", "sig", "wanet"])
def test_every_zoo_model_ingests_from_its_onnx(name):
    """The vendor's model.onnx (BN folded into 11 convs, 9 post-add BNs kept) rebuilds harden's architecture."""
    folder = ZOO / f"preact18-{name}"
    from_onnx, from_weights = load_model(folder / "model.onnx"), load_model(folder)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (from_onnx.model(x) - from_weights.model(x)).abs().max() < 1e-4
