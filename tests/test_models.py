import pickle
import warnings
from pathlib import Path

import pytest
import torch

from harden.core.errors import ModelLoadError
from harden.ingest.models.loading import load_model
from harden.ingest.models.registry import ARCHITECTURES, create_model
from harden.prune.surgery import find_classifier, pair_convs_with_bns

from .conftest import TINY_CONTRACT, write_model_folder


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_every_architecture_builds_traces_and_runs(arch):
    size = 16 if arch == "tiny_cnn" else 32
    model = create_model(arch, 10, {"width": 8}).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    pairs = pair_convs_with_bns(model)
    assert pairs and all(p.bn is not None for p in pairs.values())
    assert isinstance(model.get_submodule(find_classifier(model)), torch.nn.Linear)


def test_torchvision_classifier_by_name():
    model = create_model("torchvision/resnet18", 7)
    assert find_classifier(model) == "fc" and model.fc.out_features == 7
    with pytest.raises(ModelLoadError, match="unknown torchvision classifier"):
        create_model("torchvision/resnet19", 7)


def test_preact_pairs_post_add_bns_by_graph_not_registration_order():
    pairs = pair_convs_with_bns(create_model("preact_resnet18", 10, {"width": 8}))
    assert pairs["layer1.0.conv1"].bn == "layer1.0.bn2" and not pairs["layer1.0.conv1"].through_add
    # conv2 feeds a residual add; the BN that reads it is the NEXT block's bn1 (registration order would say bn2)
    assert pairs["layer1.0.conv2"].bn == "layer1.1.bn1" and pairs["layer1.0.conv2"].through_add
    assert pairs["layer2.0.shortcut.0"].bn == "layer2.1.bn1"
    assert pairs["layer4.1.conv2"].bn == "bn"
    assert pairs["conv1"].bn == "layer1.0.bn1"


def test_unknown_architecture_lists_known():
    with pytest.raises(ModelLoadError, match="preact_resnet18"):
        create_model("resnet1000", 10)


def test_state_dict_for_another_architecture_lists_keys_and_shapes(tmp_path, tiny_cnn):
    folder = write_model_folder(tmp_path / "m", tiny_cnn, width=16)  # config says width 16, weights are width 8
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    assert "shape mismatches (16)" in str(err.value) and "bn1.weight: file (8,) vs model (16,)" in str(err.value)
    other = write_model_folder(tmp_path / "vgg", create_model("cifar_vgg11_bn", 4, {"width": 8}))
    with pytest.raises(ModelLoadError, match="missing keys .* unexpected keys"):
        load_model(other / "model.safetensors", "tiny_cnn", {"width": 8}, None, _contract())


def _contract():
    return TINY_CONTRACT


def test_weights_only_checkpoint_loads(tmp_path, tiny_cnn):
    p = tmp_path / "w.pt"
    torch.save(tiny_cnn.state_dict(), p)
    art = load_model(p, "tiny_cnn", {"width": 8}, None, _contract())
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(art.model(x), tiny_cnn(x))


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run code while being unpickled
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    p = tmp_path / "evil.pt"
    with p.open("wb") as f:
        pickle.dump({"conv1.weight": _Payload(str(marker))}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's pickle warning must not reach the user either
        with pytest.raises(ModelLoadError, match="could run code") as err:
            load_model(p, "tiny_cnn", {"width": 8}, None, _contract())
    assert not marker.exists()
    text = str(err.value)
    assert "weights_only" not in text and "False" not in text and "Re-running" not in text  # no unsafe advice
    assert "safetensors" in text and "never runs code" in text


def test_nan_weights_are_refused(tmp_path, tiny_cnn):
    tiny_cnn.conv1.weight.data[0, 0, 0, 0] = float("nan")
    folder = write_model_folder(tmp_path / "m", tiny_cnn)
    with pytest.raises(ModelLoadError, match="NaN or Inf"):
        load_model(folder)


def test_bare_weights_need_architecture_and_contract(tmp_path, tiny_cnn):
    folder = write_model_folder(tmp_path / "m", tiny_cnn)
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="set model.input .* model.architecture"):
        load_model(bare)
    assert load_model(folder / "model.safetensors").architecture == "tiny_cnn"  # its folder's config.json


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="header claims"):
        load_model(p, "tiny_cnn", {"width": 8}, None, _contract())


@pytest.mark.parametrize("fmt", ["torchscript", "pt", "pt2"])
def test_torchscript_and_export_programs_give_their_weights(tmp_path, tiny_cnn, fmt):
    x = torch.randn(2, 3, 16, 16)
    model = tiny_cnn.eval()
    path = tmp_path / f"model.{fmt}"
    if fmt == "pt2":
        torch.export.save(torch.export.export(model, (x,)), str(path))
    else:
        torch.jit.save(torch.jit.trace(model, x), str(path))
    art = load_model(path, "tiny_cnn", {"width": 8}, None, _contract())
    with torch.no_grad():
        assert torch.allclose(art.model(x), model(x), atol=1e-6)


def test_torchscript_with_a_load_hook_is_refused(tmp_path):
    class Hooked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]):
            self.w = state[0]
            self.training = state[1]

    path = tmp_path / "hooked.torchscript"
    torch.jit.save(torch.jit.script(Hooked()), str(path))
    with pytest.raises(ModelLoadError, match="__setstate__"):
        load_model(path, "tiny_cnn", {"width": 8}, None, _contract())


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])  # dynamo folds every conv's BN; legacy keeps them
def test_onnx_file_rebuilds_the_architecture_exactly(tmp_path, tiny_cnn, exporter):
    from harden.deploy.onnx import finalize, to_onnx

    from .conftest import write_model_folder

    folder = write_model_folder(tmp_path / "m", tiny_cnn)
    blob, _ = to_onnx(tiny_cnn, torch.zeros(2, 3, 16, 16), exporter)
    (folder / "model.onnx").write_bytes(finalize(blob, {}, slim=True).SerializeToString())
    art = load_model(folder / "model.onnx")  # architecture and contract from the config.json beside it
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(art.model(x), tiny_cnn.eval()(x), atol=1e-4)
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(folder / "model.onnx", "tiny_cnn", {"width": 4}, None, _contract())


def test_python_entry_point_needs_trust_code(tmp_path, tiny_cnn):
    from safetensors.torch import save_file

    marker = tmp_path / "IMPORTED"
    (tmp_path / "vendor_arch.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "from harden.ingest.models.tiny import TinyCNN\n"
        "def build(num_classes, width=8):\n"
        "    return TinyCNN(num_classes, width)\n")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_cnn.state_dict().items()}, weights)
    with pytest.raises(ModelLoadError, match="trust_code"):
        load_model(weights, "vendor_arch:build", {"width": 8}, None, _contract())
    assert not marker.exists()  # refused before importing anything
    art = load_model(weights, "vendor_arch:build", {"width": 8}, None, _contract(), trust_code=True)
    assert marker.exists() and type(art.model).__name__ == "TinyCNN"
    with pytest.raises(ModelLoadError, match="entry point 'vendor_arch:nope'"):
        load_model(weights, "vendor_arch:nope", {}, None, _contract(), trust_code=True)
