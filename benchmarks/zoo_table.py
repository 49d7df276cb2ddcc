"""Render a Markdown table from harden run folders (report.json), e.g. the zoo runs behind the README's table.

    python benchmarks/zoo_table.py runs/demo runs/zoo-*   > benchmarks/results/zoo.md

Every number comes from the reports; nothing is typed by hand. DER follows BackdoorBench's formula
[max(0, dASR) - max(0, dACC) + 1] / 2 with dASR = ASR before - after and dACC = accuracy before - after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    r = json.loads((run / "report.json").read_text())
    acc = r["clean_acc"]
    asr = r.get("asr", {})
    trig = max(asr, key=lambda k: asr[k]["before"], default=None)  # the model's own attack: highest ASR before
    d_acc = acc["before"] - acc["after"]
    cells = [Path(r["source"]["path"]).parent.name, f"{100 * acc['before']:.2f}", f"{100 * acc['after']:.2f}",
             f"{-100 * d_acc:+.2f}"]
    if trig:
        a = asr[trig]
        der = (max(0.0, a["before"] - a["after"]) - max(0.0, d_acc) + 1) / 2
        cells += [trig, f"{100 * a['before']:.2f}", f"{100 * a['after']:.2f}", f"{100 * der:.1f}"]
    else:
        cells += ["—"] * 4
    p = r["params"]
    cells += [f"{r['prune']['threshold']}", f"{p['before']:,} → {p['after']:,}", f"{r['onnx']['max_abs_diff']:.1e}",
              f"{r['seconds']['total']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main(runs: list[str]) -> None:
    print("| model | clean acc before | after | Δ | trigger (highest ASR before) | ASR before | ASR after | DER | "
          "u chosen | params | "
          "ONNX max diff | seconds |")
    print("|" + "---|" * 12)
    for run in runs:
        print(row(Path(run)))


if __name__ == "__main__":
    main(sys.argv[1:])
