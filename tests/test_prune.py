import copy

import pytest
import torch

from harden.config.prune import PruneStage
from harden.core.artifacts import ChannelScores, InputContract, LayerScores, ModelArtifact
from harden.ingest.models.registry import create_model
from harden.prune import remove as prune
from harden.prune import surgery
from harden.prune.surgery import find_classifier


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
@pytest.mark.parametrize("coupled", ["branch_zero", "remove", "gamma"])
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


@pytest.mark.parametrize("arch,flagged,expected", [
    ("preact_resnet18", {"conv1": [3], "layer3.0.conv2": [2], "layer3.0.shortcut.0": [2], "layer3.1.conv2": [6]},
     {"layer1.0.bn1": [3], "layer3.1.bn1": [2], "layer4.0.bn1": [6]}),  # post-add BNs, one shared by two producers
    ("cifar_resnet18", {"layer2.0.conv2": [9]}, {"layer2.0.bn2": [9]}),  # post-activation: the branch's own BN
], ids=["preact", "resnet"])
def test_coupled_gamma_is_anps_operation_at_the_paired_bn(arch, flagged, expected):
    """coupled: gamma sets gamma = 0 and keeps beta at the BN each flagged member is paired with, in place."""
    model = _randomize_bn(create_model(arch, 10, {"width": 16}))
    out, res = prune.run(PruneStage(coupled="gamma", round_to=1), _artifact(model), _scores(model, flagged),
                         torch.device("cpu"))
    assert res.gamma_zeroed == expected and res.removed == {} and res.params_after == res.params_before
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for bn, idxs in expected.items():
            reference.get_submodule(bn).weight[idxs] = 0
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (out.model(x) - reference(x)).abs().max().item() < 1e-5
    hook = prune.ZeroMask(res.zeroed, res.gamma_zeroed)
    with torch.no_grad():
        for p in out.model.parameters():
            p.add_(1.0)
    hook.after_step(out.model)
    bn, idxs = next(iter(expected.items()))
    assert float(out.model.get_submodule(bn).weight.detach()[idxs].abs().sum()) == 0.0
    assert float(out.model.get_submodule(bn).bias.detach()[idxs].abs().sum()) > 0.0  # beta trains on


class _ResidualNoBN(torch.nn.Module):
    """A residual pair whose second producer has no BN after it (the add feeds the head directly)."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.pool, self.linear = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(8, 10)

    def forward(self, x):
        h = self.conv0(x)
        return self.linear(self.pool(h + self.conv1(torch.relu(self.bn0(h)))).flatten(1))


def test_coupled_gamma_zeroes_the_branch_of_a_member_without_bn():
    model = _randomize_bn(_ResidualNoBN())
    out, res = prune.run(PruneStage(coupled="gamma", round_to=1), _artifact(model),
                         _scores(model, {"conv0": [1], "conv1": [2]}), torch.device("cpu"))
    assert res.gamma_zeroed == {"bn0": [1]} and res.zeroed == {"conv1": [2]}
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.bn0.weight[1] = 0
        reference.conv1.weight[2], reference.conv1.bias[2] = 0, 0
        x = torch.randn(4, 3, 32, 32)
        assert (out.model(x) - reference(x)).abs().max().item() < 1e-5


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


def _constant_net():
    """1x1 consumers and a pooled Linear: the fold is exact there (no zero-padded borders)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
    )
    _randomize_bn(net)
    with torch.no_grad():  # positive betas: ReLU(beta) is a real constant, not 0
        for bn in (net[1], net[4]):
            bn.bias.copy_(torch.rand(8) + 0.5)
    return net.eval()


def test_constant_routes_follow_the_traced_graph():
    routes = surgery.constant_routes(create_model("preact_resnet18", 10, {"width": 16}))
    assert routes["layer1.0.bn2"].consumers == ("layer1.0.conv2",) and routes["layer1.0.bn2"].relu
    assert set(routes["layer2.0.bn1"].consumers) == {"layer2.0.conv1", "layer2.0.shortcut.0"}
    assert routes["bn"].consumers == ("linear",)
    plain = surgery.constant_routes(create_model("cifar_resnet18", 10, {"width": 16}))
    assert "layer1.0.bn1" in plain and "layer1.0.bn2" not in plain  # bn2 feeds the residual add: not foldable


def test_fold_keeps_the_gamma_only_output_and_zero_does_not():
    net = _constant_net()
    flagged = {"0": [2, 5], "3": [1]}
    reference = copy.deepcopy(net)  # ANP's operation: gamma = 0, beta kept
    with torch.no_grad():
        reference[1].weight[[2, 5]] = 0
        reference[4].weight[[1]] = 0
    x = torch.randn(6, 3, 16, 16)
    outs = {}
    for mode in ("fold", "zero"):
        out, res = prune.run(PruneStage(coupled="remove", round_to=1, silence=mode), _artifact(net, 16),
                             _scores(net, flagged), torch.device("cpu"))
        assert res.max_abs_diff_vs_masked <= 1e-4 and out.model[0].out_channels == 6 and out.model[3].out_channels == 7
        with torch.no_grad():
            outs[mode] = (out.model(x) - reference(x)).abs().max().item()
        if mode == "fold":
            assert res.folded == {"1": [2, 5], "4": [1]} and res.fold_max_abs_diff < 1e-5
    assert outs["fold"] < 1e-5 < 1e-2 < outs["zero"]


def test_fold_on_3x3_consumers_is_exact_inside_and_reported():
    model = _randomize_bn(create_model("preact_resnet18", 10, {"width": 16}))
    out, res = prune.run(PruneStage(round_to=1, silence="fold"), _artifact(model),
                         _scores(model, {"layer1.0.conv1": [1, 5], "layer4.0.conv1": [7]}), torch.device("cpu"))
    assert res.max_abs_diff_vs_masked <= 1e-4
    assert res.folded == {"layer1.0.bn2": [1, 5], "layer4.0.bn2": [7]}
    assert out.model.layer1[0].conv2.bias is not None and 0 < res.fold_max_abs_diff < 1.0
