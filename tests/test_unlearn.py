import copy

import numpy as np
import torch
import torch.nn.functional as F

from harden.config import FinetuneStage
from harden.data import ImageSet
from harden.train import TrainSettings, train
from harden.unlearn import UniversalUnlearn

from .conftest import TINY_CONTRACT, synthetic_images


def _images(n: int, seed: int) -> ImageSet:
    x, y = synthetic_images(n, seed)
    return ImageSet(x, y, f"synthetic-{seed}", str(seed))


def test_the_perturbation_stays_in_its_ball_raises_the_loss_and_leaves_no_gradients(tiny_cnn):
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 4, (16,))
    hook = UniversalUnlearn(TINY_CONTRACT, 1.0, radius=1.5, steps=5)
    for _ in range(3):
        loss = hook.extra_loss(tiny_cnn, x, y, None)
    assert float(hook.delta.norm()) <= 1.5 + 1e-4 and float(hook.delta.norm()) > 1.0
    assert all(p.grad is None for p in tiny_cnn.parameters())  # the inner ascent never writes into .grad
    clean = F.cross_entropy(tiny_cnn(TINY_CONTRACT.normalize(x)), y)
    assert float(loss) > float(clean)  # ascent: the perturbed batch is harder than the clean one
    loss.backward()
    assert tiny_cnn.conv1.weight.grad.abs().sum() > 0


def _shift_asr(model: torch.nn.Module, data: ImageSet, shift: float) -> float:
    x = data.batch01(slice(0, len(data)))
    keep = torch.from_numpy(data.y) != 0
    with torch.no_grad():
        pred = model.eval()(TINY_CONTRACT.normalize((x[keep] + shift).clamp(0, 1))).argmax(1)
    return float((pred == 0).float().mean())


def test_unlearning_removes_a_full_image_shortcut_that_plain_fine_tuning_keeps(tiny_cnn):
    """A planted full-image trigger (every pixel +0.25 -> class 0): fine-tuning on clean data alone keeps it,
    the same fine-tuning with the unlearning hook removes most of it."""
    train_set, clean, heldout = _images(400, 1), _images(200, 2), _images(200, 3)
    model, shift = copy.deepcopy(tiny_cnn).train(), 0.25
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    x_all, y_all = train_set.batch01(slice(0, len(train_set))), torch.from_numpy(train_set.y)
    for _ in range(300):
        idx = torch.randint(0, len(y_all), (64,), generator=gen)
        x, y = x_all[idx].clone(), y_all[idx].clone()
        x[:16], y[:16] = (x[:16] + shift).clamp(0, 1), 0
        loss = F.cross_entropy(model(TINY_CONTRACT.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _shift_asr(model, heldout, shift) > 0.9

    def finetune(hooks):
        settings = TrainSettings(epochs=40, lr=0.05, patience=40, augment=False, freeze_bn=True, keep_last=True)
        return train(model, clean, TINY_CONTRACT, settings, lambda m: 0.0, torch.device("cpu"), hooks).model

    cfg = FinetuneStage(unlearn_weight=1.0, unlearn_radius=float(np.sqrt(3 * 16 * 16)) * shift)
    plain = _shift_asr(finetune([]), heldout, shift)
    unlearnt = _shift_asr(finetune([UniversalUnlearn(TINY_CONTRACT, cfg.unlearn_weight, cfg.unlearn_radius,
                                                     cfg.unlearn_steps)]), heldout, shift)
    assert plain > 0.5 and unlearnt < plain / 2, (plain, unlearnt)
