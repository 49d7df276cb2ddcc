import copy

import pytest
import torch

from harden.artifacts import ChannelScores, InputContract, LayerScores, ModelArtifact
from harden.config import PruneStage
from harden.models import create_model
from harden.models.surgery import find_classifier
from harden.stages import prune


def _artifact(model, size=32, classes=10):
    contract = InputContract((3, size, size), (0.5,) * 3, (0.25,) * 3, tuple(str(i) for i in range(classes)))
    return ModelArtifact(model.eval(), "x", {}, contract, None, "0" * 64, find_classifier(model))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def _scores(model, flagged: dict[str, list[int]]) -> ChannelScores:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            score = torch.linspace(-1, 1, m.out_channels)
            flag = torch.zeros(m.out_channels, dtype=torch.bool)
            for i in flagged.get(name, []):
                flag[i], score[i] = True, 5.0 + i
            layers[name] = LayerScores(score, flag, score)
    return ChannelScores("test", layers)


CASES = [
    ("preact_resnet18", {"layer1.0.conv1": [1, 5], "layer3.0.conv2": [2], "layer3.1.conv2": [2],
                         "layer4.0.conv1": [7], "conv1": [3]}),
    ("cifar_resnet18", {"layer2.0.conv1": [0, 4], "layer2.0.conv2": [9], "layer2.1.conv2": [9], "conv1": [1]}),
    ("cifar_vgg11_bn", {"features.0": [2], "features.8": [5, 6, 7]}),
]


@pytest.mark.parametrize("arch,flagged", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("coupled", ["branch_zero", "remove"])
def test_pruning_equals_group_masking(arch, flagged, coupled):
    model = _randomize_bn(create_model(arch, 10, {"width": 16}))
    art = _artifact(model)
    n_params = sum(p.numel() for p in model.parameters())
    out, res = prune.run(PruneStage(coupled=coupled, round_to=1), art, _scores(model, flagged), torch.device("cpu"))
    assert res.max_abs_diff_vs_masked <= 1e-4
    assert res.params_after < res.params_before
    x = torch.randn(4, 3, 32, 32)
    assert out.model(x).shape == (4, 10)  # the classifier keeps its classes
    assert sum(p.numel() for p in model.parameters()) == n_params  # the source model is untouched


def test_physical_removal_matches_manual_group_mask_on_preact():
    """Removing residual channel 3 of stage 2 equals zeroing it in every BN and producer of that stream."""
    model = _randomize_bn(create_model("preact_resnet18", 10, {"width": 16}))
    flagged = {n: [3] for n in ("layer2.0.conv2", "layer2.1.conv2", "layer2.0.shortcut.0")}
    out, res = prune.run(PruneStage(coupled="remove", round_to=1), _artifact(model), _scores(model, flagged),
                         torch.device("cpu"))
    manual = copy.deepcopy(model)
    with torch.no_grad():
        for n in ("layer2.0.conv2", "layer2.1.conv2", "layer2.0.shortcut.0"):
            manual.get_submodule(n).weight[3] = 0
        for n in ("layer2.1.bn1", "layer3.0.bn1"):
            manual.get_submodule(n).weight[3] = 0
            manual.get_submodule(n).bias[3] = 0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(manual(x), out.model(x), atol=1e-4)
    assert out.model.layer2[0].conv2.out_channels == 31
    assert res.removed == {"layer2.1.conv2": [3]} or list(res.removed.values()) == [[3]]


def test_widths_rounded_to_multiples_of_8_with_next_most_suspect():
    model = _randomize_bn(create_model("cifar_vgg11_bn", 10, {"width": 16}))
    scores = _scores(model, {"features.8": [5, 6, 7]})  # 64 channels, 3 flagged -> remove 8
    out, res = prune.run(PruneStage(round_to=8, max_round_extra=0.125), _artifact(model), scores, torch.device("cpu"))
    assert out.model.features[8].out_channels == 56
    removed = res.removed["features.8"]
    assert {5, 6, 7} <= set(removed) and len(removed) == 8
    assert set(removed) - {5, 6, 7} == set(range(59, 64))  # linspace scores: the highest unflagged come next


def test_small_layer_rounding_silences_instead_of_halving():
    model = _randomize_bn(create_model("cifar_vgg11_bn", 10, {"width": 16}))
    scores = _scores(model, {"features.0": [2]})  # 16 channels: removing 8 for one flag would be too costly
    out, res = prune.run(PruneStage(round_to=8, max_round_extra=0.125), _artifact(model), scores, torch.device("cpu"))
    assert out.model.features[0].out_channels == 16 and "features.0" not in res.removed
    assert res.zeroed["features.0"] == [2] and res.zeroed["features.1"] == [2]
    assert float(out.model.features[1].weight[2].detach()) == 0.0


def test_zero_mask_hook_keeps_silenced_channels_at_zero(tiny_cnn):
    art = _artifact(tiny_cnn, size=16, classes=4)
    out, res = prune.run(PruneStage(round_to=8, max_round_extra=0.0), art, _scores(tiny_cnn, {"conv1": [1]}),
                         torch.device("cpu"))
    hook = prune.ZeroMask(res.zeroed)
    with torch.no_grad():
        for p in out.model.parameters():
            p.add_(1.0)  # what an optimizer step could do
    hook.after_step(out.model)
    assert float(out.model.conv1.weight[1].abs().sum()) == 0.0 and float(out.model.bn1.weight[1]) == 0.0


def test_layer_cap_limits_removal():
    model = _randomize_bn(create_model("cifar_vgg11_bn", 10, {"width": 16}))
    scores = _scores(model, {"features.8": list(range(40))})
    out, res = prune.run(PruneStage(round_to=1, max_layer_fraction=0.25), _artifact(model), scores,
                         torch.device("cpu"))
    assert out.model.features[8].out_channels == 48
