"""kill -9 at several points of a run, then `harden run --resume`: whatever finished before the kill is reused, not
recomputed, the interrupted MLflow runs end KILLED (never left RUNNING) and the registry gets exactly one version."""

import json
import signal
import subprocess
import sys
import time

import pytest

from .test_cli import _mlflow_client

ARGS = ["--set", "stages.scan.enabled=true", "--set", "stages.scan.detectors.neural_cleanse.epochs=3",
        "--set", "stages.scan.detectors.neural_cleanse.steps_per_epoch=2",
        "--set", "stages.finetune.epochs=15", "--set", "stages.finetune.patience=15",
        "--set", "stages.export.latency=false"]

# When to pull the plug (a condition on the run folder and the run's log, then a pause), and the stages that must
# have finished by then, so each point tests what its name says.
KILL_POINTS = {
    "during the scan": (lambda out, log: "▶ scan" in log, 0.3, set()),
    "during fine-tuning": (lambda out, log: bool(list((out / ".stages").glob("score-*.npz"))), 1.0,
                           {"scan", "score-clp"}),
    "after fine-tuning": (lambda out, log: bool(list((out / ".stages").glob("finetune-*.npz"))), 0.0,
                          {"scan", "score-clp", "finetune"}),
}


def _cached_stages(out) -> set[str]:
    return {p.stem.rsplit("-", 1)[0] for p in (out / ".stages").glob("*.npz")} if (out / ".stages").is_dir() else set()


def _versions(out) -> list[int]:
    client = _mlflow_client(out / "mlflow.db")
    return [int(v.version) for v in client.search_model_versions("name='harden-model'")]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_then_resume(tiny_workspace, point):
    ready, pause, must_have_finished = KILL_POINTS[point]
    out, log = tiny_workspace / "out", tiny_workspace / "run.log"
    cmd = [sys.executable, "-m", "harden.cli", "run", "pipeline.yaml", "--out", "out", *ARGS]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=tiny_workspace, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 300
        while not ready(out, log.read_text()):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(pause)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "report.json").exists(), f"the run finished before the kill {point}"
    finished = _cached_stages(out)
    assert must_have_finished <= finished, finished

    done = subprocess.run([*cmd, "--resume"], cwd=tiny_workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KILLED" in done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    assert finished <= set(report["resumed_from_cache"]), (finished, report["resumed_from_cache"])
    client = _mlflow_client(out / "mlflow.db")
    statuses = {r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    assert "RUNNING" not in statuses and "KILLED" in statuses
    assert _versions(out) == [1]

    if point == "during fine-tuning":  # a second resume of a finished run reuses every stage, registers nothing new
        again = subprocess.run([*cmd, "--resume"], cwd=tiny_workspace, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        report = json.loads((out / "report.json").read_text())
        assert {"scan", "score-clp", "finetune"} <= set(report["resumed_from_cache"])
        assert _versions(out) == [1]
