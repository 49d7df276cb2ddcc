"""The pruning-aware attack of the Fine-Pruning paper (Liu, Dolan-Gavitt & Garg, RAID 2018, §"pruning-aware").

The attacker starts from a trained clean model, takes the channels feeding the classifier that clean data leaves
most dormant, and kills them (BN gamma 0, beta -1: the ReLU after it outputs exactly 0, the paper's "decreased
bias"). Training on the poisoned set then has to put the backdoor into the channels clean inputs use. The dead
channels stay in the shipped model as decoys: a defender who prunes dormant channels removes them first, at no
cost, and the backdoor survives until pruning cuts into the clean task.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harden.core.artifacts import InputContract
from harden.core.errors import HardenError
from harden.core.train import TrainHook
from harden.ingest.data.sources import ImageSet
from harden.prune.scorers.dormant import channel_means
from harden.prune.surgery import find_classifier, trace

# Ops that keep channels apart between the last BatchNorm and the classifier (activation, pooling, flattening).
_PASS_MODULES = (nn.ReLU, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                 nn.Dropout, nn.Identity)
_PASS_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d,
                   F.adaptive_max_pool2d, F.dropout}


def feature_bn(model: nn.Module) -> str:
    """The BatchNorm whose channels reach the classifier through activation and pooling only (PreAct-ResNet's final
    ``bn``, a VGG's last BN). The decoys are made dead there."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    classifier = find_classifier(model)
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == classifier)
    while True:
        inputs = node.all_input_nodes
        if len(inputs) != 1:
            break
        node = inputs[0]
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            bn = modules[node.target]
            if bn.num_features == modules[classifier].in_features:
                return str(node.target)
            break
        passes = (node.op == "call_module" and isinstance(modules[node.target], _PASS_MODULES)) or (
            node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
            node.op == "call_method" and node.target in ("relu", "flatten", "view", "reshape"))
        if not passes:
            break
    raise HardenError(f"the pruning-aware attack needs a BatchNorm whose channels feed the classifier "
                      f"{classifier!r} through activation and pooling only (e.g. preact_resnet18); "
                      f"{type(model).__name__} has none")


def dormancy(model: nn.Module, bn_name: str, data: ImageSet, contract: InputContract, limit: int = 5000) -> np.ndarray:
    """Mean activation after the BN's ReLU per channel over (up to ``limit``) clean images: Fine-Pruning's measure,
    as the dormant scorer takes it."""
    model.eval()
    return channel_means(model, data.subset(np.arange(min(limit, len(data))), "dormancy"), contract,
                         [bn_name])[bn_name].numpy()


class KeepDecoysDead(TrainHook):
    """Training hook: the decoy channels' BN affine is put back to (0, -1) after every step, so weight decay or
    momentum never revives them."""

    def __init__(self, model: nn.Module, bn_name: str, channels: np.ndarray):
        self.bn_name, self.channels = bn_name, torch.as_tensor(channels, dtype=torch.long)
        self.after_step(model)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        bn = model.get_submodule(self.bn_name)
        idx = self.channels.to(bn.weight.device)
        bn.weight[idx] = 0.0
        bn.bias[idx] = -1.0


def plant_decoys(model: nn.Module, data: ImageSet, contract: InputContract, fraction: float
                 ) -> tuple[KeepDecoysDead, dict[str, object]]:
    """Kill the ``fraction`` most dormant classifier-feeding channels of a trained clean ``model`` (in place) and
    return the hook that keeps them dead during poisoned training, with what to record in attack.json."""
    bn_name = feature_bn(model)
    act = dormancy(model, bn_name, data, contract)
    k = int(round(fraction * len(act)))
    if not 0 < k < len(act):
        raise HardenError(f"poison.decoy_fraction {fraction} leaves {k} of {len(act)} channels as decoys; "
                          "choose a fraction that keeps at least one channel of each kind")
    channels = np.sort(np.argsort(act, kind="stable")[:k])
    return KeepDecoysDead(model, bn_name, channels), {"layer": bn_name, "channels": channels.tolist()}
