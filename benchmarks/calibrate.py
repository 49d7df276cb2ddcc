"""Detector thresholds from clean models only: each detector's statistic on the red-team benchmark's clean models.

    python benchmarks/calibrate.py PIPELINE [--split dev] [--fpr 0.05] [--name calibration-dev]

Runs the pipeline's own scan (the runner stopped after it) on every built clean model of the split, and writes
benchmarks/results/<name>.{json,md}: per detector, its statistic on each clean model (the null) and per class, the
threshold that null supports, and the false-positive rate that threshold implies. A model-level threshold is the
highest clean statistic times (1 + margin) when there are too few clean models to read the (1 - fpr) quantile
off the null; the report says which. Nothing here reads a backdoored model: that is what keeps the thresholds
honest on models the benchmark never saw. Adopt one in a pipeline as
`stages.scan.detectors.<name>.statistic_threshold` and say in a comment which split it came from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import redteam  # noqa: E402
from harden.config.loading import load_pipeline  # noqa: E402
from harden.pipeline import run_pipeline  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def null_statistics(pipeline: Path, models: list[Path], runs: Path, overrides: list[str]) -> dict[str, Any]:
    """Per detector: {model name: (model-level statistic, per-class statistics)} on each clean model."""
    out: dict[str, dict[str, Any]] = {}
    for folder in models:
        cfg = load_pipeline(pipeline, [f"model.path={folder}", "tracking.enabled=false", "stages.scan.enabled=true",
                                       *overrides])
        state = run_pipeline(cfg, runs / folder.name, until="scan").state
        for name, finding in state.scan.findings.items():
            out.setdefault(name, {})[folder.name] = {"statistic": finding.statistic(),
                                                      "classes": finding.class_statistics(),
                                                      "flags": finding.target is not None}
    return out


def threshold(null: list[float], fpr: float, margin: float) -> tuple[float, str]:
    """The (1 - fpr) quantile of the clean null when it has the resolution (n >= 1 / fpr), else the highest clean
    value raised by ``margin``: with n clean models and none above it, the model-level false-positive rate is at
    most about 3 / n (the rule of three), which the report states."""
    n = len(null)
    if n >= math.ceil(1 / fpr):
        return float(np.quantile(null, 1 - fpr)), f"{1 - fpr:.0%} quantile of {n} clean models"
    return max(null) * (1 + margin), f"highest of {n} clean models + {margin:.0%} (FPR <= ~{min(1.0, 3 / n):.0%})"


def calibrate(null: dict[str, Any], fpr: float, margin: float) -> dict[str, Any]:
    out = {}
    for name, per_model in null.items():
        stats = [v["statistic"] for v in per_model.values()]
        t, how = threshold(stats, fpr, margin)
        classes = [c for v in per_model.values() for c in v["classes"]]
        out[name] = {"threshold": t, "how": how, "clean_models": len(stats), "null": stats,
                     "own_rule_flags": sum(v["flags"] for v in per_model.values()),
                     "class_values_above": sum(c >= t for c in classes), "class_values": len(classes)}
    return out


def table(cal: dict[str, Any], split: str) -> str:
    lines = [f"Detector thresholds from the clean models of the `{split}` split only (benchmarks/calibrate.py).", "",
             "| detector | clean models | statistic on each | own rule flags | threshold | from |",
             "|---|---|---|---|---|---|"]
    for name, c in cal.items():
        lines.append(f"| {name} | {c['clean_models']} | {', '.join(f'{v:.3g}' for v in c['null'])} | "
                     f"{c['own_rule_flags']} | {c['threshold']:.3g} | {c['how']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline", type=Path)
    ap.add_argument("--split", default="dev", choices=redteam.SPLITS)
    ap.add_argument("--fpr", type=float, default=0.05, help="false-positive rate the threshold aims at, per model")
    ap.add_argument("--margin", type=float, default=0.1, help="raise over the highest clean value when the null is "
                    "too small for the quantile")
    ap.add_argument("--name", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--runs", type=Path, default=Path("harden-runs/calibrate"))
    args = ap.parse_args()
    spec, root = redteam.load_spec(), redteam.cache_dir()
    clean = [root / m.name for m in spec.models
             if m.split == args.split and m.attack == "clean" and redteam.state(spec, m, root) == "built"]
    if not clean:
        sys.exit(f"no built clean model of the {args.split} split under {root}: run benchmarks/redteam.py train")
    cal = calibrate(null_statistics(args.pipeline, clean, args.runs, args.overrides), args.fpr, args.margin)
    name = args.name or f"calibration-{args.split}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"split": args.split, "fpr": args.fpr, "detectors": cal},
                                                     indent=1))
    (RESULTS / f"{name}.md").write_text(table(cal, args.split))
    print(table(cal, args.split))


if __name__ == "__main__":
    main()
