"""Rebuild the named architecture from an ONNX file's weights (the ONNX graph is data, never code).

Exporters fold a BatchNorm into the conv before it and keep the others (a pre-activation ResNet keeps its post-add
BNs). So the convs, BNs and linears of the ONNX graph are matched to the torch model's in execution order; a conv
that arrives with a bias the torch conv lacks had its BN folded in, and that BN is set to the identity carrying the
bias (what CLP and ANP see is unchanged: the folded kernel already holds gamma/sigma). The rebuilt model must then
reproduce the ONNX model's logits in onnxruntime, or it is refused: a wrong match cannot slip through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harden.core.errors import ModelLoadError
from harden.ingest.models.onnx_convert import check_parity, read_onnx
from harden.prune.surgery import pair_convs_with_bns, trace


def _order(model: nn.Module, kind: type) -> list[str]:
    gm = trace(model)
    modules = dict(gm.named_modules())
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], kind)]


def load_onnx_weights(model: nn.Module, path: Path, input_size: tuple[int, ...], atol: float = 1e-4) -> None:
    from onnx import numpy_helper

    proto = read_onnx(path)
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nodes = {"Conv": [], "BatchNormalization": [], "Gemm": []}
    for node in proto.graph.node:
        if node.op_type in nodes:
            nodes[node.op_type].append([init.get(name) for name in node.input[1:]])
    convs, linears = _order(model, nn.Conv2d), _order(model, nn.Linear)
    if len(nodes["Conv"]) != len(convs) or len(nodes["Gemm"]) != len(linears):
        raise ModelLoadError(f"{path}: {len(nodes['Conv'])} Conv / {len(nodes['Gemm'])} Gemm nodes, but the "
                             f"architecture has {len(convs)} convs / {len(linears)} linears; check model.architecture "
                             "and model_args")
    try:
        _copy(model, path, nodes, convs, linears, pair_convs_with_bns(model))
    except (TypeError, RuntimeError, ValueError, AttributeError) as exc:  # weights held outside initializers, ...
        raise ModelLoadError(f"{path}: cannot map the ONNX graph's weights onto the architecture "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    check_parity(model.eval(), path, input_size, atol, "the architecture rebuilt from its weights",
                 "the graph does not match model.architecture (leave model.architecture out to convert the graph "
                 "itself)")


def _copy(model: nn.Module, path: Path, nodes: dict, convs: list[str], linears: list[str], pairs: dict) -> None:
    folded: set[str] = set()
    with torch.no_grad():
        for name, params in zip(convs, nodes["Conv"]):
            conv = model.get_submodule(name)
            w, b = params[0], params[1] if len(params) > 1 else None
            if w is None or tuple(w.shape) != tuple(conv.weight.shape):
                raise ModelLoadError(f"{path}: the conv matched to {name} has weight shape "
                                     f"{None if w is None else tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            if b is not None and conv.bias is None:
                pair = pairs.get(name)
                if pair is None or pair.bn is None or pair.through_add:
                    raise ModelLoadError(f"{path}: the conv matched to {name} has a bias but {name} has none and "
                                         "no BatchNorm of its own to carry it")
                bn = model.get_submodule(pair.bn)
                bn.weight.fill_(1.0), bn.bias.copy_(torch.from_numpy(np.array(b))), bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                folded.add(pair.bn)
            elif b is not None:
                conv.bias.copy_(torch.from_numpy(np.array(b)))
        kept_bns = [n for n in _order(model, nn.BatchNorm2d) if n not in folded]
        if len(kept_bns) != len(nodes["BatchNormalization"]):
            raise ModelLoadError(f"{path}: {len(nodes['BatchNormalization'])} BatchNormalization nodes, but "
                                 f"{len(kept_bns)} BNs of the architecture are not folded into a conv")
        for name, (g, b, mean, var) in zip(kept_bns, nodes["BatchNormalization"]):
            bn = model.get_submodule(name)
            for t, v in ((bn.weight, g), (bn.bias, b), (bn.running_mean, mean), (bn.running_var, var)):
                t.copy_(torch.from_numpy(np.array(v)))
        for name, params in zip(linears, nodes["Gemm"]):
            lin = model.get_submodule(name)
            w = params[0]
            if w is not None and tuple(w.shape) == tuple(lin.weight.shape[::-1]) != tuple(lin.weight.shape):
                w = w.T  # Gemm with transB = 0
            if w is None or tuple(w.shape) != tuple(lin.weight.shape) or params[1] is None:
                raise ModelLoadError(f"{path}: the Gemm matched to {name} does not hold a {tuple(lin.weight.shape)} "
                                     "weight and a bias")
            lin.weight.copy_(torch.from_numpy(np.array(w)))
            lin.bias.copy_(torch.from_numpy(np.array(params[1])))
