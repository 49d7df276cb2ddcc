"""Warp inversion: the warp itself, and a planted WaNet-style backdoor found with its target where a clean model of the
same recipe is not flagged. Trigger-free: the scan sees clean images only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harden.config.detect import WarpConfig
from harden.config.evaluate import WarpTrigger
from harden.core.train import TrainSettings, train
from harden.detect import ScanConfig, ScanResult, inverted_asr, scan
from harden.detect.warp import warp_images, warp_scan
from harden.evaluate.metrics import torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet
from harden.ingest.models.registry import create_model
from harden.redteam.recipes import PoisonConfig
from harden.redteam.zoo import poisoned_training_set
from harden.report.plots import inverted_triggers

from .conftest import TINY_CONTRACT, synthetic_images


def test_a_zero_field_is_the_identity_and_a_constant_field_shifts_by_whole_pixels():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(warp_images(x, torch.zeros(2, 4, 4)), x, atol=1e-5)
    right = torch.zeros(2, 4, 4)
    right[0] = 1.0  # sample one pixel to the right: content moves one pixel left
    assert torch.allclose(warp_images(x, right)[..., :-1], x[..., 1:], atol=1e-5)


def _trained(poison: bool, grid_path) -> tuple[torch.nn.Module, WarpTrigger]:
    g = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32))
    g = F.interpolate(g / g.abs().mean(), size=(16, 16), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    np.savez(grid_path, noise_grid=g.numpy())
    trig = WarpTrigger(target=0, s=1.0, grid={"path": grid_path, "key": "noise_grid"})
    data = ImageSet(*synthetic_images(800, seed=7), "train", "0")
    if poison:
        data, _ = poisoned_training_set(data, trig, PoisonConfig(ratio=0.2), 4, seed=0)
    torch.manual_seed(0)
    settings = TrainSettings(epochs=15, lr=0.05, batch_size=64, patience=99, freeze_bn=False, clip_grad_norm=None,
                             augment=False, keep_last=True)
    out = train(create_model("tiny_cnn", 4, {"width": 8}), data, TINY_CONTRACT, settings, lambda m: 0.0,
                torch.device("cpu"))
    return out.model.eval(), trig


@pytest.fixture(scope="module")
def warp_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warp")
    return _trained(True, folder / "g.npz"), _trained(False, folder / "g.npz")[0]


def test_warp_scan_flags_a_planted_warp_backdoor_with_its_target_and_passes_the_clean_model(warp_models):
    (backdoored, trig), clean = warp_models
    held = ImageSet(*synthetic_images(200, seed=8), "held", "1")
    victims = held.batch01(np.flatnonzero(held.y != 0))
    with torch.no_grad():  # the backdoor really is there, and only in the poisoned model
        assert (backdoored(TINY_CONTRACT.normalize(build_trigger(trig)(victims))).argmax(1) == 0).float().mean() > 0.9
        assert (clean(TINY_CONTRACT.normalize(build_trigger(trig)(victims))).argmax(1) == 0).float().mean() < 0.2
    cfg = WarpConfig(steps=40, max_shift=1.0)
    found = warp_scan(backdoored, held, TINY_CONTRACT, cfg)
    assert found.target == 0 and found.success[0] >= cfg.success, found.success
    assert found.fields.shape == (4, 2, 4, 4) and np.abs(found.fields).max() <= 1.0
    passed = warp_scan(clean, held, TINY_CONTRACT, cfg)
    assert passed.target is None and max(passed.success) < cfg.success, passed.success


def test_scan_reports_a_warp_verdict_that_itasr_the_figure_and_the_cache_replay(warp_models, tmp_path):
    (backdoored, _), _ = warp_models
    held = ImageSet(*synthetic_images(200, seed=8), "held", "1")
    cfg = ScanConfig(enabled=True, detectors={"neural_cleanse": {"epochs": 2, "steps_per_epoch": 2},
                                              "warp": {"steps": 40, "max_shift": 1.0}})
    result = scan(backdoored, held, TINY_CONTRACT, cfg)
    assert result.flagged and result.kind == "warp" and result.target == 0 and result.detector == "warp"
    assert result.summary()["detectors"]["warp"]["target"] == 0
    predict = torch_predictor(backdoored, TINY_CONTRACT, torch.device("cpu"))
    assert inverted_asr(predict, result, held, TINY_CONTRACT.num_classes) > 0.5  # ITASR stamps the warp
    again = ScanResult.from_arrays(result.to_arrays(), [name for name, _ in cfg.configured()])
    assert again.kind == "warp" and again.target == 0 and again.findings["warp"].max_shift == 1.0
    assert again.summary() == result.summary()
    x = held.batch01(slice(0, 8))
    assert torch.equal(again.stamp(x), result.stamp(x))
    inverted_triggers(result, TINY_CONTRACT.labels, tmp_path / "scan-triggers.png")
    assert (tmp_path / "scan-triggers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_repairs_what_the_warp_scan_found(warp_models, tiny_workspace):
    """Through `harden run`'s pipeline: the warp verdict drives MCL and trigger unlearning, and the inverted warp's
    ASR on held-out images falls; the report and the figure say which inversion flagged the model."""
    from harden.config.loading import load_pipeline
    from harden.pipeline import run_pipeline

    from .conftest import write_model_folder

    (backdoored, _), _ = warp_models
    write_model_folder(tiny_workspace / "model", backdoored)
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
        "stages.scan.enabled=true", "stages.scan.detectors.neural_cleanse.epochs=2",
        "stages.scan.detectors.neural_cleanse.steps_per_epoch=2", "stages.scan.detectors.warp.steps=40",
        "stages.scan.detectors.warp.max_shift=1.0",
        "stages.prune.enabled=false", "stages.finetune.epochs=6", "stages.finetune.patience=6",
        "stages.finetune.repairs.distill={}", "stages.finetune.repairs.mcl={}",
        "stages.finetune.repairs.trigger_unlearn.weight=1.0",
        "tracking.enabled=false"])
    report = run_pipeline(cfg, tiny_workspace / "out").report
    assert report["scan"]["kind"] == "warp" and report["scan"]["target"] == 0
    assert report["finetune"]["repairs"] == ["distill", "mcl", "trigger_unlearn"]
    assert report["itasr"]["kind"] == "warp" and report["itasr"]["before"] > 0.5
    assert report["itasr"]["after"] < report["itasr"]["before"] / 2, report["itasr"]
    with np.load(tiny_workspace / "out" / "itasr-trigger.npz") as z:
        assert z["field"].shape == (2, 4, 4)
