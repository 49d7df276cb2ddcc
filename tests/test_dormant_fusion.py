"""Dormant-activation scorer, score fusion and the top-fraction policy on tiny models."""

import pytest
import torch

from harden.config.prune import DormantConfig, FusionConfig
from harden.core.artifacts import ChannelScores, LayerScores
from harden.core.errors import StageError
from harden.ingest.data.sources import ImageSet
from harden.ingest.models.registry import create_model
from harden.prune.scorers.dormant import DormantScorer
from harden.prune.scorers.fusion import fuse, standardise
from harden.prune.select import top_fraction
from harden.prune.surgery import feature_producers, find_classifier

from .conftest import TINY_CONTRACT, synthetic_images


def _data(n=64):
    x, y = synthetic_images(n, seed=3)
    return ImageSet(x, y, "tune", "0")


def test_dormant_ranks_a_silenced_channel_most_dormant(tiny_cnn):
    convs = feature_producers(tiny_cnn, find_classifier(tiny_cnn))
    assert convs == ["conv2", "conv3"]  # the residual stream feeding the head
    with torch.no_grad():  # channel 3 can never fire: both BN outputs on it are large negative constants
        for bn in (tiny_cnn.bn2, tiny_cnn.bn3):
            bn.weight[3] = 0.0
            bn.bias[3] = -5.0
    scores = DormantScorer(DormantConfig(fraction=0.2)).score(tiny_cnn, _data(), TINY_CONTRACT)
    assert set(scores.layers) == set(convs)
    layer = scores.layers[convs[0]]
    assert float(layer.raw[3]) == 0.0 and float(layer.score[3]) == 1.0 and bool(layer.flag[3])
    assert int(layer.flag.sum()) == int(0.2 * len(layer.flag))  # 16 channels: the 3 most dormant
    assert float(layer.score.min()) == 0.0


def test_dormant_named_layers_and_a_clear_error_for_a_wrong_name(tiny_cnn):
    bn_names = [n for n, m in tiny_cnn.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    scores = DormantScorer(DormantConfig(layers=bn_names[:1])).score(tiny_cnn, _data(), TINY_CONTRACT)
    assert len(scores.layers) >= 1
    with pytest.raises(StageError, match="'nope' is not a Conv2d or BatchNorm2d.*bn1"):
        DormantScorer(DormantConfig(layers=["nope"])).score(tiny_cnn, _data(), TINY_CONTRACT)


def _scores(method, values, flags):
    return ChannelScores(method, {"c": LayerScores(torch.tensor(values), torch.tensor(flags), torch.tensor(values))})


def test_fusion_standardises_weights_and_unions_flags():
    a = _scores("clp", [0.0, 1.0, 2.0, 3.0, 100.0], [False, False, False, False, True])
    b = _scores("anp", [0.0, 0.0, 0.0, 0.9, 0.0], [False, False, False, True, False])
    fused = fuse({"clp": a, "anp": b}, FusionConfig(method="rank"))
    assert fused.layers["c"].flag.tolist() == [False, False, False, True, True]
    assert fused.thresholds and fused.method.startswith("fused:rank")
    only_b = fuse({"clp": a, "anp": b}, FusionConfig(method="rank", weights={"clp": 0.0}))
    assert int(torch.argmax(only_b.layers["c"].score)) == 3
    z = standardise(torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0]), "zscore")  # MAD 0: falls back to the std
    assert torch.isfinite(z).all() and float(z[-1]) > 1


def test_top_fraction_flags_the_global_top_share():
    s = ChannelScores("clp", {"a": LayerScores(torch.arange(10.0), torch.zeros(10, dtype=torch.bool), torch.zeros(10)),
                              "b": LayerScores(torch.arange(10.0) + 5, torch.zeros(10, dtype=torch.bool),
                                               torch.zeros(10))})
    sel = top_fraction(s, 0.1)
    assert sel.scores.num_flagged() == 2 and sel.scores.layers["b"].flag[-2:].all()


def test_fused_pipeline_config_runs_two_scorers(tiny_cnn):
    from harden.config.prune import ScoreStage
    from harden.core.artifacts import ModelArtifact
    from harden.stages import score

    art = ModelArtifact(tiny_cnn, "tiny_cnn", {}, TINY_CONTRACT, None, "", find_classifier(tiny_cnn))
    cfg = ScoreStage(methods={"clp": {}, "dormant": {}}, fusion={"method": "zscore"})
    out = score.run(cfg, art, _data())
    assert set(out.per_method) == {"clp", "dormant"} and out.combined.method.startswith("fused:zscore")
    assert set(out.seconds) == {"clp", "dormant"}
    _ = create_model  # registered architectures imported for the fixtures


def test_anp_scores_are_not_blown_up_where_anp_found_nothing():
    from harden.prune.scorers.fusion import standardise

    quiet = torch.tensor([0.0] * 30 + [0.01, 0.02, 0.04])  # masks 0.96-1.0: nothing there
    assert standardise(quiet, "zscore").max() > 3  # a plain robust z-score calls it an outlier
    assert standardise(quiet, "zscore", 0.1).max() < 1  # with ANP's floor it is not
    real = torch.tensor([0.0] * 30 + [0.9])
    assert standardise(real, "zscore", 0.1).max() > 3  # a channel ANP really masked stays an outlier
