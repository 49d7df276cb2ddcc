import torch

from harden.config.prune import ClpConfig
from harden.prune.scorers.clp import ClpScorer, uclc


def test_contract_every_conv_scored_finite_and_deterministic(tiny_cnn):
    a = ClpScorer(ClpConfig()).score(tiny_cnn)
    b = ClpScorer(ClpConfig()).score(tiny_cnn)
    assert set(a.layers) == {"conv1", "conv2", "conv3"}
    for name, s in a.layers.items():
        conv = tiny_cnn.get_submodule(name)
        assert s.score.shape == (conv.out_channels,) and torch.isfinite(s.score).all()
        assert torch.equal(s.score, b.layers[name].score)


def test_planted_channel_ranks_first_and_is_flagged(tiny_cnn):
    with torch.no_grad():
        tiny_cnn.conv3.weight[5] *= 8.0
    s = ClpScorer(ClpConfig(u=3.0)).score(tiny_cnn).layers["conv3"]
    assert int(s.score.argmax()) == 5 and bool(s.flag[5]) and int(s.flag.sum()) == 1


def test_uclc_matches_definition_and_includes_bn_eps(tiny_cnn):
    conv, bn = tiny_cnn.conv1, tiny_cnn.bn1
    k = 3
    m = (bn.weight[k] / torch.sqrt(bn.running_var[k] + bn.eps)).abs() * conv.weight[k].reshape(conv.in_channels, -1)
    expected = torch.linalg.svdvals(m.double())[0]
    assert torch.isclose(uclc(conv, bn)[k], expected.to(torch.float64), rtol=1e-6)
    with torch.no_grad():  # a dead channel: variance 0 must not explode the score thanks to eps
        bn.running_var[2] = 0.0
    assert torch.isfinite(uclc(conv, bn)).all()


def test_post_add_bn_is_used_for_preact_convs():
    from harden.ingest.models.registry import create_model

    model = create_model("preact_resnet18", 10, {"width": 8}).eval()
    with torch.no_grad():
        model.layer1[1].bn1.weight[3] = 50.0  # the BN after the add scales conv2 of layer1.0
    s = ClpScorer(ClpConfig()).score(model)
    assert int(s.layers["layer1.0.conv2"].raw.argmax()) == 3
