"""Models harden does not name: timm architectures by name, and ONNX graphs of any architecture (issue 26)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper
from safetensors.torch import save_file

from harden.core.errors import ModelLoadError
from harden.deploy.onnx import finalize, to_onnx
from harden.ingest.models.loading import ONNX_GRAPH, load_model
from harden.ingest.models.registry import create_model

from .conftest import REPO, TINY_CLASSES, synthetic_images

PRETRAINED = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _hub_config(size: int, architecture: str | None = None) -> dict:
    """A config.json as timm's push_to_hub writes it (plus label names)."""
    cfg = {"num_classes": len(TINY_CLASSES), "num_features": 0, "global_pool": "avg", "label_names": TINY_CLASSES,
           "pretrained_cfg": {**PRETRAINED, "input_size": [3, size, size], "classifier": "head.fc"}}
    if architecture:
        cfg["architecture"] = architecture
    return cfg


class VendorNet(nn.Module):
    """An architecture harden has never heard of: convs with BN and GELU, a LayerNorm'd MLP head."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.GELU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(self.norm(f + self.mlp(f)))


def _vendor_onnx(folder: Path, size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = VendorNet().eval()
    blob, _ = to_onnx(model, torch.zeros(2, 3, size, size), "legacy")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(finalize(blob, {}, slim=False).SerializeToString())
    (folder / "config.json").write_text(json.dumps(_hub_config(size)))  # no architecture named
    return model


def _harden(tmp_path: Path, model: str, stages: str) -> dict:
    """`harden run` on synthetic data with the model folder ``model`` and the YAML ``stages`` block; the report."""
    for name, n, seed in (("clean", 200, 1), ("test", 120, 2)):
        x, y = synthetic_images(n, seed=seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    (tmp_path / "p.yaml").write_text(
        f"name: vendor\nseed: 0\ndevice: cpu\nmodel: {{path: {model}}}\n"
        "data: {clean: {path: clean.npz, heldout_fraction: 0.25}, test: {path: test.npz}}\n"
        f"stages:\n{stages}  finetune: {{epochs: 1, batch_size: 32, max_steps: 2}}\n"
        "  export: {atol: 1.0e-4, latency: false}\ntracking: {enabled: false}\n")
    r = subprocess.run([sys.executable, "-m", "harden.cli", "run", "p.yaml", "--out", "out"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_a_timm_hub_folder_is_read_as_it_is_and_built_offline(tmp_path):
    torch.manual_seed(0)
    model = create_model("timm/test_convnext", 4).eval()
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(_hub_config(32, "test_convnext")))  # timm's bare name
    art = load_model(folder)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(art.model(x), model(x))
    assert art.architecture == "test_convnext" and art.classifier == "head.fc"
    assert art.contract.input_size == (3, 32, 32)


def test_timm_names_fail_clearly():
    with pytest.raises(ModelLoadError, match="unknown timm architecture 'not_a_net'"):
        create_model("timm/not_a_net", 4)
    with pytest.raises(ModelLoadError, match="timm/<name>"):
        create_model("not_a_net", 4)


def test_an_onnx_graph_of_an_unnamed_architecture_is_converted_and_trainable(tmp_path):
    model = _vendor_onnx(tmp_path / "v")
    art = load_model(tmp_path / "v")
    assert art.architecture == ONNX_GRAPH and art.classifier
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert (art.model(x) - model(x)).abs().max() <= 1e-4
    # every weight of the file trains (the converter keeps some as buffers; they are promoted)
    assert sum(p.numel() for p in art.model.parameters()) >= sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("features.1") and
        not n.startswith("features.4"))  # the BNs were folded into their convs by the exporter


def test_a_fixed_batch_graph_is_refused_with_what_to_do(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "f"
    folder.mkdir()
    torch.onnx.export(VendorNet().eval(), (torch.zeros(1, 3, 16, 16),), str(folder / "model.onnx"), dynamo=False)
    (folder / "config.json").write_text(json.dumps(_hub_config(16)))
    with pytest.raises(ModelLoadError, match="fixed batch size of 1.*dynamic batch axis"):
        load_model(folder)


def test_an_operator_the_converter_does_not_know_is_refused(tmp_path):
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, 16, 16])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 4])
    node = helper.make_node("VendorMagic", ["input"], ["logits"], domain="com.vendor")
    proto = helper.make_model(helper.make_graph([node], "g", [inp], [out]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.vendor", 1)])
    folder = tmp_path / "u"
    folder.mkdir()
    onnx.save(proto, str(folder / "model.onnx"))
    (folder / "config.json").write_text(json.dumps(_hub_config(16)))
    with pytest.raises(ModelLoadError, match="operator"):
        load_model(folder)


def test_an_unnamed_onnx_graph_goes_through_the_whole_pipeline_and_comes_out_smaller(tmp_path):
    _vendor_onnx(tmp_path / "v")
    report = _harden(tmp_path, "v", "  score: {methods: {clp: {u: 0.5}}}\n"
                     "  prune: {round_to: 1, select: {policy: flags}}\n")
    assert report["source"]["architecture"] == ONNX_GRAPH
    assert report["prune"]["removed"] > 0 and report["params"]["after"] < report["params"]["before"]
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    exported = onnx.load(str(tmp_path / "out" / "model.onnx"))
    n_weights = sum(int(np.prod(i.dims)) for i in exported.graph.initializer)
    assert n_weights < report["params"]["before"]


def test_a_timm_vit_loses_mlp_units_and_keeps_its_layernorm_stream_whole(tmp_path):
    torch.manual_seed(0)
    args = {"img_size": 16, "patch_size": 4}
    model = create_model("timm/test_vit", 4, args).eval()
    folder = tmp_path / "vit"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**_hub_config(16, "test_vit"), "model_args": args}))
    report = _harden(tmp_path, "vit", "  scan: {enabled: false}\n  score: {methods: {clp: {u: 0.5}}}\n"
                     "  prune: {round_to: 1, select: {policy: flags}}\n")
    # the MLPs' hidden units are scored (CLP on linear rows) and removed physically
    removed = json.loads((tmp_path / "out" / "pruning.json").read_text())["removed"]
    assert removed and all(".mlp.fc1" in root for root in removed), removed
    assert report["params"]["after"] < report["params"]["before"]
    kept = json.loads((tmp_path / "out" / "pruning.json").read_text())["kept_whole"]
    assert report["prune"]["groups_kept_whole"] == len(kept) >= 1
    assert any("normalises across channels" in why for why in kept.values()), kept  # the residual stream
    assert all("is reshaped" in kept[f"blocks.{i}.attn.qkv"] for i in range(len(model.blocks))), kept  # heads
    assert report["onnx"]["max_abs_diff"] <= 1e-4
