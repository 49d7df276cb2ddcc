import copy

import pytest
import torch

from harden.config.deploy import ExportStage
from harden.core.artifacts import ModelArtifact
from harden.ingest.data.sources import ImageSet
from harden.ingest.models.registry import create_model
from harden.repair import polarizer
from harden.deploy import onnx as export

from .conftest import TINY_CONTRACT, synthetic_images


def _art(model):
    return ModelArtifact(model.eval(), "tiny_cnn", {"width": 8}, TINY_CONTRACT, None, "f" * 64, "head")


def test_default_site_is_the_full_feature_path_before_the_last_stage():
    assert polarizer.default_site(create_model("preact_resnet18", 10, {"width": 8}), "linear") == "layer4"
    assert polarizer.default_site(create_model("tiny_cnn", 4, {"width": 8}), "head") == "conv2"


def test_inserted_polarizer_starts_near_identity_and_folds_exactly(tiny_cnn):
    x = torch.randn(8, 3, 16, 16)
    model = copy.deepcopy(tiny_cnn).eval()
    names = set(model.state_dict())
    with torch.no_grad():
        ref = model(x)
    assert polarizer.insert(model, "conv2", x[:1]) == 8
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-3)  # BN with default statistics: identity up to eps
        site = model.conv2.polarizer
        site.conv.weight.add_(0.05 * torch.randn_like(site.conv.weight))
        site.bn.running_mean.uniform_(-0.5, 0.5)
        site.bn.running_var.uniform_(0.5, 2.0)
        site.bn.weight.uniform_(0.5, 1.5)
        site.bn.bias.uniform_(-0.3, 0.3)
        polarized = model(x)
    polarizer.fold(model, "conv2")
    with torch.no_grad():
        assert (model(x) - polarized).abs().max() < 1e-5
    assert set(model.state_dict()) == names | {"conv2.polarizer.weight", "conv2.polarizer.bias"}


def test_polarized_sequential_runs_the_polarizer_once():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)))
    x = torch.randn(2, 3, 5, 5)
    polarizer.insert(model, "1", x)
    with torch.no_grad():
        model[1].polarizer.conv.weight.mul_(2.0)
        expected = model[1][1](torch.relu(model[1].polarizer(model[0](x))))
        assert torch.allclose(model(x), expected)


def test_unknown_site_is_a_clear_error(tiny_cnn):
    with pytest.raises(polarizer.StageError, match="stages.polarize.at: no module 'conv9'"):
        polarizer.insert(copy.deepcopy(tiny_cnn), "conv9", torch.zeros(1, 3, 16, 16))


def test_run_trains_only_the_polarizer_and_exports_without_new_op_types(tmp_path, trained_tiny):
    x, y = synthetic_images(160, seed=3)
    tune, held = ImageSet(x[:128], y[:128], "tune", "0"), ImageSet(x[128:], y[128:], "held", "1")
    dev = torch.device("cpu")
    art = _art(trained_tiny)
    calls = []

    def evaluate(model):
        calls.append(1)
        with torch.no_grad():
            return float((model(TINY_CONTRACT.normalize(held.batch01(slice(None), dev))).argmax(1)
                          == torch.from_numpy(held.y)).float().mean())

    out, res = polarizer.run(polarizer.PolarizeConfig(enabled=True, epochs=2, batch_size=32), art, tune, held, dev,
                             0, evaluate)
    assert res.at == "conv2" and res.channels == 8 and res.epochs_run == 2 and len(res.history) == 2
    before, after = art.model.state_dict(), out.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # the backbone is frozen (and the source model untouched)
    assert not torch.equal(after["conv2.polarizer.weight"][:, :, 0, 0], torch.eye(8))

    held_export = ImageSet(x[:40], y[:40], "held", "0")
    plain = export.run(ExportStage(parity_images=40), art, held_export, tmp_path / "plain", {})
    pol = export.run(ExportStage(parity_images=40), out, held_export, tmp_path / "pol", {})
    assert pol.max_abs_diff <= 1e-4
    import onnx

    ops = {p: {n.op_type for n in onnx.load(str(r.path)).graph.node} for p, r in (("plain", plain), ("pol", pol))}
    assert ops["pol"] <= ops["plain"]
