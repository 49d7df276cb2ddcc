"""Optional INT8 stage: onnxruntime static quantisation (QDQ, per-channel int8 weights, uint8 activations) calibrated on
the tune split, then measured again as a model of its own. Quantisation changes every activation a little, and a
pruned or fine-tuned backdoor can come back through it, so the INT8 file gets its own clean accuracy, ASR per known
trigger, agreement with the fp32 ONNX and latency ratio; the gate can check them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harden.config.deploy import Int8Config
from harden.core.artifacts import InputContract
from harden.core.errors import StageError
from harden.core.io import atomic_write_bytes
from harden.ingest.data.sources import ImageSet


@dataclass(frozen=True)
class Int8Result:
    path: Path
    sha256: str
    top1_agreement: float  # with the fp32 ONNX, on the held-out split
    max_abs_diff: float  # largest logit difference to the fp32 ONNX on the same images


class _Reader:
    """onnxruntime CalibrationDataReader over normalised tune images."""

    def __init__(self, data: ImageSet, contract: InputContract, n: int, input_name: str, batch: int = 64):
        self.batches = [contract.normalize(data.batch01(slice(s, min(s + batch, n)))).numpy().astype(np.float32)
                        for s in range(0, min(n, len(data)), batch)]
        self.name, self.i = input_name, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize(cfg: Int8Config, fp32: Path, tune: ImageSet, heldout: ImageSet, contract: InputContract,
             out_dir: Path) -> Int8Result:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(tune, contract, cfg.calibration_images, name)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    work = out_dir / ".int8-work"
    work.mkdir(exist_ok=True)
    pre, tmp = work / "pre.onnx", work / "int8.onnx"
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantiser logs every tensor at INFO
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            keep = _end_nodes(pre) if cfg.fp32_ends else []
            quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=keep)
        data = tmp.read_bytes()
    except Exception as exc:  # the quantiser raises many types for graphs it cannot handle
        raise StageError("int8", f"onnxruntime could not quantise {fp32.name}: {type(exc).__name__}: {exc}") from None
    finally:
        for p in work.glob("*"):
            p.unlink()
        work.rmdir()
    path = out_dir / "model.int8.onnx"
    atomic_write_bytes(path, data)
    agree, diff = _agreement(fp32, path, heldout, contract)
    if cfg.max_top1_disagreement is not None and 1 - agree > cfg.max_top1_disagreement:
        raise StageError("int8", f"INT8 and fp32 disagree on {100 * (1 - agree):.2f}% of held-out images "
                                 f"(> int8.max_top1_disagreement {100 * cfg.max_top1_disagreement:.2f}%)")
    return Int8Result(path, hashlib.sha256(data).hexdigest(), agree, diff)


def _end_nodes(path: Path) -> list[str]:
    """Names of the convs reading the graph input and of the Conv/Gemm/MatMul that produces the output (walking back
    through shape and bias ops)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inputs = {i.name for i in graph.input}
    producer = {out: node for node in graph.node for out in node.output}
    keep = [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    for out in graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type not in ("Conv", "Gemm", "MatMul"):
            node = producer.get(node.input[0]) if node.op_type in ("Add", "Reshape", "Flatten", "Identity",
                                                                   "Squeeze") else None
        if node is not None:
            keep.append(node.name)
    return keep


def _agreement(fp32: Path, int8: Path, data: ImageSet, contract: InputContract) -> tuple[float, float]:
    import onnxruntime as ort

    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    name = a.get_inputs()[0].name
    same, worst = 0, 0.0
    for s in range(0, len(data), 256):
        x = contract.normalize(data.batch01(slice(s, s + 256))).numpy().astype(np.float32)
        la, lb = a.run(None, {name: x})[0], b.run(None, {name: x})[0]
        same += int((la.argmax(1) == lb.argmax(1)).sum())
        worst = max(worst, float(np.abs(la - lb).max()))
    return same / max(len(data), 1), worst
