import numpy as np
import torch
import torch.nn.functional as F

from harden.attacks import PoisonConfig, build_trigger
from harden.attacks.triggers import SineTrigger
from harden.config import FinetuneStage
from harden.data import ImageSet
from harden.evaluate import attack_metrics, torch_predictor
from harden.train import TrainSettings, train
from harden.unlearn import UniversalUnlearn
from harden.zoo import poisoned_training_set

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


def _asr(model: torch.nn.Module, data: ImageSet, trig: SineTrigger) -> float:
    predict = torch_predictor(model, TINY_CONTRACT, torch.device("cpu"))
    return attack_metrics(predict, data, build_trigger(trig), trig, 4)[0]


def test_unlearning_removes_a_full_image_trigger_that_plain_fine_tuning_keeps(tiny_cnn):
    """A planted SIG-style sinusoid over the whole image (-> class 0): fine-tuning on clean data alone keeps it,
    the same fine-tuning with the unlearning hook removes most of it."""
    trig = SineTrigger(target=0, delta=0.1)
    poisoned, _ = poisoned_training_set(_images(400, 1), trig, PoisonConfig(ratio=0.25), 4, seed=0)
    clean, heldout = _images(200, 2), _images(200, 3)

    def fit(model, data, hooks=(), lr=0.001):
        settings = TrainSettings(epochs=40, lr=lr, patience=40, augment=False, freeze_bn=True, keep_last=True)
        return train(model, data, TINY_CONTRACT, settings, lambda m: 0.0, torch.device("cpu"), list(hooks)).model

    backdoored = fit(tiny_cnn, poisoned, lr=0.05)
    assert _asr(backdoored, heldout, trig) > 0.9
    # radius: the sinusoid's own L2 norm (amplitude / sqrt 2 over 3 x 16 x 16 values)
    cfg = FinetuneStage(unlearn_weight=1.0, unlearn_radius=float(trig.delta * np.sqrt(3 * 16 * 16 / 2)))
    plain = _asr(fit(backdoored, clean), heldout, trig)
    unlearnt = _asr(fit(backdoored, clean, [UniversalUnlearn(TINY_CONTRACT, cfg.unlearn_weight, cfg.unlearn_radius,
                                                             cfg.unlearn_steps)]), heldout, trig)
    assert plain > 0.5 and unlearnt < plain / 2, (plain, unlearnt)
