"""kill -9 in the middle of a run, then `harden run --resume`: finished stages are not recomputed, the interrupted
MLflow runs end KILLED (never left RUNNING) and the registry gets exactly one version."""

import json
import signal
import subprocess
import sys
import time

from .test_cli import _mlflow_client

ARGS = ["--set", "stages.scan.enabled=true", "--set", "stages.scan.epochs=3", "--set", "stages.scan.steps_per_epoch=2",
        "--set", "stages.finetune.epochs=15", "--set", "stages.finetune.patience=15",
        "--set", "stages.export.latency=false"]


def test_kill_during_finetune_then_resume(tiny_workspace):
    cmd = [sys.executable, "-m", "harden.cli", "run", "pipeline.yaml", "--out", "out", *ARGS]
    proc = subprocess.Popen(cmd, cwd=tiny_workspace, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stages = tiny_workspace / "out" / ".stages"
    deadline = time.time() + 300
    while not list(stages.glob("score-*.npz")):  # scan and score are done: fine-tuning is under way
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tiny_workspace / "out" / "report.json").exists()

    done = subprocess.run([*cmd, "--resume"], cwd=tiny_workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KILLED" in done.stdout + done.stderr
    report = json.loads((tiny_workspace / "out" / "report.json").read_text())
    assert {"scan", "score-clp"} <= set(report["resumed_from_cache"])
    client = _mlflow_client(tiny_workspace / "out" / "mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    statuses = {r.info.status for r in runs}
    assert "RUNNING" not in statuses and "KILLED" in statuses
    assert [int(v.version) for v in client.search_model_versions("name='harden-model'")] == [1]

    again = subprocess.run([*cmd, "--resume"], cwd=tiny_workspace, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((tiny_workspace / "out" / "report.json").read_text())
    assert {"scan", "score-clp", "finetune"} <= set(report["resumed_from_cache"])
    assert [int(v.version) for v in client.search_model_versions("name='harden-model'")] == [1]  # not registered twice
