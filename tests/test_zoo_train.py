"""`harden zoo train` on tiny synthetic data: folder layout, ground truth round trip, clear errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from harden.attacks import build_trigger
from harden.attacks.groundtruth import read_attack, trigger_from_attack
from harden.cli import cli
from harden.data import load_images
from harden.evaluate import attack_metrics, torch_predictor
from harden.models.loading import load_model

from .conftest import TINY_CONTRACT, synthetic_images


@pytest.fixture
def tiny_data(tmp_path):
    x, y = synthetic_images(400, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    x, y = synthetic_images(120, seed=2)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    return tmp_path


def _train(tmp, attack, *extra):
    return CliRunner().invoke(cli, ["zoo", "train", attack, "--out", str(tmp / attack), "--arch", "tiny_cnn",
                                    "--width", "8", "--data", str(tmp / "train.npz"), "--test", str(tmp / "test.npz"),
                                    "--epochs", "2", *extra])


@pytest.mark.parametrize("attack", ["badnets", "wanet"])
def test_zoo_train_writes_the_shared_layout_and_its_asr_reproduces(tiny_data, attack):
    res = _train(tiny_data, attack)
    assert res.exit_code == 0, res.output
    folder = tiny_data / attack
    expected = {"config.json", "model.safetensors", "model.onnx", "attack.json"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert (folder / "trigger.npz").is_file() == (attack == "wanet")
    report = json.loads((folder / "attack.json").read_text())
    assert report["poisoned_images"] == 40 and report["target"] == 0
    assert report["cover_images"] == (80 if attack == "wanet" else 0)
    art = load_model(folder)  # the folder ingests like any third-party model
    trig = trigger_from_attack(folder, read_attack(folder))
    test = load_images(tiny_data / "test.npz", art.contract, "test")
    asr, _ = attack_metrics(torch_predictor(art.model, art.contract, torch.device("cpu")), test, build_trigger(trig),
                            trig, art.contract.num_classes)
    assert asr == pytest.approx(report["asr"])
    assert not list(tiny_data.glob("*.partial"))


def test_poisoned_images_are_stamped_and_relabelled(tiny_data):
    from harden.attacks import AttackParams
    from harden.attacks.recipes import resolve
    from harden.zoo import poisoned_training_set

    data = load_images(tiny_data / "train.npz", TINY_CONTRACT, "train")
    trig, poison, _ = resolve("badnets", AttackParams(), None, 0, (3, 16, 16))
    poisoned, stats = poisoned_training_set(data, trig, poison, 4, seed=0)
    changed = np.flatnonzero((poisoned.y != data.y) | (poisoned.x != data.x).any(axis=(1, 2, 3)))
    assert stats["poisoned_images"] == len(changed) == 40
    assert (poisoned.y[changed] == 0).all() and (poisoned.x[changed, 12:15, 12:15] == 255).all()


def test_zoo_train_user_mistakes_are_one_message(tiny_data):
    res = _train(tiny_data, "nonsense")
    assert res.exit_code == 2 and "unknown attack 'nonsense'" in res.output and "badnets" in res.output
    res = _train(tiny_data, "trojannn")
    assert res.exit_code == 2 and "--reference" in res.output
    (tiny_data / "p.yaml").write_text("trigger: {size: 0}\npoison: {ratio: 3}\n")
    res = _train(tiny_data, "badnets", "--params", str(tiny_data / "p.yaml"))
    assert res.exit_code == 2 and "trigger.patch.size" in res.output and "poison.ratio" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["zoo", "train", "badnets", "--out", str(tiny_data / "x"),
                                   "--data", str(tiny_data / "missing.npz")])
    assert res.exit_code == 2 and "--data: no such file" in res.output


def test_pruning_aware_attack_hides_behind_dead_decoys(tiny_data):
    from harden.attacks.pruning_aware import feature_bn
    from harden.errors import HardenError
    from harden.models import create_model

    with pytest.raises(HardenError, match="BatchNorm whose channels feed the classifier"):
        feature_bn(create_model("tiny_cnn", 4, {"width": 8}))  # its features come out of a residual add
    arch = ["--arch", "preact_resnet18", "--width", "2"]
    assert _train(tiny_data, "clean", *arch).exit_code == 0
    res = _train(tiny_data, "pruning_aware", *arch)
    assert res.exit_code == 2 and "--reference" in res.output
    res = _train(tiny_data, "pruning_aware", *arch[:2], "--width", "4", "--reference", str(tiny_data / "clean"))
    assert res.exit_code == 2 and "same --arch/--width" in res.output and "Traceback" not in res.output

    res = _train(tiny_data, "pruning_aware", *arch, "--reference", str(tiny_data / "clean"))
    assert res.exit_code == 0, res.output
    report = json.loads((tiny_data / "pruning_aware" / "attack.json").read_text())
    decoys = report["decoys"]["channels"]
    assert report["decoys"]["layer"] == "bn" and len(decoys) == round(0.3 * 16)
    art = load_model(tiny_data / "pruning_aware")
    bn = art.model.bn
    assert (bn.weight[decoys] == 0).all() and (bn.bias[decoys] == -1).all()  # kept dead through training
    live = [c for c in range(16) if c not in decoys]
    assert (bn.weight[live] != 0).all()
    # a defender profiling dormant channels on clean data finds exactly the decoys at the bottom
    from harden.attacks.pruning_aware import dormancy

    test = load_images(tiny_data / "test.npz", art.contract, "test")
    act = dormancy(art.model, "bn", test, art.contract)
    assert set(np.argsort(act, kind="stable")[:len(decoys)]) == set(decoys) and (act[decoys] == 0).all()
