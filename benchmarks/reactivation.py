"""Is the backdoor gone, or hidden? Two re-activation checks on a hardened model (evaluation only).

After "Towards Stable Backdoor Purification" (Min et al.): a purified model whose backdoor only sits dormant gets it
back after a little fine-tuning. Each check fine-tunes the hardened model for one epoch on the defender's tune split,
(a) plain, (b) with 50 poisoned images (the model's own trigger, relabelled to its target: ground truth, which only
this evaluation reads) mixed in, and measures the ASR afterwards. The same two fine-tunes of a clean model of the same
architecture are the baseline: 50 poisoned images teach some backdoor to any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from harden.core.artifacts import InputContract
from harden.core.train import TrainSettings, train
from harden.evaluate.metrics import attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet, _digest
from harden.ingest.models.loading import load_model
from harden.redteam.groundtruth import read_attack, trigger_from_attack
from harden.redteam.zoo import _stamp

POISONED = 50


def reshaped(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The source architecture with every conv / BN / linear resized to the shapes in ``state`` (a physically pruned
    model's weights), then ``state`` loaded strictly."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + pname)
            if saved is not None and tuple(saved.shape) != tuple(param.shape):
                new = torch.zeros_like(saved, dtype=param.dtype)
                if isinstance(param, nn.Parameter):
                    setattr(module, pname, nn.Parameter(new, requires_grad=param.requires_grad))
                else:
                    module.register_buffer(pname, new)
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = module.weight.shape[0] if module.weight is not None else module.running_mean.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
    model.load_state_dict(state, strict=True)
    return model.eval()


def hardened_model(source: Path, run_dir: Path) -> nn.Module:
    """The hardened network of a run as torch: the source architecture reshaped to hardened.safetensors."""
    return reshaped(load_model(source).model, load_file(str(run_dir / "hardened.safetensors")))


def with_poison(tune: ImageSet, folder: Path, contract: InputContract, n: int, seed: int) -> ImageSet:
    """The tune split plus ``n`` of its non-target images stamped with ``folder``'s trigger and relabelled."""
    trig = trigger_from_attack(folder, read_attack(folder) or {})
    rng = np.random.default_rng(seed)
    pick = rng.choice(trig.victims(tune.y), size=n, replace=False)
    x = _stamp(tune.x[pick], build_trigger(trig))
    y = trig.targets(tune.y[pick], contract.num_classes)
    xs, ys = np.concatenate([tune.x, x]), np.concatenate([tune.y, y])
    return ImageSet(xs, ys, f"{tune.source}+{n}-poisoned", _digest(xs, ys))


def one_epoch(model: nn.Module, data: ImageSet, contract: InputContract, seed: int) -> nn.Module:
    settings = TrainSettings(epochs=1, lr=0.01, patience=2, seed=seed, freeze_bn=False, keep_last=True,
                             max_regression=1.0)
    return train(model, data, contract, settings, lambda m: 0.0, torch.device("cpu"), label="re-activation").model


def check(model: nn.Module, folder: Path, contract: InputContract, tune: ImageSet, test: ImageSet,
          seed: int = 0) -> dict[str, Any]:
    """ASR of ``folder``'s trigger on ``model`` as it is, after a plain epoch, after an epoch with 50 poisoned."""
    trig = trigger_from_attack(folder, read_attack(folder) or {})

    def asr(m: nn.Module) -> float:
        return attack_metrics(torch_predictor(m, contract, torch.device("cpu")), test, build_trigger(trig), trig,
                              contract.num_classes, label="re-activation ASR")[0]

    return {"asr": asr(model), "asr_plain_ft": asr(one_epoch(model, tune, contract, seed)),
            "asr_poisoned_ft": asr(one_epoch(model, with_poison(tune, folder, contract, POISONED, seed), contract,
                                             seed))}


def run_inputs(run_dir: Path):
    """The run's own inputs (model, tune split, test set), rebuilt from its config.resolved.yaml as ingest made them."""
    from harden.config.loading import load_pipeline
    from harden.stages import ingest

    return ingest.run(load_pipeline(run_dir / "config.resolved.yaml"))


def for_run(run_dir: Path, folder: Path, clean_twin: Path | None, seed: int = 0) -> dict[str, Any]:
    """Both checks on the run's hardened model and, as the baseline, on the clean model of the same architecture."""
    inputs = run_inputs(run_dir)
    contract = inputs.model.contract
    out = {"hardened": check(hardened_model(folder, run_dir), folder, contract, inputs.tune, inputs.test, seed)}
    if clean_twin is not None:
        out["clean_baseline"] = check(load_model(clean_twin).model, folder, contract, inputs.tune, inputs.test, seed)
    return out
