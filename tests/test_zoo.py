"""Checks against ../shared (skipped with a reason where it is absent). attack.json is ground truth, read here only
to evaluate harden's own code, never by the pipeline."""

import json

import numpy as np
import pytest
import torch

from harden.attacks.triggers import BlendTrigger, PatchTrigger, SineTrigger, WarpTrigger, build_trigger
from harden.data import load_images
from harden.evaluate import attack_metrics, onnx_predictor, torch_predictor
from harden.models.loading import load_model

from .conftest import DATA, ZOO, needs_cifar, needs_zoo

pytestmark = [needs_zoo, needs_cifar]


def _trigger(folder, attack):
    t, target = attack["trigger"], attack["target"]
    if t["kind"] == "patch":
        return PatchTrigger(target=target, size=t["size"], value=t["value"], position=t["position"])
    if t["kind"] == "blend":
        return BlendTrigger(target=target, alpha=t["alpha"], pattern={"path": folder / "trigger.npz", "key": "pattern"})
    if t["kind"] == "warp":
        return WarpTrigger(target=target, s=t["s"], grid={"path": folder / "trigger.npz", "key": "noise_grid"})
    if t["kind"] == "sig":
        return SineTrigger(target=target, delta=t["delta"], freq=t["freq"])
    raise AssertionError(t)


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "sig"])
def test_harden_triggers_reproduce_the_zoo_asr(name):
    folder = ZOO / f"preact18-{name}"
    attack = json.loads((folder / "attack.json").read_text())
    art = load_model(folder)
    test = load_images(DATA / "cifar10" / "test.npz", art.contract, "test")
    cfg = _trigger(folder, attack)
    asr, _ = attack_metrics(torch_predictor(art.model, art.contract, torch.device("cpu")), test,
                            build_trigger(cfg), cfg.target)
    assert abs(asr - attack["asr"]) <= 0.01, (asr, attack["asr"])


def test_zoo_onnx_matches_harden_architecture():
    folder = ZOO / "preact18-clean"
    art = load_model(folder)
    test = load_images(DATA / "cifar10" / "test.npz", art.contract, "test", limit=256)
    x = test.batch01(slice(0, 256))
    ours = torch_predictor(art.model, art.contract, torch.device("cpu"))(x)
    theirs = onnx_predictor(folder / "model.onnx", art.contract)(x)
    assert np.abs(ours - theirs).max() < 1e-4
