"""Repairs that need no scan verdict: Feature Shift Tuning and Shared Adversarial Unlearning."""

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from harden.config.evaluate import BlendTrigger
from harden.core.train import TrainSettings, set_train_mode, train
from harden.evaluate.metrics import accuracy, attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet
from harden.redteam.recipes import PoisonConfig
from harden.redteam.zoo import poisoned_training_set
from harden.repair.fst import FeatureShift
from harden.repair.sau import SharedAdversarialUnlearn, shared_error

from .conftest import TINY_CONTRACT, synthetic_images


def _images(n: int, seed: int) -> ImageSet:
    x, y = synthetic_images(n, seed)
    return ImageSet(x, y, f"synthetic-{seed}", str(seed))


def _fit(model, data, hooks=(), lr=0.01, epochs=20, freeze_bn=True):
    settings = TrainSettings(epochs=epochs, lr=lr, patience=epochs, augment=False, freeze_bn=freeze_bn,
                             keep_last=True, clip_grad_norm=None)
    return train(model, data, TINY_CONTRACT, settings, lambda m: 0.0, torch.device("cpu"), list(hooks)).model


def _asr(model, data, trig) -> float:
    return attack_metrics(torch_predictor(model, TINY_CONTRACT, torch.device("cpu")), data, build_trigger(trig), trig,
                          4)[0]


def test_feature_shift_starts_from_a_fresh_head_of_the_same_norm_and_keeps_it(tiny_cnn):
    hook = FeatureShift("head", weight=0.5, seed=0)
    model = copy.deepcopy(tiny_cnn)
    before = model.head.weight.detach().clone()
    x = torch.rand(8, 3, 16, 16)
    hook.start(model)
    loss = hook.extra_loss(model, x, torch.zeros(8, dtype=torch.long), model(x)).detach()
    assert not torch.allclose(model.head.weight, before)
    assert torch.isclose(model.head.weight.norm(), before.norm())
    assert torch.equal(hook.original, before) and float(loss) == float(0.5 * (model.head.weight * before).sum())
    model.head.weight.data *= 3
    hook.after_step(model)
    assert torch.isclose(model.head.weight.norm(), before.norm())


def test_shared_adversarial_search_stays_in_its_ball_raises_shared_error_and_leaves_no_trace(tiny_cnn):
    suspect = copy.deepcopy(tiny_cnn)
    hook = SharedAdversarialUnlearn(suspect, TINY_CONTRACT, weight=1.0, eps=0.1, steps=5)
    model = copy.deepcopy(tiny_cnn)
    set_train_mode(model, freeze_bn=True)
    modes = [m.training for m in model.modules()]
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 4, (16,))
    xa = hook.search(model, x, y)
    assert (xa - x).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert [m.training for m in model.modules()] == modes  # frozen BN stays frozen
    assert all(p.grad is None for p in model.parameters())

    def err(inp):
        with torch.no_grad():
            p = torch.softmax(model(TINY_CONTRACT.normalize(inp)), 1)
            q = torch.softmax(suspect(TINY_CONTRACT.normalize(inp)), 1)
        return float(shared_error(p, q, y).mean())

    assert err(xa) > err(x)
    loss = hook.extra_loss(model, x, y, model(TINY_CONTRACT.normalize(x)))
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0


def _planted(model, trig):
    poisoned, _ = poisoned_training_set(_images(600, 1), trig, PoisonConfig(ratio=0.2), 4, seed=0)
    backdoored = _fit(model, poisoned, lr=0.05, epochs=30, freeze_bn=False)
    clean, heldout = _images(200, 2), _images(200, 3)
    assert _asr(backdoored, heldout, trig) > 0.9
    return backdoored, clean, heldout


def test_both_repairs_weaken_a_planted_blend_that_plain_fine_tuning_keeps(tiny_cnn):
    """No scan, no trigger: a planted blend (-> class 0) that plain fine-tuning on clean data keeps is removed by
    either repair at no cost in accuracy (toy data: SAU at a small radius; the red-team dev split sets the real one)."""
    pattern = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    folder = Path(tempfile.mkdtemp())
    np.savez(folder / "t.npz", pattern=pattern)
    trig = BlendTrigger(target=0, alpha=0.2, pattern={"path": folder / "t.npz", "key": "pattern"})
    backdoored, clean, heldout = _planted(tiny_cnn, trig)
    plain = _asr(_fit(backdoored, clean), heldout, trig)
    fst_model = _fit(backdoored, clean, [FeatureShift("head", weight=0.5)])
    sau_model = _fit(backdoored, clean, [SharedAdversarialUnlearn(backdoored, TINY_CONTRACT, 0.3, 0.03, 3)])
    fst, sau = _asr(fst_model, heldout, trig), _asr(sau_model, heldout, trig)
    acc = lambda m: accuracy(torch_predictor(m, TINY_CONTRACT, torch.device("cpu")), heldout)  # noqa: E731
    assert plain > 0.5, plain
    assert sau < plain / 2 and fst < plain / 2, (plain, fst, sau)
    assert acc(sau_model) > 0.9 and acc(fst_model) > 0.9
