"""Neural Cleanse: the MAD anomaly index, and a planted backdoor found with its target, trigger-free."""

import json

import numpy as np
import pytest
import torch

from harden.config.detect import NeuralCleanseConfig
from harden.core.train import TrainSettings, train
from harden.detect import ScanConfig, inverted_asr, scan
from harden.detect.neural_cleanse import anomaly_index, verdict
from harden.detect.scan import reinverted
from harden.evaluate.metrics import torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet
from harden.ingest.models.registry import create_model

from .conftest import TINY_CONTRACT, backdoored_tiny_model, synthetic_images


def test_anomaly_index_is_mad_based_and_ignores_failed_classes():
    norms = np.array([10.0, 11.0, 9.0, 10.0, 2.0, np.inf])
    a = anomaly_index(norms)
    assert a[-1] == 0.0 and a[4] == pytest.approx(abs(2.0 - 10.0) / (1.4826 * 1.0))
    assert a[4] > 2 and (a[:4] < 2).all()


@pytest.mark.parametrize("norms, expected", [
    ([5.0, 44, 94, 76, 59, 61, 65, 59, 68, 38], 0),  # small and anomalous (a BadNets-like spread)
    ([6.0, 68, 157, 158, 128, 57, 108, 150, 68, 67], 0),  # wide spread hides it from the MAD; the ratio is decisive
    ([76.0, 49, 80, 70, 73, 68, 66, 80, 78, 46], None),  # anomalous-looking index on a tight spread, normal ratio
    ([73.0, 58, 88, 90, 71, 60, 64, 73, 83, 41], None),
    ([np.inf] * 10, None),
])
def test_verdict_needs_a_small_norm_and_accepts_a_decisive_ratio_alone(norms, expected):
    norms = np.array(norms)
    assert verdict(norms, anomaly_index(norms), NeuralCleanseConfig()) == expected
    assert verdict(norms, anomaly_index(norms), NeuralCleanseConfig(decisive_norm_ratio=0)) == (
        0 if norms[0] == 5 else None)


@pytest.fixture(scope="module")
def backdoored_tiny():
    return backdoored_tiny_model()


def _trained_tiny(data, evaluate):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 4, {"width": 8})
    settings = TrainSettings(epochs=12, lr=0.05, batch_size=64, patience=99, freeze_bn=False, clip_grad_norm=None,
                             max_regression=1.0)
    return train(model, data, TINY_CONTRACT, settings, evaluate, torch.device("cpu")).model.eval()


def test_scan_flags_the_planted_backdoor_and_its_target(backdoored_tiny):
    model, held, trig = backdoored_tiny
    with torch.no_grad():  # the backdoor really is there
        stamped = build_trigger(trig)(held.batch01(np.flatnonzero(held.y != 0)))
        assert (model(TINY_CONTRACT.normalize(stamped)).argmax(1) == 0).float().mean() > 0.9
    cfg = ScanConfig(enabled=True, detectors={"neural_cleanse": {"epochs": 15, "steps_per_epoch": 4}})
    result = scan(model, held, TINY_CONTRACT, cfg)
    assert result.flagged and result.target == 0 and result.detector == "neural_cleanse" and result.kind == "patch"
    nc = result.findings["neural_cleanse"]
    assert nc.masks.shape == (4, 16, 16) and nc.patterns.shape == (4, 3, 16, 16)
    assert 0 <= nc.masks.min() and nc.masks.max() <= 1
    assert nc.norms[0] == min(nc.norms) and nc.statistic() > 2
    predict = torch_predictor(model, TINY_CONTRACT, torch.device("cpu"))
    assert inverted_asr(predict, result, held, TINY_CONTRACT.num_classes) > 0.9  # the inversion works
    # a fresh inversion of the target on the same model flags it again; on a model that never saw the trigger it does
    # not (its target norm is no smaller than the backdoored model's other classes')
    norm, flagged = reinverted(result, cfg, model, held, TINY_CONTRACT, torch.device("cpu"))
    assert flagged and norm < 0.5 * np.median(nc.norms[1:])
    benign = _trained_tiny(ImageSet(*synthetic_images(800, seed=7), "train", "0"), lambda m: 0.0)
    norm, flagged = reinverted(result, cfg, benign, held, TINY_CONTRACT, torch.device("cpu"))
    assert np.isfinite(norm) and not flagged, norm


def test_pipeline_scan_stage_reports_verdict_itasr_and_tighter_budget(backdoored_tiny, tiny_workspace):
    from harden.config.loading import load_pipeline
    from harden.pipeline import run_pipeline

    from .conftest import write_model_folder

    model, _, _ = backdoored_tiny
    write_model_folder(tiny_workspace / "model", model)
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
        "stages.scan.enabled=true", "stages.scan.detectors.neural_cleanse.epochs=15",
        "stages.scan.detectors.neural_cleanse.steps_per_epoch=4",
        "stages.prune.select.policy=accuracy_guard", "stages.finetune.max_steps=2", "tracking.enabled=false",
        "stages.finetune.repairs={distill: {}, mcl: {}}", "stages.scan.rescan=true", "stages.prune.select.itasr_tolerance=0.05",
        "stages.prune.select.reinvert=true"])
    report = run_pipeline(cfg, tiny_workspace / "out").report
    assert report["scan"]["flagged"] and report["scan"]["target"] == 0
    assert "mcl" in report["finetune"]["repairs"]  # MCL ran with the inverted trigger
    assert set(report["rescan"]["detectors"]["neural_cleanse"]) >= {"target", "max_anomaly", "min_norm_ratio"}
    assert (tiny_workspace / "out" / "rescan.json").is_file()
    assert report["itasr"]["target"] == 0 and report["itasr"]["before"] > 0.9
    for name in ("scan.json", "scan.npz", "scan-triggers.png"):
        assert (tiny_workspace / "out" / name).is_file()
    trace = json.loads((tiny_workspace / "out" / "pruning.json").read_text())["selection"]
    assert any("reinverted_norm" in row for row in trace)  # the patch verdict stands: candidates were re-inverted


def test_unflagged_model_gets_the_tighter_budget(tiny_cnn):
    from harden.config.prune import ClpConfig, PruneStage
    from harden.core.artifacts import ModelArtifact
    from harden.prune import remove as prune
    from harden.prune import select
    from harden.prune.scorers.clp import ClpScorer
    from harden.prune.surgery import find_classifier

    art = ModelArtifact(tiny_cnn, "tiny_cnn", {}, TINY_CONTRACT, None, "", find_classifier(tiny_cnn))
    tune = ImageSet(*synthetic_images(64, seed=3), "tune", "0")
    scores = ClpScorer(ClpConfig()).score(tiny_cnn)
    cfg = PruneStage(select={"policy": "accuracy_guard", "thresholds": [0.5], "max_relative_drop": 0.99,
                             "unflagged_relative_drop": 0.0})
    prep = prune.prepare(art)
    dev = torch.device("cpu")
    assert select.run(cfg, art, scores, tune, prep, dev, scan_flagged=True).threshold == 0.5
    assert select.run(cfg, art, scores, tune, prep, dev, scan_flagged=None).threshold == 0.5
    # with no backdoor found, a zero budget keeps only candidates that cost nothing on the tune split
    trace = select.run(cfg, art, scores, tune, prep, dev, scan_flagged=False).trace
    expected = 0.5 if trace[0]["relative_drop"] <= 0 else None
    assert select.run(cfg, art, scores, tune, prep, dev, scan_flagged=False).threshold == expected


def test_inverted_trigger_tie_break_prefers_the_least_pruning_candidate_that_defeats_it(tiny_cnn):
    from harden.config.prune import ClpConfig, PruneStage
    from harden.core.artifacts import ModelArtifact
    from harden.prune import remove as prune
    from harden.prune import select
    from harden.prune.scorers.clp import ClpScorer
    from harden.prune.surgery import find_classifier

    art = ModelArtifact(tiny_cnn, "tiny_cnn", {}, TINY_CONTRACT, None, "", find_classifier(tiny_cnn))
    tune = ImageSet(*synthetic_images(64, seed=3), "tune", "0")
    scores = ClpScorer(ClpConfig()).score(tiny_cnn)
    prep = prune.prepare(art)
    dev = torch.device("cpu")
    seen = []

    def inverted(model):  # a stand-in ITASR that falls as candidates prune more
        seen.append(model)
        return [0.30, 0.01, 0.0][len(seen) - 1]

    def pick(tolerance, flagged=True):
        seen.clear()
        cfg = PruneStage(select={"policy": "accuracy_guard", "thresholds": [0.2, 1.0, 3.0], "max_relative_drop": 0.99,
                                 "itasr_tolerance": tolerance})
        return select.run(cfg, art, scores, tune, prep, dev, scan_flagged=flagged, inverted=inverted)

    chosen = pick(0.02)
    assert chosen.threshold == 1.0 and [r["itasr"] for r in chosen.trace] == [0.30, 0.01, 0.0]
    assert pick(0.5).threshold == 3.0  # everything within tolerance: the least pruning
    assert pick(None).threshold == 0.2 and not seen  # off: the most pruning within budget, no ITASR measured
    assert pick(0.02, flagged=False).threshold == 0.2 and not seen

    asked = []

    def fresh(flags):  # a stand-in re-inversion: (norm, still flagged) per candidate asked, least pruning first
        def reinverted(model):
            asked.append(model)
            return 10.0 * len(asked), flags[len(asked) - 1]
        return reinverted

    def pick_fresh(tolerance, flags):
        seen.clear(), asked.clear()
        cfg = PruneStage(select={"policy": "accuracy_guard", "thresholds": [0.2, 1.0, 3.0], "max_relative_drop": 0.99,
                                 "itasr_tolerance": tolerance, "reinvert": True})
        return select.run(cfg, art, scores, tune, prep, dev, True, inverted, fresh(flags))

    # everything defeats the inverted patch, yet a fresh inversion still flags the least pruning candidate
    chosen = pick_fresh(0.5, [True, False, False])
    assert chosen.threshold == 1.0 and len(asked) == 2  # stops at the first candidate it no longer flags
    assert [r.get("reinverted_flagged") for r in chosen.trace] == [1.0, 0.0, None]
    assert pick_fresh(0.02, [False]).threshold == 1.0 and len(asked) == 1  # only candidates ITASR lets through
    assert pick_fresh(0.5, [True, True, True]).threshold == 0.2  # flagged throughout: the most pruning in budget
