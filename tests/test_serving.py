"""Registry and serving contract: a gate-passed tiny model is promoted, inspected back to its source, served by
`mlflow models serve` on loopback and answers a real HTTP request; a Triton repository is written for its ONNX."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from .conftest import synthetic_images
from .test_cli import _harden


@pytest.fixture(scope="module")
def passed_run(tmp_path_factory):
    from .conftest import write_smoke_workspace

    ws = write_smoke_workspace(tmp_path_factory.mktemp("serve"))
    proc = _harden("run", "pipeline.yaml", "--out", "out", "--set", "gate.enabled=true", "--set", "gate.max_asr=1.0",
                   "--set", "stages.finetune.max_steps=2", "--set", "stages.export.latency=false", cwd=ws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ws, f"sqlite:///{ws / 'out' / 'mlflow.db'}"


def test_inspect_shows_gate_and_lineage_to_source_and_data(passed_run):
    ws, uri = passed_run
    report = json.loads((ws / "out" / "report.json").read_text())
    table = _harden("inspect", "models:/harden-model@production", "--tracking-uri", uri, cwd=ws)
    assert table.returncode == 0, table.stderr
    assert not table.stdout.lstrip().startswith("{")  # a table for people, not raw JSON
    for fragment in ("harden-model version 1", "candidate, production", "gate", "passed", "clean accuracy",
                     "ASR patch", report["source"]["sha256"], "data clean-tune"):
        assert fragment in table.stdout, fragment
    proc = _harden("inspect", "models:/harden-model@production", "--tracking-uri", uri, "--json", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["tags"]["gate"] == "passed" and set(doc["aliases"]) == {"candidate", "production"}
    assert doc["lineage"]["source"]["source_sha256"] == report["source"]["sha256"]
    assert doc["tags"]["clean_sha256"] == report["data"]["clean_sha256"]
    assert len(doc["lineage"]["data"]["clean-tune"]) == 64
    bad = _harden("inspect", "models:/nope@production", "--tracking-uri", uri, cwd=ws)
    assert bad.returncode == 2 and "not found in the registry" in bad.stderr and "Traceback" not in bad.stderr


def test_promote_moves_an_alias_only_for_a_passed_gate(passed_run, tiny_workspace):
    ws, uri = passed_run
    ok = _harden("promote", "models:/harden-model/1", "--alias", "staging", "--tracking-uri", uri, cwd=ws)
    assert ok.returncode == 0 and "staging -> version 1" in ok.stdout
    failing = _harden("run", "pipeline.yaml", "--out", "out", "--set", "gate.enabled=true", "--set",
                      "gate.max_onnx_diff=1e-12", "--set", "stages.finetune.max_steps=2", cwd=tiny_workspace)
    assert failing.returncode == 3
    other = f"sqlite:///{tiny_workspace / 'out' / 'mlflow.db'}"
    refused = _harden("promote", "models:/harden-model@candidate", "--tracking-uri", other, cwd=tiny_workspace)
    assert refused.returncode == 2 and "its gate failed" in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_right_class(passed_run):
    ws, uri = passed_run
    import onnxruntime as ort

    onnx_path = ws / "out" / "model.onnx"
    x, _ = synthetic_images(3, seed=5)
    import torch

    from harden.evaluate.metrics import onnx_predictor  # noqa: F401  (same normalisation as the pipeline)

    from .conftest import TINY_CONTRACT

    inputs = TINY_CONTRACT.normalize(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy()
    expected = ort.InferenceSession(str(onnx_path)).run(None, {"input": inputs})[0].argmax(1)
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/harden-model@production",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri,  # mlflow execs uvicorn from PATH
                                   "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")},
                              cwd=ws,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"inputs": inputs.tolist()}).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            if server.poll() is not None:
                pytest.fail("mlflow models serve exited: " + server.stderr.read().decode()[-2000:])
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(req, timeout=10).read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "no answer from the server within 120 s"
        preds = answer["predictions"]
        logits = np.array(preds["logits"] if isinstance(preds, dict) else [p["logits"] for p in preds])
        assert logits.shape == (3, 4) and (logits.argmax(1) == expected).all()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_triton_repository_has_dims_batching_and_labels(passed_run, tmp_path):
    ws, _ = passed_run
    proc = _harden("export", "triton", "out/model.onnx", "--out", str(tmp_path / "repo"), "--name", "tiny", cwd=ws)
    assert proc.returncode == 0, proc.stderr
    cfg = (tmp_path / "repo" / "tiny" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "max_batch_size: 64" in cfg
    assert "dims: [ 3, 16, 16 ]" in cfg and "dims: [ 4 ]" in cfg and "dynamic_batching" in cfg
    assert (tmp_path / "repo" / "tiny" / "labels.txt").read_text().split() == ["a", "b", "c", "d"]
    assert (tmp_path / "repo" / "tiny" / "1" / "model.onnx").read_bytes() == (ws / "out" / "model.onnx").read_bytes()
    (tmp_path / "junk.onnx").write_text("not onnx")
    bad = _harden("export", "triton", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "r2"), cwd=ws)
    assert bad.returncode == 2 and "not a readable ONNX" in bad.stderr


def test_onnx_only_server_answers_images_and_refuses_bad_input(passed_run):
    ws, _ = passed_run
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "harden.deploy.http", str(ws / "out" / "model.onnx"), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        x, _ = synthetic_images(2, seed=9)
        import onnxruntime as ort
        import torch

        from .conftest import TINY_CONTRACT

        norm = TINY_CONTRACT.normalize(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy()
        expected = ort.InferenceSession(str(ws / "out" / "model.onnx")).run(None, {"input": norm})[0].argmax(1)

        def post(doc):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", json.dumps(doc).encode(),
                                         {"Content-Type": "application/json"})
            try:
                return 200, json.loads(urllib.request.urlopen(req, timeout=10).read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, server.stderr.read().decode()[-1000:]
                time.sleep(0.5)
        code, doc = post({"images": x.tolist()})
        assert code == 200 and doc["classes"] == expected.tolist() and doc["labels"][0] in "abcd"
        code, doc = post({"images": x[:, :8].tolist()})
        assert code == 400 and "HWC" in doc["error"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_model_path_can_be_a_registry_or_run_uri(tiny_workspace):
    """A vendor's model folder logged to MLflow is hardened straight from models:/... or runs:/..."""
    from mlflow.tracking import MlflowClient

    from harden.config.loading import load_pipeline
    from harden.core.errors import ModelLoadError
    from harden.ingest.models.loading import sha256_file
    from harden.pipeline import run_pipeline

    uri = f"sqlite:///{tiny_workspace / 'vendor.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("vendor", artifact_location=(tiny_workspace / "vendor-art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(tiny_workspace / "model"), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("vendor-net")
    mv = client.create_model_version("vendor-net", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("vendor-net", "candidate", mv.version)
    want = sha256_file(tiny_workspace / "model" / "model.safetensors")
    for source in ("models:/vendor-net@candidate", f"runs:/{run.info.run_id}/model"):
        cfg = load_pipeline(tiny_workspace / "pipeline.yaml", [
            f"model.path={source}", f"tracking.uri={uri}", "stages.finetune.max_steps=1",
            "stages.export.latency=false"])
        report = run_pipeline(cfg, tiny_workspace / "out-uri").report
        assert report["source"]["sha256"] == want and report["source"]["uri"] == source
    cfg = load_pipeline(tiny_workspace / "pipeline.yaml", ["model.path=models:/vendor-net@nope", f"tracking.uri={uri}"])
    with pytest.raises(ModelLoadError, match="cannot fetch it"):
        run_pipeline(cfg, tiny_workspace / "out-bad")

