"""Two pipelines writing to one sqlite MLflow store at the same time both complete and both register a version."""

import subprocess
import sys

from .test_cli import _mlflow_client


def test_two_runs_share_one_sqlite_store(tiny_workspace):
    db = tiny_workspace / "shared.db"
    procs = [subprocess.Popen([sys.executable, "-m", "harden.cli", "run", "pipeline.yaml", "--out", f"out{i}",
                               "--set", f"tracking.uri=sqlite:///{db}", "--set", "stages.finetune.max_steps=2",
                               "--set", "stages.export.latency=false", "--set", f"seed={i}"],
                              cwd=tiny_workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    client = _mlflow_client(db)
    versions = client.search_model_versions("name='harden-model'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FINISHED" for r in runs)


def test_two_runs_against_a_real_mlflow_server(tiny_workspace):
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen([os.path.join(bindir, "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tiny_workspace / 'server.db'}",
                               "--artifacts-destination", str(tiny_workspace / "server-artifacts"), "--workers", "1"],
                              cwd=tiny_workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        procs = [subprocess.Popen([sys.executable, "-m", "harden.cli", "run", "pipeline.yaml", "--out", f"srv{i}",
                                   "--set", f"tracking.uri={uri}", "--set", "stages.finetune.max_steps=2",
                                   "--set", "stages.export.latency=false"],
                                  cwd=tiny_workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in (1, 2)]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert sorted(int(v.version) for v in client.search_model_versions("name='harden-model'")) == [1, 2]
    finally:
        server.terminate()
        server.wait(timeout=30)
