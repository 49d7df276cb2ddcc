import numpy as np
import pytest
import torch

from harden.config.detect import GratingConfig
from harden.config.evaluate import SineTrigger
from harden.config.repair import FinetuneStage
from harden.detect import ScanResult
from harden.detect.grating import GratingFinding, far_from, grating_scan
from harden.detect.neural_cleanse import NeuralCleanseFinding
from harden.report.plots import inverted_triggers
from harden.stages.finetune import repairs_for

from .conftest import TINY_CONTRACT
from .test_unlearn import _fit, _images, _planted

SMALL = GratingConfig(amplitude=0.1, directions=12, max_freq=8, freq_step=0.5, images=120)


def test_a_planted_sinusoid_is_flagged_with_its_target_direction_and_frequency(tiny_cnn):
    trig = SineTrigger(target=0, delta=0.1)  # 6 cycles per image width
    backdoored, clean, _ = _planted(tiny_cnn, trig, epochs=40)
    r = grating_scan(backdoored, clean, TINY_CONTRACT, SMALL)
    assert r.target == 0, (r.success, r.far_success)
    angle, freq, _ = r.peaks[0]
    assert min(angle, 180 - angle) <= 15 and abs(freq - 6) <= 1, r.peaks[0]
    assert r.success[0] - r.far_success[0] >= SMALL.min_gap


def test_a_model_trained_on_clean_data_is_not_flagged(tiny_cnn):
    model = _fit(tiny_cnn, _images(400, 1), lr=0.05, epochs=40)
    r = grating_scan(model, _images(200, 2), TINY_CONTRACT, SMALL)
    assert r.target is None, (r.success, r.far_success)


def test_far_gratings_wrap_around_in_direction():
    angles, freqs = np.array([0.0, 175.0, 90.0, 0.0]), np.array([6.0, 6.0, 6.0, 10.0])
    cfg = GratingConfig(far_angle=25, far_freq=2.5)
    assert far_from(angles, freqs, 0, cfg).tolist() == [False, False, True, True]


def _nc(target: int | None) -> NeuralCleanseFinding:
    return NeuralCleanseFinding([1.0] * 4, [0.0] * 4, [], np.zeros((4, 16, 16), np.float32),
                                np.zeros((4, 3, 16, 16), np.float32), target)


def _grating_verdict() -> ScanResult:
    g = GratingFinding(success=[0.9, 0.1, 0.2, 0.1], far_success=[0.2, 0.1, 0.2, 0.1],
                       peaks=np.array([[0.0, 4.0, 0.5]] * 4), amplitude=0.1, target=0, size=(3, 16, 16))
    return ScanResult({"neural_cleanse": _nc(None), "grating": g})


def test_a_grating_verdict_round_trips_stamps_its_peak_grating_and_is_drawn(tmp_path):
    found = ScanResult.from_arrays(_grating_verdict().to_arrays(), ["neural_cleanse", "grating"])
    g = found.findings["grating"]
    assert found.kind == "grating" and found.detector == "grating" and g.target == 0 and g.success[0] == 0.9
    x = torch.full((2, 3, 16, 16), 0.5)
    added = found.stamp(x) - x
    assert 0.08 < float(added.abs().max()) <= 0.1 + 1e-6
    assert torch.allclose(added[:, 0], added[:, 1]) and torch.allclose(added[:, :, 0], added[:, :, 5])  # grey, 0 deg
    assert found.summary()["detectors"]["grating"]["target"] == 0
    assert found.summary()["detectors"]["grating"]["max_gap"] == pytest.approx(0.7)  # class 0: 0.9 peak, 0.2 far
    inverted_triggers(found, TINY_CONTRACT.labels, tmp_path / "scan-triggers.png")
    assert (tmp_path / "scan-triggers.png").stat().st_size > 1000


def test_grating_unlearning_replaces_the_fixed_trigger_repairs_only_on_a_grating_verdict():
    on_verdict = FinetuneStage(repairs={"grating_unlearn": {"weight": 0.5, "when": "grating_verdict"}, "mcl": {},
                                        "trigger_unlearn": {"weight": 0.3}})

    def acting(cfg, scan):
        return list(repairs_for(cfg, scan))

    assert acting(on_verdict, _grating_verdict()) == ["grating_unlearn"]
    assert acting(on_verdict, None) == []
    patch = ScanResult({"neural_cleanse": _nc(0), "grating": _grating_verdict().findings["grating"]})
    assert acting(on_verdict, patch) == ["mcl", "trigger_unlearn"]
    without = FinetuneStage(repairs={"mcl": {}})  # no grating hook configured: the peak grating is repaired as is
    assert acting(without, _grating_verdict()) == ["mcl"]
    always = FinetuneStage(repairs={"distill": {}, "grating_unlearn": {}})
    assert acting(always, None) == ["distill", "grating_unlearn"]


def test_pipeline_repairs_what_the_grating_scan_found(tiny_cnn, tiny_workspace):
    """Through `harden run`'s pipeline: a grating verdict turns grating unlearning on in place of MCL and trigger
    unlearning, and the peak grating's ASR on held-out images falls."""
    from harden.config.loading import load_pipeline
    from harden.pipeline import run_pipeline
    from harden.report.summary import render_summary

    from .conftest import write_model_folder

    backdoored, _, _ = _planted(tiny_cnn, SineTrigger(target=0, delta=0.1), epochs=40)
    write_model_folder(tiny_workspace / "model", backdoored)
    small = [f"stages.scan.detectors.grating.{k}={v}" for k, v in SMALL.model_dump(exclude_none=True).items()]
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
        "stages.scan.enabled=true", "stages.scan.detectors.neural_cleanse.epochs=2",
        "stages.scan.detectors.neural_cleanse.steps_per_epoch=2", *small,
        "stages.prune.enabled=false", "stages.finetune.epochs=10", "stages.finetune.patience=10",
        "stages.finetune.repairs.distill={}", "stages.finetune.repairs.mcl={}",
        "stages.finetune.repairs.trigger_unlearn.weight=1.0",
        "stages.finetune.repairs.grating_unlearn={weight: 2.0, amplitude: 0.1, candidates: 64, keep: 2, "
        "when: grating_verdict}",
        "tracking.enabled=false"])
    report = run_pipeline(cfg, tiny_workspace / "out").report
    assert report["scan"]["kind"] == "grating" and report["scan"]["target"] == 0, report["scan"]
    assert report["finetune"]["repairs"] == ["distill", "grating_unlearn"], report["finetune"]
    assert report["itasr"]["kind"] == "grating" and report["itasr"]["before"] > 0.5
    assert report["itasr"]["after"] < report["itasr"]["before"] / 2, report["itasr"]
    with np.load(tiny_workspace / "out" / "itasr-trigger.npz") as z:
        assert z["grating"].shape == (3, 16, 16)
    assert "grating scan" in render_summary(report) and "target 0" in render_summary(report)
