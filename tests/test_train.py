import copy

import numpy as np
import torch

from harden.core.train import TrainHook, TrainSettings, augment_batch, train
from harden.evaluate.metrics import accuracy, torch_predictor
from harden.ingest.data.sources import ImageSet

from .conftest import TINY_CONTRACT, synthetic_images

C = TINY_CONTRACT


def _sets():
    x, y = synthetic_images(256, 0)
    xt, yt = synthetic_images(64, 1)
    return ImageSet(x, y, "tune", "0"), ImageSet(xt, yt, "held", "1")


class Recorder(TrainHook):
    def __init__(self):
        self.losses, self.steps = 0, 0

    def extra_loss(self, model, x, y, logits):
        self.losses += 1
        return 0.0 * logits.sum()

    def after_step(self, model):
        self.steps += 1


def test_training_learns_uses_hooks_and_leaves_the_input_untouched(tiny_cnn):
    tune, held = _sets()
    before = copy.deepcopy(tiny_cnn.state_dict())
    evaluate = lambda m: accuracy(torch_predictor(m, C, torch.device("cpu")), held, 64)  # noqa: E731
    rec = Recorder()
    out = train(tiny_cnn, tune, C, TrainSettings(epochs=3, lr=0.05, batch_size=32, freeze_bn=False, patience=3),
                evaluate, torch.device("cpu"), [rec])
    assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())
    assert out.best_score > out.start_score and out.best_score >= 0.9
    assert rec.losses == rec.steps == 3 * 8 and out.epochs_run == 3
    assert out.best_score == max(h["heldout_acc"] for h in out.history)


def test_frozen_bn_statistics_do_not_move(tiny_cnn):
    tune, held = _sets()
    out = train(tiny_cnn, tune, C, TrainSettings(epochs=1, lr=0.05, batch_size=32, freeze_bn=True),
                lambda m: 0.0, torch.device("cpu"))
    assert torch.equal(out.model.bn1.running_mean, tiny_cnn.bn1.running_mean)
    assert not torch.equal(out.model.conv1.weight, tiny_cnn.conv1.weight)


def test_max_steps_caps_training(tiny_cnn):
    tune, held = _sets()
    rec = Recorder()
    train(tiny_cnn, tune, C, TrainSettings(epochs=5, lr=0.01, batch_size=32, max_steps=3), lambda m: 0.0,
          torch.device("cpu"), [rec])
    assert rec.steps == 3


def test_augment_is_a_crop_and_flip_of_the_input():
    x = torch.rand(6, 3, 16, 16)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    same = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    # every output pixel value comes from the image or the zero padding
    for i in range(6):
        vals = set(np.round(x[i].numpy().ravel(), 6)) | {0.0}
        assert set(np.round(out[i].numpy().ravel(), 6)) <= vals


def test_diverged_training_hands_back_the_start_model(trained_tiny):
    tune, held = _sets()
    evaluate = lambda m: accuracy(torch_predictor(m, C, torch.device("cpu")), held, 64)  # noqa: E731
    out = train(trained_tiny, tune, C, TrainSettings(epochs=1, lr=1e4, batch_size=32, clip_grad_norm=None,
                                                    momentum=0.0, weight_decay=0.0),
                evaluate, torch.device("cpu"))
    assert out.diverged and out.best_epoch == 0
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(out.model(C.normalize(x)), trained_tiny(C.normalize(x)))


class _Crash(TrainHook):
    """Stands for a killed process: raises on the first step of the given epoch."""

    def __init__(self, at_step: int):
        self.at_step, self.steps = at_step, 0

    def after_step(self, model):
        self.steps += 1
        if self.steps == self.at_step:
            raise KeyboardInterrupt


def test_an_interrupted_training_resumes_from_its_checkpoint_to_the_same_model(tiny_cnn, tmp_path):
    tune, held = _sets()
    evaluate = lambda m: accuracy(torch_predictor(m, C, torch.device("cpu")), held, 64)  # noqa: E731
    settings = TrainSettings(epochs=3, lr=0.05, batch_size=32, freeze_bn=False, patience=3)
    whole = train(tiny_cnn, tune, C, settings, evaluate, torch.device("cpu"))
    ckpt = tmp_path / "run.ckpt"
    resumable = TrainSettings(**{**settings.__dict__, "checkpoint": ckpt})
    try:
        train(tiny_cnn, tune, C, resumable, evaluate, torch.device("cpu"), [_Crash(at_step=2 * 8 + 3)])
        raise AssertionError("the crash hook did not fire")
    except KeyboardInterrupt:
        pass
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    rec = Recorder()
    resumed = train(tiny_cnn, tune, C, resumable, evaluate, torch.device("cpu"), [rec])
    assert rec.steps == 8  # only the last epoch ran again
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())


def test_a_finished_checkpoint_runs_nothing_more(tiny_cnn, tmp_path):
    tune, held = _sets()
    evaluate = lambda m: accuracy(torch_predictor(m, C, torch.device("cpu")), held, 64)  # noqa: E731
    settings = TrainSettings(epochs=2, lr=0.05, batch_size=32, freeze_bn=False, patience=3, checkpoint=tmp_path / "c")
    first = train(tiny_cnn, tune, C, settings, evaluate, torch.device("cpu"))
    rec = Recorder()
    again = train(tiny_cnn, tune, C, settings, evaluate, torch.device("cpu"), [rec])
    assert rec.steps == 0 and again.epochs_run == first.epochs_run == 2 and again.history == first.history


def test_channels_last_training_returns_a_plain_layout_model_close_to_the_default_one():
    """Red-team training runs NHWC (faster on CPU); the model it hands back must be in the plain layout that
    safetensors and the ONNX export expect, and compute what the default layout computes up to rounding."""
    import torch

    from harden.core.train import TrainSettings, train
    from harden.ingest.data.sources import ImageSet
    from harden.ingest.models.registry import create_model

    from .conftest import TINY_CONTRACT, synthetic_images

    data = ImageSet(*synthetic_images(64, seed=0), "t", "0")
    out = {}
    for layout in (False, True):
        torch.manual_seed(0)
        settings = TrainSettings(epochs=1, lr=0.05, batch_size=32, freeze_bn=False, channels_last=layout)
        out[layout] = train(create_model("tiny_cnn", 4, {"width": 8}), data, TINY_CONTRACT, settings,
                            lambda m: 0.0, torch.device("cpu")).model
    assert all(p.is_contiguous() for p in out[True].parameters())
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(out[True](x), out[False](x), atol=1e-3)
