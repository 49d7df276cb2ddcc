import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harden.config.evaluate import PatchTrigger, SineTrigger
from harden.config.repair import TriggerUnlearnConfig, UniversalUnlearnConfig
from harden.core.train import TrainSettings, train
from harden.detect import ScanResult
from harden.detect.neural_cleanse import NeuralCleanseFinding
from harden.evaluate.metrics import attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet
from harden.redteam.recipes import PoisonConfig
from harden.redteam.zoo import poisoned_training_set
from harden.repair import RepairContext
from harden.repair.grating_unlearn import GratingUnlearn, random_gratings
from harden.repair.trigger_unlearn import TriggerUnlearnRepair
from harden.repair.universal_unlearn import UniversalUnlearn

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


def _patch_scan(mask: np.ndarray, pattern: np.ndarray, target: int) -> ScanResult:
    """A scan verdict as Neural Cleanse would give it: this mask and pattern for the target class."""
    masks, patterns = np.zeros((4, *mask.shape), np.float32), np.zeros((4, *pattern.shape), np.float32)
    masks[target], patterns[target] = mask, pattern
    return ScanResult({"neural_cleanse": NeuralCleanseFinding([1.0] * 4, [0.0] * 4, [], masks, patterns, target)})


def _trigger_unlearn(scan: ScanResult, cfg: TriggerUnlearnConfig):
    """The trigger-unlearning repair's hook for this verdict, built the way the fine-tune builds it."""
    from harden.core.artifacts import ModelArtifact

    art = ModelArtifact(None, "tiny_cnn", {}, TINY_CONTRACT, None, "", "head")
    return TriggerUnlearnRepair(cfg).hook(RepairContext(art, None, scan, 0))


def test_the_re_fitted_pattern_stays_in_range_inside_its_mask_and_pulls_toward_the_target(tiny_cnn):
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 4, (16,))
    mask = np.zeros((16, 16), np.float32)
    mask[2:6, 2:6] = 1.0
    start = np.full((3, 16, 16), 0.5, np.float32)
    hook = _trigger_unlearn(_patch_scan(mask, start, 2), TriggerUnlearnConfig(weight=1.0, steps=5, step_size=0.1))

    def to_target(p: torch.Tensor) -> float:
        return float(F.cross_entropy(tiny_cnn(hook._stamped(x, p)), torch.full_like(y, 2)))

    before = to_target(torch.from_numpy(start))
    loss = hook.extra_loss(tiny_cnn, x, y, None)
    assert 0 <= float(hook.params.min()) and float(hook.params.max()) <= 1
    outside = torch.from_numpy(mask) == 0
    assert torch.equal(hook._stamped(x, hook.params)[..., outside], TINY_CONTRACT.normalize(x)[..., outside])
    assert to_target(hook.params) < before  # descent toward the suspected target
    assert all(p.grad is None for p in tiny_cnn.parameters())  # the inner fit never writes into .grad
    loss.backward()
    assert tiny_cnn.conv1.weight.grad.abs().sum() > 0
    assert float(F.cross_entropy(tiny_cnn(hook._stamped(x, hook.params)), y)) == pytest.approx(float(loss))


def _asr(model: torch.nn.Module, data: ImageSet, trig) -> float:
    predict = torch_predictor(model, TINY_CONTRACT, torch.device("cpu"))
    return attack_metrics(predict, data, build_trigger(trig), trig, 4)[0]


def _fit(model, data, hooks=(), lr=0.001, epochs=40):
    settings = TrainSettings(epochs=epochs, lr=lr, patience=epochs, augment=False, freeze_bn=True, keep_last=True)
    return train(model, data, TINY_CONTRACT, settings, lambda m: 0.0, torch.device("cpu"), list(hooks)).model


def _planted(model, trig, epochs: int) -> tuple[torch.nn.Module, ImageSet, ImageSet]:
    """The model trained with 25 % of its data poisoned by ``trig``; a clean set to repair with, one to measure on."""
    poisoned, _ = poisoned_training_set(_images(400, 1), trig, PoisonConfig(ratio=0.25), 4, seed=0)
    clean, heldout = _images(200, 2), _images(200, 3)
    backdoored = _fit(model, poisoned, lr=0.05, epochs=epochs)
    assert _asr(backdoored, heldout, trig) > 0.9
    return backdoored, clean, heldout


def test_unlearning_removes_a_full_image_trigger_that_plain_fine_tuning_keeps(tiny_cnn):
    """A planted SIG-style sinusoid over the whole image (-> class 0): fine-tuning on clean data alone keeps it,
    the same fine-tuning with the unlearning hook removes most of it."""
    trig = SineTrigger(target=0, delta=0.1)
    backdoored, clean, heldout = _planted(tiny_cnn, trig, epochs=40)
    # radius: the sinusoid's own L2 norm (amplitude / sqrt 2 over 3 x 16 x 16 values)
    cfg = UniversalUnlearnConfig(weight=1.0, radius=float(trig.delta * np.sqrt(3 * 16 * 16 / 2)))
    plain = _asr(_fit(backdoored, clean, epochs=40), heldout, trig)
    hook = UniversalUnlearn(TINY_CONTRACT, cfg.weight, cfg.radius, cfg.steps)
    unlearnt = _asr(_fit(backdoored, clean, [hook], epochs=40), heldout, trig)
    assert plain > 0.5 and unlearnt < plain / 2, (plain, unlearnt)


def test_re_fitting_the_pattern_in_the_mask_removes_a_patch_trigger_that_plain_fine_tuning_keeps(tiny_cnn):
    """A planted patch (-> class 0) and an inversion that found where it is but not what it looks like (the mask
    covers the patch, the pattern starts grey): fine-tuning on clean data alone keeps the backdoor; with the re-fitted
    pattern unlearnt it goes."""
    trig = PatchTrigger(target=0, size=3, value=1.0, position="bottom-right", margin=1)
    backdoored, clean, heldout = _planted(tiny_cnn, trig, epochs=30)
    mask = np.zeros((16, 16), np.float32)
    mask[11:15, 11:15] = 1.0  # one pixel wider than the 3x3 patch at margin 1
    grey = np.full((3, 16, 16), 0.5, np.float32)
    plain = _asr(_fit(backdoored, clean, epochs=30), heldout, trig)
    hook = _trigger_unlearn(_patch_scan(mask, grey, 0), TriggerUnlearnConfig(weight=1.0))
    unlearnt = _asr(_fit(backdoored, clean, [hook], epochs=30), heldout, trig)
    assert plain > 0.5 and unlearnt < plain / 2, (plain, unlearnt)


def test_random_gratings_stay_within_their_amplitude_and_half_are_grey():
    g = random_gratings(200, (16, 16), amplitude=0.1, max_freq=8, gen=torch.Generator().manual_seed(0))
    assert g.shape == (200, 3, 16, 16)
    peaks = g.abs().flatten(1).amax(1)
    assert float(peaks.max()) <= 0.1 + 1e-6 and float(peaks.mean()) > 0.03
    grey = (g[:, 0] == g[:, 1]).all(-1).all(-1) & (g[:, 1] == g[:, 2]).all(-1).all(-1)
    assert 60 < int(grey.sum()) < 140


def test_grating_unlearning_picks_the_planted_sinusoid_and_removes_it(tiny_cnn):
    """A planted SIG-style sinusoid (-> class 0): among candidate patterns the hook's one-class pull ranks the
    trigger first; fine-tuning on clean data alone keeps the backdoor, with random gratings unlearnt it goes."""
    trig = SineTrigger(target=0, delta=0.1)
    backdoored, clean, heldout = _planted(tiny_cnn, trig, epochs=40)
    hook = GratingUnlearn(backdoored, TINY_CONTRACT, weight=2.0, amplitude=0.1, max_freq=12, candidates=64, keep=2)
    x = clean.batch01(slice(0, 32))
    sine = build_trigger(trig)(torch.full((1, 3, 16, 16), 0.5))[0] - 0.5
    bank = torch.stack([torch.zeros_like(sine), sine, sine * 0.5, -sine * 0.3])
    clean_prob = F.softmax(backdoored(TINY_CONTRACT.normalize(x)), dim=1)
    assert int(hook._pull(backdoored, x, clean_prob, bank).argmax()) == 1
    plain = _asr(_fit(backdoored, clean, epochs=40), heldout, trig)
    unlearnt = _asr(_fit(backdoored, clean, [hook], epochs=40), heldout, trig)
    assert all(p.grad is None for p in hook.teacher.parameters())
    assert plain > 0.5 and unlearnt < plain / 2, (plain, unlearnt)
