"""End to end through the real CLI on tiny_cnn + synthetic data, with a real sqlite MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harden.cli import cli
from harden.core.errors import StageError


def _harden(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harden.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _mlflow_client(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from .conftest import write_smoke_workspace

    ws = write_smoke_workspace(tmp_path_factory.mktemp("ws"))
    proc = _harden("run", "pipeline.yaml", "--out", "out", cwd=ws)
    return ws, proc


def test_run_succeeds_and_prints_summary(smoke_run):
    ws, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before / after" in proc.stdout and "ASR patch" in proc.stdout


def test_report_has_the_promised_keys(smoke_run):
    ws, _ = smoke_run
    r = json.loads((ws / "out" / "report.json").read_text())
    for key in ("before", "after"):
        assert 0 <= r["clean_acc"][key] <= 1 and 0 <= r["asr"]["patch"][key] <= 1
        assert r["params"][key] > 0 and r["macs"][key] > 0
    assert r["params"]["after"] < r["params"]["before"]  # channels were physically removed
    assert len(r["source"]["sha256"]) == 64 and Path(r["onnx"]["path"]).is_file()
    assert r["onnx"]["max_abs_diff"] <= 1e-4 and r["clean_acc"]["after_with"] == "onnxruntime"
    assert r["mlflow"]["run_id"] and r["mlflow"]["model_version"] == "1"
    assert set(r["seconds"]) >= {"ingest", "score", "prune", "finetune", "export", "verify", "total"}


def test_onnx_carries_the_input_contract(smoke_run):
    import onnxruntime as ort

    ws, _ = smoke_run
    r = json.loads((ws / "out" / "report.json").read_text())
    meta = ort.InferenceSession(r["onnx"]["path"]).get_modelmeta().custom_metadata_map
    assert meta["harden.input_size"] == "3,16,16" and meta["harden.labels"].split("\n") == ["a", "b", "c", "d"]
    assert meta["harden.source_sha256"] == r["source"]["sha256"]
    assert meta["harden.pipeline_sha256"] == r["pipeline"]["sha256"]


def test_mlflow_holds_parent_stage_runs_and_tagged_version(smoke_run):
    ws, _ = smoke_run
    r = json.loads((ws / "out" / "report.json").read_text())
    client = _mlflow_client(ws / "out" / "mlflow.db")
    parent = client.get_run(r["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(
        ["ingest", "score", "select", "prune", "finetune", "export", "verify", "latency"])
    assert all(c.info.status == "FINISHED" for c in children)
    mv = client.get_model_version_by_alias("harden-model", "candidate")
    assert str(mv.version) == r["mlflow"]["model_version"]
    assert float(mv.tags["clean_acc"]) == r["clean_acc"]["after"]
    assert float(mv.tags["asr"]) == r["asr"]["patch"]["after"]
    assert mv.tags["source_sha256"] == r["source"]["sha256"]
    ingest = client.get_run(next(c.info.run_id for c in children if c.info.run_name == "ingest"))
    logged = {d.dataset.name: {t.key: t.value for t in d.tags} for d in ingest.inputs.dataset_inputs}
    assert set(logged) == {"clean-tune", "clean-heldout", "test"}
    assert all(len(tags["sha256"]) == 64 for tags in logged.values())  # full-content hash, not MLflow's digest


def test_validate_reports_three_mistakes_and_exits_nonzero(tiny_workspace):
    bad = tiny_workspace / "bad.yaml"
    bad.write_text((tiny_workspace / "pipeline.yaml").read_text()
                   .replace("seed: 0", "seed: zero").replace("epochs: 2", "epocs: 2").replace("round_to: 8", "round_to: 0"))
    res = CliRunner().invoke(cli, ["validate", str(bad)])
    assert res.exit_code == 2
    for key in ("seed", "stages.finetune.epocs", "stages.prune.round_to"):
        assert key in res.output
    assert "Traceback" not in res.output


def test_validate_ok(tiny_workspace):
    res = CliRunner().invoke(cli, ["validate", str(tiny_workspace / "pipeline.yaml")])
    assert res.exit_code == 0 and "OK" in res.output


def test_user_mistake_is_one_message_not_a_traceback(tiny_workspace):
    proc = _harden("run", "pipeline.yaml", "--set", "model.path=missing_model", cwd=tiny_workspace)
    assert proc.returncode == 2
    assert "model.path" in proc.stderr and "Traceback" not in proc.stderr


def test_failed_stage_marks_its_runs_failed(tiny_workspace, monkeypatch):
    import harden.stages.verify as verify

    def boom(*a, **k):
        raise StageError("verify", "simulated failure")

    monkeypatch.setattr(verify, "run", boom)
    out = tiny_workspace / "out"
    res = CliRunner().invoke(cli, ["run", str(tiny_workspace / "pipeline.yaml"), "--out", str(out),
                                   "--set", "stages.finetune.epochs=1"])
    assert res.exit_code == 2 and "simulated failure" in res.output
    client = _mlflow_client(out / "mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["verify"] == "FAILED" and status["smoke"] == "FAILED" and status["export"] == "FINISHED"
    assert not (out / "report.json").exists()


def test_list_shows_registries():
    res = CliRunner().invoke(cli, ["list"])
    assert res.exit_code == 0
    for name in ("preact_resnet18", "cifar_resnet18", "cifar_vgg11_bn", "tiny_cnn", "clp", "patch", "finetune"):
        assert name in res.output


def test_score_previews_fused_scores_without_pruning(tiny_workspace):
    res = CliRunner().invoke(cli, ["score", str(tiny_workspace / "pipeline.yaml"), "--out", str(tiny_workspace / "s"),
                                   "--set", "stages.score.methods.dormant={}",
                                   "--set", "stages.prune.select.policy=top_fraction"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tiny_workspace / "s" / "scores.json").read_text())
    assert set(doc["per_method"]) == {"clp", "dormant"} and doc["combined"]["method"].startswith("fused:")
    assert doc["selection"]["policy"] == "top_fraction" and "flagged" in res.output
    for name in ("clp", "dormant", "fused"):
        assert (tiny_workspace / "s" / f"scores-{name}.png").stat().st_size > 1000
    assert not (tiny_workspace / "s" / "model.onnx").exists()


def test_tracking_store_of_one_run_does_not_leak_into_the_next(tmp_path, monkeypatch):
    import os

    from harden.lineage.tracker import MlflowTracker, default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    MlflowTracker(default_tracking_uri(tmp_path / "a"), "x", tmp_path / "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert default_tracking_uri(tmp_path / "b").endswith("b/mlflow.db")
