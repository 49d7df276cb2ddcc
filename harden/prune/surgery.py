"""Conv/BN pairing taken from the traced graph, never from module registration order.

In a pre-activation ResNet the BN that reads a conv's output sits after a residual add (and the next block's
``bn1`` reads the sum of several convs). Registration order pairs those wrongly; the traced graph does not.
"""

from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from harden.core.errors import ModelLoadError

# Channel-preserving, element-wise steps a conv's output may pass through before the BN that reads it.
_PASS_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_PASS_METHODS = {"add", "add_"}
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class ConvBN:
    conv: str
    bn: str | None  # the first BatchNorm2d reading this conv's output, or None (e.g. BN already folded)
    through_add: bool  # True when the BN reads a sum of this conv and others (a residual stream)


class _LeafTracer(fx.Tracer):
    """A tracer that keeps some modules whole and calls some functions opaquely: timm marks the parts of its models
    that fx cannot trace (a ViT's position-embedding resampling, ...) for exactly this."""

    def __init__(self, leaves: tuple[type, ...], functions: tuple):
        super().__init__(autowrap_functions=functions)
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _tracer(model: nn.Module) -> fx.Tracer:
    if not type(model).__module__.startswith("timm."):
        return fx.Tracer()
    from timm.models import get_notrace_functions, get_notrace_modules

    return _LeafTracer(tuple(get_notrace_modules()), tuple(get_notrace_functions()))


def trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):  # already a graph (a converted ONNX file): its operator modules hold
        return model  # control flow that a second trace cannot follow, and its graph already says what we need
    try:
        return fx.GraphModule(model, _tracer(model).trace(model))
    except Exception as exc:  # fx raises many types on dynamic control flow
        raise ModelLoadError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "harden needs a traceable forward() to pair convs with their BatchNorms"
        ) from None


def pair_convs_with_bns(model: nn.Module) -> dict[str, ConvBN]:
    """For every Conv2d, the nearest BatchNorm2d that reads its output along channel-preserving ops."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    pairs: dict[str, ConvBN] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            bn, through_add = _first_bn(node, modules)
            pairs[str(node.target)] = ConvBN(str(node.target), bn, through_add)
    return pairs


def _first_bn(start: fx.Node, modules: dict[str, nn.Module]) -> tuple[str | None, bool]:
    queue = deque((u, False) for u in start.users)
    seen: set[fx.Node] = set()
    while queue:
        node, through_add = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            return str(node.target), through_add
        is_add = (node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
            node.op == "call_method" and node.target in _PASS_METHODS
        )
        passes = is_add or (node.op == "call_module" and isinstance(modules[node.target], _PASS_MODULES))
        if passes:
            queue.extend((u, through_add or is_add) for u in node.users)
    return None, False


_RESHAPE_METHODS = {"reshape", "view", "unflatten", "chunk", "split", "tensor_split"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.chunk, torch.split, torch.unflatten, torch.tensor_split}


def reshaped_outputs(model: nn.Module) -> set[str]:
    """Linears whose output is reshaped or split right away (an attention block's qkv projection into heads): their
    output features have a structure that removing single ones would break. Convs are not listed: a conv's output
    reshaped is a flatten before the classifier, whose renumbering torch-pruning follows."""
    gm = trace(model)
    out = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Linear):
            continue
        for user in node.users:
            if ((user.op == "call_method" and user.target in _RESHAPE_METHODS)
                    or (user.op == "call_function" and user.target in _RESHAPE_FUNCTIONS)
                    or (user.op == "call_module"  # onnx2torch's Reshape and Split modules
                        and type(gm.get_submodule(user.target)).__name__.startswith(("OnnxReshape", "OnnxSplit")))):
                out.add(str(node.target))
    return out


def find_classifier(model: nn.Module) -> str:
    """Name of the module whose output is the model's output (walking back through non-module ops)."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    queue = deque(n for n in output.all_input_nodes)
    while queue:
        node = queue.popleft()
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Linear, nn.Conv2d)):
            return str(node.target)
        queue.extend(node.all_input_nodes)
    raise ModelLoadError(f"cannot find the classifier layer of {type(model).__name__} (no Linear/Conv before output)")


def feature_producers(model: nn.Module, classifier: str) -> list[str]:
    """The convs whose output channels become the classifier's input features: walk back from the classifier through
    channel-preserving ops (activations, pooling, flatten, BN) and through residual adds, to the first conv on each
    path. A residual stream gives several convs (one coupled group); a plain stack gives one."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    start = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == classifier)
    queue, seen, convs = deque(start.all_input_nodes), set(), []
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            convs.append(str(node.target))
            continue
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Linear, nn.Conv1d)):
            continue  # a different feature space: not this map's producer
        queue.extend(node.all_input_nodes)
    if not convs:
        raise ModelLoadError(f"cannot find the conv feature map feeding {classifier!r} in {type(model).__name__}")
    return sorted(convs)


# Ops through which a per-channel constant stays the same per-channel constant (ReLU is applied to the value).
_RELU_FUNCTIONS = {torch.relu, nn.functional.relu}
_CONST_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AdaptiveAvgPool2d, nn.Flatten)


@dataclass(frozen=True)
class ConstantRoute:
    """Where a BatchNorm2d's output goes when its channels become constants (gamma = 0): through an optional ReLU
    into consumers that can absorb a per-input-channel constant as a bias (convs without groups, or a Linear after
    global average pooling)."""

    bn: str
    relu: bool
    consumers: tuple[str, ...]


def constant_routes(model: nn.Module) -> dict[str, ConstantRoute]:
    """Every BatchNorm2d whose output reaches only bias-absorbing consumers (algorithms.md §0.1-4). BNs feeding a
    residual add, a non-global pooling or anything else are left out: their constant cannot be folded exactly."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    routes = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            route = _route(node, modules)
            if route is not None:
                routes[str(node.target)] = ConstantRoute(str(node.target), *route)
    return routes


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return ((node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu")
            or (node.op == "call_module" and isinstance(modules[node.target], nn.ReLU)))


def _route(bn: fx.Node, modules: dict[str, nn.Module]) -> tuple[bool, tuple[str, ...]] | None:
    relu, consumers = False, []
    queue, pooled = deque((u, False) for u in bn.users), False
    while queue:
        node, pooled = queue.popleft()
        mod = modules.get(node.target) if node.op == "call_module" else None
        if _is_relu(node, modules):
            if relu or pooled:
                return None  # keep it simple: one activation, before any pooling
            relu = True
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1 and not pooled:
            consumers.append(str(node.target))
            continue
        elif isinstance(mod, nn.Linear) and pooled:
            consumers.append(str(node.target))
            continue
        elif isinstance(mod, _CONST_PASS_MODULES) or (
                node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target in ("flatten", "view", "reshape")):
            pooled = pooled or isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1))
            if isinstance(mod, nn.AdaptiveAvgPool2d) and not pooled:
                return None
        else:
            return None
        queue.extend((u, pooled) for u in node.users)
    return (relu, tuple(consumers)) if consumers else None
