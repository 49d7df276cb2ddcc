"""`harden zoo train` on tiny synthetic data: folder layout, ground truth round trip, clear errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks.redzoo import judge, measure
from harden.cli import cli
from harden.evaluate.metrics import attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import load_images
from harden.ingest.models.loading import load_model
from harden.redteam.groundtruth import read_attack, trigger_from_attack
from harden.redteam.recipes import AttackParams, resolve

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


@pytest.mark.parametrize("attack", ["badnets", "wanet", "input_aware"])
def test_zoo_train_writes_the_shared_layout_and_its_asr_reproduces(tiny_data, attack):
    res = _train(tiny_data, attack)
    assert res.exit_code == 0, res.output
    folder = tiny_data / attack
    expected = {"config.json", "model.safetensors", "model.onnx", "attack.json"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert (folder / "trigger.npz").is_file() == (attack != "badnets")
    assert not list(tiny_data.glob(f"{attack}.*.ckpt"))  # the epoch checkpoint goes once the folder is in place
    report = json.loads((folder / "attack.json").read_text())
    assert report["target"] == 0
    if attack == "input_aware":  # poisoned on the fly: 10 % of each batch backdoored, 10 % cross-trigger
        assert report["poisoned_images"] == 0 and report["generated_backdoor_images"] == 2 * (13 + 13 + 13 + 2)
        assert report["generated_cross_images"] == report["generated_backdoor_images"]
        _, _, start = resolve("input_aware", AttackParams(), None, 0, (3, 16, 16))
        with np.load(folder / "trigger.npz") as shipped:  # the trained generator ships, not its seeded start
            assert start.keys() == set(shipped.files)
            assert any(not np.array_equal(start[k], shipped[k]) for k in start)
    else:
        assert report["poisoned_images"] == 40
        assert report["cover_images"] == (80 if attack == "wanet" else 0)
    art = load_model(folder)  # the folder ingests like any third-party model
    trig = trigger_from_attack(folder, read_attack(folder))
    test = load_images(tiny_data / "test.npz", art.contract, "test")
    asr, _ = attack_metrics(torch_predictor(art.model, art.contract, torch.device("cpu")), test, build_trigger(trig),
                            trig, art.contract.num_classes)
    assert asr == pytest.approx(report["asr"])
    assert not list(tiny_data.glob("*.partial"))
    # the red-zoo benchmark re-measures the same figures from the folder alone
    again = measure(folder, tiny_data / "test.npz")
    assert again["asr"] == pytest.approx(report["asr"]) and again["clean_acc"] == pytest.approx(report["clean_acc"])


def test_redzoo_bar_per_attack_and_against_the_clean_model():
    rows = [{"attack": "clean", "clean_acc": 0.85, "asr": None},
            {"attack": "badnets", "clean_acc": 0.83, "asr": 0.95},
            {"attack": "wanet", "clean_acc": 0.81, "asr": 0.99},  # 4 points below the clean model
            {"attack": "sig", "clean_acc": 0.84, "asr": 0.85},  # clean-label: 80 % bar
            {"attack": "blended", "clean_acc": 0.84, "asr": 0.85}]
    judge(rows)
    assert [r["meets_bar"] for r in rows] == [None, True, False, True, False]
    assert rows[2]["acc_drop_vs_clean"] == pytest.approx(0.04)


def test_poisoned_images_are_stamped_and_relabelled(tiny_data):
    from harden.redteam.zoo import poisoned_training_set

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
    from harden.core.errors import HardenError
    from harden.ingest.models.registry import create_model
    from harden.redteam.pruning_aware import feature_bn

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
    from harden.redteam.pruning_aware import dormancy

    test = load_images(tiny_data / "test.npz", art.contract, "test")
    act = dormancy(art.model, "bn", test, art.contract)
    assert set(np.argsort(act, kind="stable")[:len(decoys)]) == set(decoys) and (act[decoys] == 0).all()
