"""Same seed, same CPU: the same scores, the same pruned architecture and byte-identical ONNX."""

import json

from harden.config.loading import load_pipeline
from harden.pipeline import run_pipeline


def test_two_runs_give_identical_scores_architecture_and_onnx(tiny_workspace):
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
        "tracking.enabled=false", "stages.finetune.max_steps=3", "stages.export.latency=false",
        "stages.prune.select.policy=accuracy_guard", "stages.score.methods.dormant={}"])
    reports = [run_pipeline(cfg, tiny_workspace / f"run{i}").report for i in (1, 2)]
    out = [tiny_workspace / f"run{i}" for i in (1, 2)]
    scores = [json.loads((o / "scores.json").read_text()) for o in out]
    assert scores[0] == scores[1]
    pruning = [json.loads((o / "pruning.json").read_text()) for o in out]
    assert pruning[0]["removed"] == pruning[1]["removed"] and pruning[0]["zeroed"] == pruning[1]["zeroed"]
    assert reports[0]["params"] == reports[1]["params"]
    assert (out[0] / "model.onnx").read_bytes() == (out[1] / "model.onnx").read_bytes()
    assert reports[0]["onnx"]["sha256"] == reports[1]["onnx"]["sha256"]
    assert (out[0] / "hardened.safetensors").read_bytes() == (out[1] / "hardened.safetensors").read_bytes()
