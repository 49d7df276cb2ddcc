"""The runner knows no stage or method; a stage registered outside harden/ runs; `harden score` and `harden run`
choose the same cut because they are the same runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import harden.pipeline as runner
from harden.cli import cli
from harden.config import load_pipeline
from harden.core.stage import STAGES, register_stage
from harden.pipeline import run_pipeline
from harden.scorers import SCORERS

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


SMALL = ["device=cpu", "tracking.enabled=false", "stages.scan.epochs=8", "stages.scan.steps_per_epoch=4",
         "stages.scan.warp.steps=10", "stages.scan.grating.directions=6", "stages.scan.grating.images=40",
         "stages.finetune.max_steps=2", "stages.export.latency=false"]


@pytest.mark.parametrize("yaml", ["recommended", "anp", "mcl"])
def test_score_and_run_choose_the_same_cut(yaml, tiny_workspace, backdoored):
    write_model_folder(tiny_workspace / "model", backdoored)
    sets = SMALL + [f"model.path={tiny_workspace / 'model'}", f"data.clean.path={tiny_workspace / 'clean.npz'}",
                    f"data.test.path={tiny_workspace / 'test.npz'}"]
    if yaml == "anp":
        sets.append("stages.score.methods.anp.iterations=40")
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
