"""ONNX latency of finished benchmark runs, re-measured side by side (hardened model.onnx against the source model
exported by harden's own exporter and onnxslim, so both sides went through the same tool chain).

    python benchmarks/latency.py runs/bench-scan/recommended --name zoo-latency [--readme]

Run it on a quiet machine: the pipelines time latency while other jobs may share the CPU. Writes
benchmarks/results/<name>.json and .md (batch 1 and 64, fastest and median run of each side, and their ratio), with
the source measured against itself the same way as the control: how far apart two identical files come out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def source_onnx(folder: Path, out: Path) -> Path:
    """The unpruned source model as ONNX, exported once per run folder."""
    from harden.deploy.onnx import write_reference
    from harden.ingest.models.loading import load_model

    path = out / "source.onnx"
    if not path.is_file():
        art = load_model(folder)
        write_reference(art.model, art.contract.input_size, path)
    return path


def table(rows: list[dict]) -> str:
    """Markdown: per batch size, the fastest runs' times and ratio, then the ratio of the medians; the control column
    gives the source-against-itself ratios (fastest) that show the noise."""
    lines = ["| model | params after / before | batch 1: ms source → hardened (ratio fastest; median) | batch 64: ms "
             "source → hardened (ratio fastest; median) | control: source / itself (batch 1, 64) |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{v['reference_ms']:.2f} → {v['candidate_ms']:.2f} ({v['ratio']:.3f}; "
                 f"{v['candidate_median_ms'] / v['reference_median_ms']:.3f})"
                 for v in (r["latency"]["batch_1"], r["latency"]["batch_64"])]
        control = ", ".join(f"{r['source_vs_itself'][b]['ratio']:.3f}" for b in ("batch_1", "batch_64"))
        lines.append(f"| {r['model']} | {r['params_ratio']:.2f} | " + " | ".join(cells) + f" | {control} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from benchmarks.run import publish
    from harden.deploy.latency import compare

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="a folder of run folders (each with model.onnx and report.json)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--readme", action="store_true", help="also splice the table into docs/benchmarks.md (bench:<name>)")
    args = ap.parse_args()
    rows = []
    for out in sorted(p for p in args.runs.iterdir() if (p / "model.onnx").is_file() and (p / "report.json").is_file()):
        report = json.loads((out / "report.json").read_text())
        source = source_onnx(Path(report["source"]["path"]).parent if "source" in report else out, out)
        lat = compare(source, out / "model.onnx", (1, 64), rounds=args.rounds)
        # The control: the source against itself, measured the same way, is how far apart two identical files come out.
        same = compare(source, source, (1, 64), rounds=args.rounds)
        rows.append({"run": str(out), "model": out.name, "params_ratio": report["params"]["after"] / report["params"]["before"],
                     "latency": lat, "source_vs_itself": same})
        print(out.name, {k: round(v["ratio"], 3) for k, v in lat.items()},
              "control", {k: round(v["ratio"], 3) for k, v in same.items()}, flush=True)
    meta = {"runs": str(args.runs), "machine": f"{os.cpu_count()} CPU cores", "threads": 1, "rounds": args.rounds,
            "load_average_at_end": os.getloadavg()}
    publish(args.name, {"meta": meta, "rows": rows}, table(rows), args.readme)


if __name__ == "__main__":
    main()
