"""No stage that decides may read the ground truth: only verify, the zoo trainer and benchmarks may."""

import ast
from pathlib import Path

HARDEN = Path(__file__).resolve().parents[1] / "harden"
ALLOWED = {"cli.py"}  # and the red-team package, which trains the models and writes their ground truth


def test_deciding_code_never_imports_ground_truth_or_reads_attack_json():
    offenders = []
    for path in HARDEN.rglob("*.py"):
        rel = path.relative_to(HARDEN).as_posix()
        if rel in ALLOWED or rel.startswith("redteam/"):
            continue
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and "groundtruth" in node.module:
                offenders.append(f"{rel}: imports {node.module}")
            if isinstance(node, ast.Constant) and node.value in ("attack.json", "trigger.npz"):
                offenders.append(f"{rel}: mentions {node.value!r}")
    assert not offenders, offenders
