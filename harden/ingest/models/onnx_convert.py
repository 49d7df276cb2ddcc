"""Any ONNX graph as an editable torch module: for a vendor's file of an architecture harden does not name.

onnx2torch turns each ONNX node into a torch module of an fx.GraphModule (the graph stays data: no code from the file
runs, only onnx2torch's own operator modules). onnxslim folds the graph first, because exporters share one
initializer between equal tensors through Identity nodes, which onnx2torch cannot read as weights. Weights that the
converter keeps as buffers (a MatMul's matrix, a ViT's position embedding) become parameters so that the fine-tune
can train them. The converted module must reproduce the file's logits in onnxruntime, or the ingest is refused: the
same rule as the named-architecture path (onnx_import.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harden.core.errors import ModelLoadError

MAX_ONNX_BYTES = 2 << 30
# Float initializers with at least this many values are weights; smaller ones are constants of the computation
# (GELU's 0.5, a LayerNorm's epsilon, a scale of sqrt(d)) that weight decay must not move.
MIN_WEIGHT_NUMEL = 8


def read_onnx(path: Path):
    """The ModelProto at ``path``, refusing files over the size limit and files that are not ONNX."""
    import onnx

    if path.stat().st_size > MAX_ONNX_BYTES:
        raise ModelLoadError(f"{path}: larger than {MAX_ONNX_BYTES >> 30} GiB; refused")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends for files that are not ONNX
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def _fixed_batch(proto) -> int | None:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _promote_weights(module: nn.Module) -> None:
    """Float buffers holding weights become parameters (in place)."""
    for owner in list(module.modules()):
        for name, buf in list(owner._buffers.items()):
            if buf is None or not buf.is_floating_point() or buf.numel() < MIN_WEIGHT_NUMEL:
                continue
            if isinstance(owner, nn.modules.batchnorm._BatchNorm):  # running statistics stay statistics
                continue
            del owner._buffers[name]
            owner.register_parameter(name, nn.Parameter(buf.detach().clone()))


def convert_onnx(path: Path, input_size: tuple[int, ...], atol: float = 1e-4) -> nn.Module:
    """The ONNX file at ``path`` as a torch module that reproduces its logits to ``atol``.

    Raises:
        ModelLoadError: unreadable file, a fixed batch size, an operator the converter does not know, or logits that
            differ from onnxruntime's.
    """
    import onnxslim
    from onnx2torch import convert

    proto = read_onnx(path)
    batch = _fixed_batch(proto)
    if batch is not None and batch != 0:
        raise ModelLoadError(f"{path}: the graph's input has a fixed batch size of {batch}; harden trains and "
                             "evaluates in batches. Export it with a dynamic batch axis (torch.onnx.export(..., "
                             "dynamic_axes={'input': {0: 'batch'}, ...}) or dynamic_shapes)")
    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises what its passes raise on graphs it cannot fold
        raise ModelLoadError(f"{path}: the graph could not be folded for conversion ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    try:
        module = convert(slim)
    except NotImplementedError as exc:  # onnx2torch: "Converter is not implemented (OperationDescription(...))"
        raise ModelLoadError(f"{path}: the graph uses an operator the ONNX-to-torch converter does not support "
                             f"({str(exc)[:300]}). Name the architecture instead (model.architecture), or export the "
                             "model without that operator") from None
    except Exception as exc:  # any other converter failure is the file's, not the user's pipeline's
        raise ModelLoadError(f"{path}: cannot convert the ONNX graph to torch ({type(exc).__name__}: "
                             f"{str(exc)[:300]})") from None
    _promote_weights(module)
    module.eval()
    check_parity(module, path, input_size, atol)
    return module


def check_parity(model: nn.Module, path: Path, input_size: tuple[int, ...], atol: float,
                 what: str = "the module converted from it", hint: str = "refused") -> None:
    """Refuse a module whose logits differ from the ONNX file's in onnxruntime by more than ``atol``."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4, *input_size)).astype(np.float32)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime's own errors: the file's input does not take this contract
        raise ModelLoadError(f"{path}: onnxruntime cannot run the file on a batch of {tuple(x.shape)} "
                             f"({type(exc).__name__}: {str(exc)[:200]}); check model.input.size") from None
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(ref - got).max()) if ref.shape == got.shape else float("inf")
    if not diff <= atol:
        raise ModelLoadError(f"{path}: {what} differs from the ONNX model by {diff:.2e} (> {atol:.0e}); {hint}")
