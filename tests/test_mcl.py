import copy
import math

import torch

from harden.config.prune import PruneStage
from harden.ingest.models.registry import create_model
from harden.prune import remove as prune
from harden.repair.mcl import ContrastiveHook, kept_features

from .conftest import TINY_CONTRACT
from .test_prune import _artifact, _randomize_bn, _scores


def test_kept_features_follow_the_pruned_classifier_inputs():
    model = _randomize_bn(create_model("preact_resnet18", 10, {"width": 8}))
    stream = {n: [3, 17] for n in ("layer4.0.conv2", "layer4.1.conv2", "layer4.0.shortcut.0")}
    out, _ = prune.run(PruneStage(coupled="remove", round_to=1), _artifact(model), _scores(model, stream),
                       torch.device("cpu"))
    assert kept_features(out.model, model, "linear") == [i for i in range(64) if i not in (3, 17)]
    assert kept_features(model, copy.deepcopy(model), "linear") is None


def _hook(model, mask_value: float):
    def stamp(x: torch.Tensor) -> torch.Tensor:  # a blend toward white: the inverted-trigger form of Neural Cleanse
        return (1 - mask_value) * x + mask_value

    return ContrastiveHook(model, "head", stamp, TINY_CONTRACT, 1.0, 0.5, None)


def test_contrastive_term_is_log2_without_a_trigger_and_trains_the_student(tiny_cnn):
    x = torch.rand(8, 3, 16, 16)
    y = torch.zeros(8, dtype=torch.long)
    student = copy.deepcopy(tiny_cnn).eval()
    loss = _hook(tiny_cnn, 0.0).extra_loss(student, x, y, None)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-5)  # x~ = x: both pairs equally similar
    hook = _hook(tiny_cnn, 0.3)
    loss = hook.extra_loss(student, x, y, None)
    loss.backward()
    assert torch.isfinite(loss) and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in hook.teacher.parameters())  # the suspect copy stays frozen
