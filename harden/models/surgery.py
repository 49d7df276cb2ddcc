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

from ..errors import ModelLoadError

# Channel-preserving, element-wise steps a conv's output may pass through before the BN that reads it.
_PASS_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_PASS_METHODS = {"add", "add_"}
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class ConvBN:
    conv: str
    bn: str | None  # the first BatchNorm2d reading this conv's output, or None (e.g. BN already folded)
    through_add: bool  # True when the BN reads a sum of this conv and others (a residual stream)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
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
