"""ANP scorer: the perturbation hooks are exact, masks stay in [0, 1], BN-free convs work, results are seeded."""

import numpy as np
import torch
import torch.nn as nn

from harden.config.prune import AnpConfig
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.anp import AnpScorer, _sites

from .conftest import TINY_CONTRACT, synthetic_images


def _data(n=64):
    x, y = synthetic_images(n, seed=3)
    return ImageSet(x, y, "tune", "0")


def _hooked(model):
    sites, conv_site = _sites(model)
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(s.hook) for n, s in sites.items()]
    return sites, conv_site, handles


def test_unperturbed_sites_are_the_identity_and_perturbation_scales_channels(tiny_cnn):
    x = torch.randn(4, 3, 16, 16)
    ref = tiny_cnn(x)
    sites, conv_site, handles = _hooked(tiny_cnn)
    assert torch.allclose(tiny_cnn(x), ref, atol=1e-6)
    site_name = conv_site["conv1"]
    site = sites[site_name]
    site.perturb = True
    with torch.no_grad():
        site.d_scale[2] = -1.0  # (m + delta) = 0 on channel 2: same as zeroing that BN's gamma
    got = tiny_cnn(x)
    for h in handles:
        h.remove()
    bn = dict(tiny_cnn.named_modules())[site_name]
    with torch.no_grad():
        bn.weight[2] = 0.0
    assert torch.allclose(got, tiny_cnn(x), atol=1e-5)


def test_anp_scores_are_bounded_seeded_and_cover_every_conv(tiny_cnn):
    cfg = AnpConfig(iterations=5, batch_size=16)
    a = AnpScorer(cfg).score(_copy(tiny_cnn), _data(), TINY_CONTRACT)
    b = AnpScorer(cfg).score(_copy(tiny_cnn), _data(), TINY_CONTRACT)
    convs = {n for n, m in tiny_cnn.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(a.layers) == convs and a.method == "anp"
    for name, s in a.layers.items():
        assert torch.equal(s.score, b.layers[name].score)
        assert float(s.raw.min()) >= 0 and float(s.raw.max()) <= 1
        assert torch.allclose(s.score, 1 - s.raw) and torch.equal(s.flag, s.raw <= cfg.tau)
    assert any(float(s.raw.min()) < 1 for s in a.layers.values()), "the masks must move"


def test_anp_works_on_convs_without_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    scores = AnpScorer(AnpConfig(iterations=3, batch_size=8)).score(model, _data(), TINY_CONTRACT)
    assert set(scores.layers) == {"0", "2"} and all(s.score.shape == (8,) for s in scores.layers.values())


def _copy(m):
    import copy

    return copy.deepcopy(m)


def test_anp_is_registered_with_its_own_threshold_units():
    from harden.config.prune import SCORERS

    info = SCORERS.get("anp")
    assert info.needs_data and all(0 < t < 1 for t in info.thresholds)
    assert np.all(np.diff(info.thresholds) < 0)
