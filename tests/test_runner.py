"""The runner knows no stage or method; a stage registered outside harden/ runs; `harden score` and `harden run`
choose the same cut because they are the same runner."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import harden.pipeline as runner
from harden.cli import cli
from harden.config.detect import DETECTORS, DetectorConfig
from harden.config.loading import load_pipeline
from harden.config.prune import SCORERS
from harden.config.repair import REPAIRS, RepairConfig
from harden.core.errors import ConfigError
from harden.core.stage import STAGES, register_stage
from harden.core.train import TrainHook
from harden.detect import register_detector
from harden.pipeline import run_pipeline
from harden.repair import register_repair
from harden.repair.base import OnVerdict
from harden.report.summary import render_summary

from .conftest import REPO, backdoored_tiny_model, write_model_folder

METHODS = ["neural", "cleanse", "warp", "grating", "patch", "mcl", "contrastive", "distill", "unlearn", "fst", "sau",
           "polariz", "anp", "clp", "dormant", "itasr", "onnx", "int8", "mlflow"]


def test_the_runner_is_short_and_names_no_stage_method_or_scorer():
    source = Path(runner.__file__).read_text()
    assert len(source.splitlines()) <= 120
    words = set(re.findall(r"[a-z0-9]+", source.lower()))
    named = [n for n in METHODS if any(w.startswith(n) for w in words)]
    named += [n for n in SCORERS.names() + STAGES.names() if n in words]
    assert not named, f"harden/pipeline.py names {named}"


def test_a_stage_registered_outside_harden_runs_in_its_place(tiny_workspace):
    seen = {}

    @register_stage("test-probe", 75, "records what the fine-tune handed on")
    class Probe:
        def enabled(self, cfg):
            return True

        def run(self, cfg, state, ctx):
            seen["trained"] = state.report["finetune"]["epochs_run"]
            ctx.write_json("probe.json", {"params": state.model.model.head.weight.shape[1]})
            return {"probe": {"ok": True}}

    try:
        cfg = load_pipeline(tiny_workspace / "pipeline.yaml", ["tracking.enabled=false", "stages.finetune.epochs=1",
                                                               "stages.export.latency=false"])
        report = run_pipeline(cfg, tiny_workspace / "out").report
    finally:
        STAGES.unregister("test-probe")
    assert seen["trained"] == 1 and report["probe"] == {"ok": True}
    assert (tiny_workspace / "out" / "probe.json").is_file()
    assert report["seconds"]["test-probe"] >= 0 and "onnx" in report  # timed in its span; later stages still ran


SMALL = ["device=cpu", "tracking.enabled=false", "stages.finetune.max_steps=2", "stages.export.latency=false"]
SMALL_SCAN = {"neural_cleanse": ["epochs=8", "steps_per_epoch=4"], "warp": ["steps=10"],
              "grating": ["directions=6", "images=40"]}


@pytest.mark.parametrize("yaml", ["recommended", "anp", "mcl"])
def test_score_and_run_choose_the_same_cut(yaml, tiny_workspace, backdoored):
    write_model_folder(tiny_workspace / "model", backdoored)
    sets = SMALL + [f"model.path={tiny_workspace / 'model'}", f"data.clean.path={tiny_workspace / 'clean.npz'}",
                    f"data.test.path={tiny_workspace / 'test.npz'}"]
    if yaml == "anp":
        sets.append("stages.score.methods.anp.iterations=40")
    sets += [f"stages.scan.detectors.{name}.{kv}"  # only the YAML's own detectors: naming one turns it on
             for name, _ in load_pipeline(REPO / "pipelines" / f"{yaml}.yaml", sets).stages.scan.configured()
             for kv in SMALL_SCAN[name]]
    args = [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(cli, ["score", str(REPO / "pipelines" / f"{yaml}.yaml"), "--out",
                                   str(tiny_workspace / "s"), *args])
    assert res.exit_code == 0, res.output
    preview = json.loads((tiny_workspace / "s" / "scores.json").read_text())
    report = run_pipeline(load_pipeline(REPO / "pipelines" / f"{yaml}.yaml", sets), tiny_workspace / "r").report
    pruning = json.loads((tiny_workspace / "r" / "pruning.json").read_text())
    assert report["scan"]["flagged"]  # the verdict is what the old preview ignored
    assert preview["selection"]["threshold"] == report["prune"]["threshold"]
    assert preview["selection"]["trace"] == pruning["selection"]
    flagged = {n: [i for i, f in enumerate(layer["flag"]) if f] for n, layer in preview["combined"]["layers"].items()}
    assert sum(map(len, flagged.values())) == report["prune"]["flagged"]


@pytest.fixture(scope="module")
def backdoored():
    return backdoored_tiny_model()[0]


def test_a_detector_and_a_repair_registered_outside_harden_run_in_a_pipeline(tiny_workspace):
    class CornerConfig(DetectorConfig):
        target: int = 2

    @dataclass(frozen=True)
    class CornerFinding:  # "a white 2x2 corner sends everything to `target`", whatever the model does
        kind: ClassVar[str] = "patch"
        detector: ClassVar[str]
        target: int | None

        def trigger(self):
            def apply(x, value):
                x = x.clone()
                x[..., :2, :2] = value
                return x

            return torch.tensor(1.0), apply, (0.0, 1.0)

        def statistic(self) -> float:
            return 9.0

        def class_statistics(self):
            return [0.0, 0.0, 9.0, 0.0]

        def summary(self):
            return {"target": self.target, "statistic": self.statistic()}

        def to_arrays(self):
            return {"target": np.array(self.target)}

        @classmethod
        def from_arrays(cls, a):
            return cls(int(a["target"]))

        def trigger_arrays(self):
            return {"corner": np.ones((2, 2))}

        def plot_row(self, axes, labels, marked):
            for ax in axes:
                ax.axis("off")

    @register_detector("test-corner", "a test's detector")
    class Corner:
        config_cls, finding_cls, reinverts = CornerConfig, CornerFinding, False

        def __init__(self, cfg):
            self.cfg = cfg

        def detect(self, model, data, contract, device):
            return CornerFinding(self.cfg.target)

        @staticmethod
        def row(summary):
            return "corner probe", f"statistic {summary['statistic']:.1f}", f"target {summary['target']}"

    class StampedConfig(RepairConfig):
        weight: float = 0.1

    steps = []

    @register_repair("test-stamped", "a test's repair: cross-entropy on images stamped with the verdict's trigger")
    class Stamped(OnVerdict):
        config_cls, label, order = StampedConfig, "stamped cross-entropy", 65

        def hook(self, ctx):
            weight, stamp = self.cfg.weight, ctx.scan.stamp

            class Hook(TrainHook):
                def extra_loss(self, model, x, y, logits):
                    steps.append(len(x))
                    return weight * torch.nn.functional.cross_entropy(model(ctx.model.contract.normalize(stamp(x))), y)

            return Hook()

    try:
        with pytest.raises(ConfigError, match=r"stages\.scan\.detectors\.test-corner\.target: Input should be"):
            load_pipeline(tiny_workspace / "pipeline.yaml", ["stages.scan.detectors={test-corner: {target: x}}"])
        cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
            "tracking.enabled=false", "stages.finetune.epochs=1", "stages.export.latency=false",
            "stages.scan.enabled=true", "stages.scan.detectors={test-corner: {target: 2}}",
            "stages.finetune.repairs={distill: {}, trigger_unlearn: {weight: 0.5}, test-stamped: {weight: 0.2}}"])
        report = run_pipeline(cfg, tiny_workspace / "out").report
        summary = render_summary(report)
    finally:
        DETECTORS.unregister("test-corner")
        REPAIRS.unregister("test-stamped")
    assert report["finetune"]["repairs"] == ["distill", "test-stamped", "trigger_unlearn"] and steps  # by `order`
    assert "stamped cross-entropy" in report["checked"]["repairs"][-1]
    assert report["scan"]["detector"] == "test-corner" and report["scan"]["target"] == 2
    assert report["itasr"]["detector"] == "test-corner" and 0 <= report["itasr"]["after"] <= 1
    with np.load(tiny_workspace / "out" / "itasr-trigger.npz") as z:
        assert z["corner"].shape == (2, 2)
    assert "corner probe" in summary and "test-corner" in render_summary(report)  # without the plug-in: generic
