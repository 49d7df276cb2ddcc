import numpy as np
import pytest

from harden.config.deploy import ExportStage
from harden.core.artifacts import ModelArtifact
from harden.core.errors import ExportParityError
from harden.ingest.data.sources import ImageSet
from harden.deploy import onnx as export

from .conftest import TINY_CONTRACT, synthetic_images

C = TINY_CONTRACT


def _art(model):
    return ModelArtifact(model, "tiny_cnn", {"width": 8}, C, None, "f" * 64, "head")


def _held():
    x, y = synthetic_images(40, 0)
    return ImageSet(x, y, "held", "0")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_parity_metadata_and_dynamic_batch(tmp_path, tiny_cnn, exporter):
    res = export.run(ExportStage(exporter=exporter, parity_images=40), _art(tiny_cnn), _held(), tmp_path,
                     {"harden.source_sha256": "f" * 64})
    assert res.exporter == exporter and res.max_abs_diff <= 1e-4 and res.top1_agreement == 1.0
    meta = export.onnx_metadata_roundtrip(res.path)
    assert meta["harden.source_sha256"] == "f" * 64 and meta["harden.mean"] == "0.5,0.5,0.5"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.path))
    for n in (1, 7):
        assert sess.run(None, {"input": np.zeros((n, 3, 16, 16), np.float32)})[0].shape == (n, 4)
    assert not list(tmp_path.glob(".model.onnx.*"))  # atomic write leaves no temp file


def test_parity_failure_fails_the_run_and_names_the_file(tmp_path, tiny_cnn, monkeypatch):
    real = export.to_onnx

    def drifted(model, example, exporter):  # export a different model than the one checked
        other = type(model)(4, 8).eval()
        return real(other, example, exporter)

    monkeypatch.setattr(export, "to_onnx", drifted)
    with pytest.raises(ExportParityError) as err:
        export.run(ExportStage(parity_images=40), _art(tiny_cnn), _held(), tmp_path, {})
    assert "model.onnx" in str(err.value) and "atol" in str(err.value)


def test_export_graph_does_not_depend_on_the_example_memory_layout(tmp_path, tiny_cnn):
    """The stage traces with held-out images (an NHWC-backed view); the source's reference is traced with a dense
    tensor. Same model, so the same ops: else the hardened file carries an extra gather and latency ratios compare
    different graphs."""
    from collections import Counter

    import onnx

    res = export.run(ExportStage(exporter="dynamo", parity_images=40), _art(tiny_cnn), _held(), tmp_path, {})
    ref = export.write_reference(tiny_cnn, C.input_size, tmp_path / "reference.onnx", exporter="dynamo")

    def op_types(path):
        return Counter(n.op_type for n in onnx.load(str(path)).graph.node)

    assert op_types(res.path) == op_types(ref)
