"""Export to ONNX, check, slim, stamp metadata, and prove parity with the torch model (fails the run past atol)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from harden.config.deploy import ExportStage
from harden.core.artifacts import ExportResult, ModelArtifact
from harden.core.errors import ExportParityError, StageError
from harden.core.io import atomic_write_bytes
from harden.ingest.data.sources import ImageSet


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor) -> bytes:

    arg = next(iter(inspect.signature(model.forward).parameters))  # dynamic_shapes is keyed by forward()'s arg name
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model, (x,), dynamo=True, external_data=False, verbose=False, optimize=True,
            input_names=["input"], output_names=["logits"],
            dynamic_shapes={arg: {0: torch.export.Dim("batch", min=1, max=4096)}},
        )
    return prog.model_proto.SerializeToString()


def _export_legacy(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def to_onnx(model: torch.nn.Module, example: torch.Tensor, exporter: str) -> tuple[bytes, str]:
    """Serialized ONNX with a dynamic batch axis, input 'input', output 'logits'; returns (bytes, exporter used)."""
    model = copy.deepcopy(model).cpu().eval()
    # The tracer specialises the graph to the example's memory layout: an NHWC-backed batch (ImageSet.batch01 is a
    # permuted view) adds an as_strided gather (Range, Gather, ...) before the classifier. ONNX inputs are dense NCHW.
    example = example.contiguous()
    errors = []
    for name, fn in (("dynamo", _export_dynamo), ("legacy", _export_legacy)):
        if exporter not in ("auto", name):
            continue
        try:
            return fn(model, example), name
        except Exception as exc:  # exporter failures come in many types; fall back and report all
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    raise StageError("export", "ONNX export failed: " + " | ".join(errors))


def finalize(blob: bytes, metadata: dict[str, str], slim: bool):
    import onnx

    proto = onnx.load_from_string(blob)
    if slim:
        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            proto = onnxslim.slim(proto)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def write_reference(model: torch.nn.Module, input_size: tuple[int, ...], path: Path, exporter: str = "auto",
                    slim: bool = True) -> Path:
    """The model exported exactly as the hardened one is (exporter, slimming), without metadata or parity: the
    reference side of a latency comparison."""
    blob, _ = to_onnx(model, torch.zeros(2, *input_size), exporter)
    atomic_write_bytes(path, finalize(blob, {}, slim).SerializeToString())
    return path


def parity(path: Path, model: torch.nn.Module, batches: list[torch.Tensor], atol: float, min_agree: float) -> tuple[float, float]:
    """Max |torch - ORT| and top-1 agreement over the batches; raises ExportParityError listing every failure."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.cpu().eval()
    worst, agree, total, failures = 0.0, 0, 0, []
    for i, x in enumerate(batches):
        with torch.inference_mode():
            ref = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        if got.shape != ref.shape:
            failures.append(f"batch {i}: logits shape {got.shape} != torch {ref.shape}")
            continue
        worst = max(worst, float(np.abs(ref - got).max()))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += len(x)
    rate = agree / max(total, 1)
    if worst > atol:
        failures.append(f"logits: max |diff| {worst:.2e} > atol {atol:.0e}")
    if rate < min_agree:
        failures.append(f"top-1 agreement {rate:.4f} < {min_agree}")
    if failures:
        raise ExportParityError(path, failures)
    return worst, rate


def run(cfg: ExportStage, art: ModelArtifact, heldout: ImageSet, out_dir: Path, metadata: dict[str, str]) -> ExportResult:

    c = art.contract
    n = min(cfg.parity_images, len(heldout))
    real = c.normalize(heldout.batch01(slice(0, n)))
    noise = torch.randn(8, *c.input_size, generator=torch.Generator().manual_seed(0))
    blob, used = to_onnx(art.model, real[:2], cfg.exporter)
    proto = finalize(blob, {**metadata, **c.as_metadata(), "harden.exporter": used}, cfg.slim)
    data = proto.SerializeToString()
    path = out_dir / "model.onnx"
    atomic_write_bytes(path, data)
    batches = [real[i:i + 64] for i in range(0, n, 64)] + [real[:1], noise]  # batch 1 too: the axis is dynamic
    worst, agree = parity(path, art.model, batches, cfg.atol, cfg.min_top1_agreement)
    return ExportResult(
        path=path, sha256=hashlib.sha256(data).hexdigest(), max_abs_diff=worst, top1_agreement=agree, exporter=used,
        nodes=len(proto.graph.node), op_types=tuple(sorted({nd.op_type for nd in proto.graph.node})),
    )


def onnx_metadata_roundtrip(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
