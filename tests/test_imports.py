"""The package layout holds: every module imports on its own, module-level imports form no cycle, the schema imports
without torch, the hardening path never loads the red-team tools, and harden's own modules are imported at the top
of a file (function-local imports are for heavy optional dependencies only)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARDEN = REPO / "harden"
# third-party packages a function may import on first use: each costs seconds to import and most runs or commands
# never touch them (serving, INT8, the registry, plots)
LAZY_OK = {"onnx", "onnxruntime", "onnxslim", "onnx2torch", "mlflow", "matplotlib", "torchvision", "timm", "PIL"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module(p) for p in HARDEN.rglob("*.py"))
KNOWN = set(MODULES)


def _top_level_imports(path: Path) -> set[str]:
    """harden modules a file imports when it is imported (not under TYPE_CHECKING, not inside a function)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    pkg = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule, else a name of pkg
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in KNOWN else base)
    return found & KNOWN


def test_module_level_imports_form_no_cycle():
    graph = {m: set() for m in MODULES}
    for p in HARDEN.rglob("*.py"):
        m = _module(p)
        graph[m] |= _top_level_imports(p)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n == m:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in MODULES:
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _import_alone(module: str) -> tuple[str, str]:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    return module, (r.stderr.strip().splitlines() or ["?"])[-1] if r.returncode else ""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    with ThreadPoolExecutor(4) as pool:
        failed = [f"{m}: {err}" for m, err in pool.map(_import_alone, MODULES) if err]
    assert not failed, failed


def test_the_schema_imports_and_validates_every_shipped_pipeline_without_torch():
    code = (
        "import json, sys, yaml, pathlib\n"
        "for m in ('torch', 'torchvision', 'torch_pruning', 'onnx', 'onnxruntime', 'mlflow'): sys.modules[m] = None\n"
        "from harden.config.schema import PipelineConfig\n"
        "for p in sorted(pathlib.Path('pipelines').glob('*.yaml')):\n"
        "    PipelineConfig.model_validate(yaml.safe_load(p.read_text()))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('harden'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert loaded and all(m.startswith(("harden.config", "harden.core")) or m == "harden" for m in loaded), loaded


def test_the_runner_alone_registers_every_built_in_stage():
    # benchmarks and library users call run_pipeline without the CLI; a runner that registered no stage ran nothing
    # and wrote an empty report (it happened once, when an import was rewritten)
    code = ("from harden.pipeline import run_pipeline\n"
            "from harden.core.stage import ordered\n"
            "print(' '.join(s.name for s in ordered()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()
    for stage in ("ingest", "scan", "score", "select", "prune", "finetune", "export", "verify", "gate", "register"):
        assert stage in names, names


def test_the_hardening_path_never_loads_the_red_team_tools():
    code = ("import sys, harden.cli, harden.pipeline, harden.stages\n"
            "print([m for m in sys.modules if m.startswith('harden.redteam')])")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


# The CLI's red-team commands load harden.redteam when they run, so that `harden run` never does.
CLI_REDTEAM = {("harden/cli.py", "harden.redteam")}


@pytest.mark.parametrize("path", sorted(HARDEN.rglob("*.py")), ids=lambda p: p.relative_to(HARDEN).as_posix())
def test_no_function_local_import_of_harden_or_the_standard_library(path: Path):
    rel = path.relative_to(REPO).as_posix()
    offenders = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if mod.split(".")[0] in LAZY_OK or any(rel == f and mod.startswith(m) for f, m in CLI_REDTEAM):
                    continue
                offenders.append(f"line {node.lineno}: {mod}")
    assert not offenders, offenders
