"""Efficacy benchmark: every pipeline x every model folder, one table.

    python benchmarks/run.py --name zoo pipelines/clp.yaml pipelines/finetune.yaml pipelines/recommended.yaml

Models: every folder with a config.json under --models (default $HARDEN_ZOO, else ../shared/zoo). For each model the
verify stage measures the model's own trigger, read from its attack.json / trigger.npz. That ground truth is used
here, for the report only; the pipelines' deciding stages never see it (tests/test_no_peeking.py).

Writes benchmarks/results/<name>.json (every row), <name>.md (the table the README shows) and <name>-bars.png.
Runs are kept under --runs; a finished run (report.json present and the same pipeline hash) is reused, and an
unfinished one resumes from its stage cache, so an interrupted benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.latency import source_onnx  # noqa: E402
from harden.config.loading import digest_of_resolved, load_pipeline  # noqa: E402
from harden.core.errors import HardenError  # noqa: E402
from harden.deploy.latency import compare  # noqa: E402
from harden.pipeline import run_pipeline  # noqa: E402
from harden.redteam.groundtruth import read_attack, trigger_from_attack  # noqa: E402


def model_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


def der(d_asr: float, d_acc: float) -> float:
    """BackdoorBench's defense effectiveness rating, [max(0, dASR) - max(0, dACC) + 1] / 2, from the means (their
    per-sample variant has a sign error). dASR = ASR before - after; dACC = accuracy before - after."""
    return (max(0.0, d_asr) - max(0.0, d_acc) + 1) / 2


def configure(pipeline: Path, folder: Path, overrides: list[str], source: str = "folder"):
    model = folder / "model.onnx" if source == "onnx" else folder
    cfg = load_pipeline(pipeline, [f"model.path={model}", *overrides], cwd=Path.cwd())
    attack = read_attack(folder) or {}
    trig = trigger_from_attack(folder, attack) if attack else None
    verify = cfg.stages.verify.model_copy(update={"triggers": {attack["attack"]: trig} if trig else {}})
    stages = cfg.stages.model_copy(update={"verify": verify})
    tracking = cfg.tracking.model_copy(update={"experiment": f"bench-{cfg.name}"})
    return cfg.model_copy(update={"stages": stages, "tracking": tracking}), attack


def row_label(pipeline: Path, source: str) -> str:
    """The table's pipeline column: the YAML's stem, with the source when the model came from its model.onnx."""
    return pipeline.stem if source == "folder" else f"{pipeline.stem} ({source})"


def run_one(pipeline: Path, folder: Path, runs: Path, overrides: list[str], reuse_stale: bool = False,
            source: str = "folder") -> dict[str, Any]:
    cfg, attack = configure(pipeline, folder, overrides, source)
    label = row_label(pipeline, source)
    out = runs / label.replace(" (", "@").rstrip(")") / folder.name
    report_path = out / "report.json"
    if report_path.is_file():
        old = json.loads(report_path.read_text())
        same = cfg.digest() in (old.get("pipeline", {}).get("sha256"), digest_of_resolved(out / "config.resolved.yaml"))
        if same or reuse_stale:
            print(f"  reuse {out}" + ("" if same else " (stale: made with another pipeline hash)"), flush=True)
            return {**row(label, folder, attack, old, out), "stale": not same}
    print(f"  run {label} on {folder.name}", flush=True)
    # resume: the finished stages of a run interrupted mid-pipeline come from its stage cache (keyed by their inputs)
    report = run_pipeline(cfg, out, pipeline.resolve(), resume=True).report
    return row(label, folder, attack, report, out)


def row(pipeline: str, folder: Path, attack: dict[str, Any], r: dict[str, Any], out: Path) -> dict[str, Any]:
    name = attack.get("attack", "unknown")
    acc = r["clean_acc"]
    asr = r.get("asr", {}).get(name)
    d_acc = acc["before"] - acc["after"]
    res = {
        "pipeline": pipeline, "model": folder.name, "attack": name,
        "clean_acc_before": acc["before"], "clean_acc_after": acc["after"],
        "asr_before": asr["before"] if asr else None, "asr_after": asr["after"] if asr else None,
        "robust_acc_after": r.get("robust_acc", {}).get(name, {}).get("after"),
        "der": der(asr["before"] - asr["after"], d_acc) if asr else None,
        "params_before": r["params"]["before"], "params_after": r["params"]["after"],
        "macs_before": r["macs"]["before"], "macs_after": r["macs"]["after"],
        "threshold": r.get("prune", {}).get("threshold"), "seconds": r["seconds"], "run": str(out),
        "pipeline_sha256": r.get("pipeline", {}).get("sha256"),
    }
    onnx = r.get("onnx", {}).get("path")
    if onnx and Path(onnx).is_file():
        res["onnx_max_abs_diff"] = r["onnx"]["max_abs_diff"]
        # The run's own side-by-side measurement when it made one; otherwise measured here the same way.
        lat = r.get("latency") or {k: {"ratio": v["ratio"]} for k, v in compare(source_onnx(folder, out),
                                                                             Path(onnx), (1, 64)).items()}
        res["latency_ratio"] = {k: v["ratio"] for k, v in lat.items()}
    if "int8" in r:
        res["int8"] = {"clean_acc": r["int8"]["clean_acc"], "asr": r["int8"]["asr"].get(name),
                       "top1_agreement": r["int8"].get("top1_agreement_vs_fp32"),
                       "latency_ratio_vs_fp32": {k: v["ratio"] for k, v in r["int8"]["latency_vs_fp32"].items()}}
    if "gate" in r:
        res["gate"] = {"passed": r["gate"]["passed"], "failed": [c["message"] for c in r["gate"]["checks"]
                                                                 if not c["passed"]]}
    return res


def trigger_floors(folders: list[Path], test_path: Path | None) -> dict[str, float]:
    """Each attack's floor: the ASR of the clean model(s) on that trigger (test images sent to the target that no
    defense can be blamed for). DER and 'ASR after' are judged against it. Ground truth, report only."""
    from harden.evaluate.metrics import attack_metrics, torch_predictor
    from harden.evaluate.triggers import build_trigger
    from harden.ingest.data.sources import load_images
    from harden.ingest.models.loading import load_model

    clean = [f for f in folders if (read_attack(f) or {}).get("attack") == "clean"]
    if not clean or test_path is None:
        return {}
    import torch

    art = load_model(clean[0])
    test = load_images(test_path, art.contract, "data.test")
    predict = torch_predictor(art.model, art.contract, torch.device("cpu"))
    floors = {}
    for folder in folders:
        attack = read_attack(folder) or {}
        trig = trigger_from_attack(folder, attack) if attack.get("attack") not in (None, "clean") else None
        if trig is not None and attack["attack"] not in floors:
            floors[attack["attack"]], _ = attack_metrics(predict, test, build_trigger(trig), trig,
                                                         art.contract.num_classes, label=f"floor {attack['attack']}")
    return floors


STAGE_SECONDS = ("scan", "score", "prune", "polarize", "finetune", "total")


def stage_seconds(seconds: dict[str, float], stage: str) -> float:
    """A stage's seconds; "prune" includes the selection, which runs as its own stage since the stage interface."""
    return seconds.get(stage, 0) + (seconds.get("select", 0) if stage == "prune" else 0)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def markdown(rows: list[dict[str, Any]], floors: dict[str, float] | None = None) -> str:
    head = ["pipeline", "model", "clean acc before → after", "ASR before → after", "robust acc", "DER",
            "params after / before", "MACs after / before", "ONNX latency after / before (batch 1 / 64)",
            "seconds (scan / score / "
            "prune / polarize / finetune / total)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["seconds"]
        ratios = r.get("latency_ratio") or {}
        lat = " / ".join(f"{ratios[k]:.2f}" for k in ("batch_1", "batch_64") if k in ratios) or "—"
        lines.append("| " + " | ".join([
            r["pipeline"] + (" †" if r.get("stale") else ""), r["model"], f"{pct(r['clean_acc_before'])} → {pct(r['clean_acc_after'])}",
            f"{pct(r['asr_before'])} → {pct(r['asr_after'])}", pct(r["robust_acc_after"]),
            "—" if r["der"] is None else f"{100 * r['der']:.1f}",
            f"{r['params_after'] / r['params_before']:.2f}", f"{r['macs_after'] / r['macs_before']:.2f}", lat,
            " / ".join(f"{stage_seconds(s, k):.0f}" for k in STAGE_SECONDS),
        ]) + " |")
    quantised = [r for r in rows if "int8" in r]
    if quantised:
        lines += ["", "INT8 (onnxruntime static quantisation, calibrated on the tune split; verified again on the test "
                  "set):", "", "| pipeline | model | clean acc fp32 → INT8 | ASR fp32 → INT8 | top-1 agreement with fp32 | "
                  "latency INT8 / fp32 (batch 1 / 64) |", "|---|---|---|---|---|---|"]
        for r in quantised:
            q = r["int8"]
            lat = " / ".join(f"{q['latency_ratio_vs_fp32'][k]:.2f}" for k in ("batch_1", "batch_64")
                             if k in q["latency_ratio_vs_fp32"]) or "—"
            lines.append(f"| {r['pipeline']} | {r['model']} | {pct(r['clean_acc_after'])} → {pct(q['clean_acc'])} | "
                         f"{pct(r['asr_after'])} → {pct(q['asr'])} | {pct(q.get('top1_agreement'))} | {lat} |")
    gated = [r for r in rows if "gate" in r]
    if gated:
        lines += ["", "Gate (exit 0 and the production alias only on a pass):", "", "| pipeline | model | gate | failing "
                  "checks |", "|---|---|---|---|"]
        lines += [f"| {r['pipeline']} | {r['model']} | {'passed' if r['gate']['passed'] else 'failed'} | "
                  f"{'; '.join(r['gate']['failed']) or '—'} |" for r in gated]
    if any(r.get("stale") for r in rows):
        lines += ["", "† reused from a run made with an earlier pipeline hash (older harden defaults or YAML), or kept "
                  "by --merge from a results file that did not record the hash; the report.json in the row's run "
                  "folder says exactly what ran."]
    if floors:
        lines += ["", "Floors (ASR of the clean model on each trigger: the part of any 'ASR after' no defense removes): "
                  + ", ".join(f"{k} {pct(v)}" for k, v in sorted(floors.items())) + "."]
    lines += ["", "Means per pipeline over the backdoored models (clean-accuracy drop over all models):", "",
              "| pipeline | mean ASR after | mean clean-acc drop (all) | drop on clean models | mean DER |",
              "|---|---|---|---|---|"]
    for p in dict.fromkeys(r["pipeline"] for r in rows):
        mine = [r for r in rows if r["pipeline"] == p]
        bad = [r for r in mine if r["asr_after"] is not None]
        clean = [r for r in mine if r["asr_after"] is None]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        drop = lambda rs: mean([r["clean_acc_before"] - r["clean_acc_after"] for r in rs])  # noqa: E731
        lines.append(f"| {p} | {pct(mean([r['asr_after'] for r in bad]))} | {pct(drop(mine))} | {pct(drop(clean))} | "
                     + ("—" if not bad else f"{100 * mean([r['der'] for r in bad]):.1f}") + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(r["model"] for r in rows))
    pipes = list(dict.fromkeys(r["pipeline"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / (len(pipes) + 1)
    for ax, key, title in ((axes[0], "asr", "ASR (%)"), (axes[1], "clean_acc", "clean accuracy (%)")):
        base = [next((r[f"{key}_before"] for r in rows if r["model"] == m), None) for m in models]
        ax.bar(np.arange(len(models)), [100 * (b or 0) for b in base], width, label="before", color="0.7")
        for i, p in enumerate(pipes):
            vals = [next((r[f"{key}_after"] for r in rows if r["model"] == m and r["pipeline"] == p), None)
                    for m in models]
            ax.bar(np.arange(len(models)) + (i + 1) * width, [100 * (v or 0) for v in vals], width, label=p)
        ax.set_xticks(np.arange(len(models)) + width * len(pipes) / 2, models, rotation=20, fontsize=8)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def splice_readme(readme: Path, name: str, table: str) -> bool:
    """Replace the README block between <!-- bench:NAME --> and <!-- /bench:NAME --> with the generated table."""
    text = readme.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}{end}{tail}")
    return True


RESULTS = REPO / "benchmarks" / "results"


def merge(previous: list[dict[str, Any]], rows: list[dict[str, Any]], current: Callable[[dict[str, Any]], bool]
          ) -> list[dict[str, Any]]:
    """This run's rows plus the previous results' rows for the (pipeline, model) pairs it did not run. A kept row is
    marked stale unless ``current(row)`` says its pipeline hash is today's: a slow pipeline (ANP: 13-40 min a
    model here) can then fill its table one model at a time without passing off an old configuration's row as current."""
    done = {(r["pipeline"], r["model"]) for r in rows}
    kept = [{**r, "stale": bool(r.get("stale")) or not current(r)} for r in previous
            if (r["pipeline"], r["model"]) not in done]
    return sorted(rows + kept, key=lambda r: (r["pipeline"], r["model"]))


def current_digest(pipelines: list[Path], models: Path, overrides: list[str]) -> Callable[[dict[str, Any]], bool]:
    """Whether a results row was made with the pipeline hash these pipelines have today (unknown hash: no)."""
    def check(r: dict[str, Any]) -> bool:
        folder = models / r["model"]
        for p in pipelines:
            for source in ("folder", "onnx"):
                if row_label(p, source) == r["pipeline"] and folder.is_dir() and r.get("pipeline_sha256"):
                    try:
                        return configure(p, folder, overrides, source)[0].digest() == r["pipeline_sha256"]
                    except HardenError:  # the model or a data file it names is gone: the row cannot be re-checked
                        return False
        return False
    return check


def publish(name: str, payload: dict[str, Any], table: str, readme: bool) -> None:
    """Write benchmarks/results/<name>.json (payload) and .md (table), print the table, and with ``readme`` splice it
    into docs/benchmarks.md's bench:<name> block."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    if readme and not splice_readme(REPO / "docs" / "benchmarks.md", name, table):
        print(f"docs/benchmarks.md has no <!-- bench:{name} --> block; table not spliced", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipelines", nargs="+", type=Path)
    ap.add_argument("--name", required=True, help="results name: benchmarks/results/<name>.{json,md,png}")
    default_zoo = Path(os.environ.get("HARDEN_ZOO", REPO.parent / "shared" / "zoo"))
    ap.add_argument("--models", type=Path, default=default_zoo, help="folder of model folders (default: the zoo)")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--only", nargs="*", default=None, help="model folder names to include")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value for every run")
    ap.add_argument("--readme", action="store_true", help="also splice the table into docs/benchmarks.md (bench:<name>)")
    ap.add_argument("--source", nargs="+", choices=("folder", "onnx"), default=["folder"],
                    help="what each model is ingested from: its folder (safetensors) and/or its model.onnx; the "
                         "onnx rows are labelled 'PIPELINE (onnx)'")
    ap.add_argument("--reuse-stale", action="store_true",
                    help="reuse finished runs even when their pipeline hash differs (an older harden or YAML); such "
                         "rows are marked † in the table")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing results/<name>.json for the models and pipelines this call "
                         "does not run (marked † unless made with today's pipeline hash)")
    args = ap.parse_args()
    if not args.models.is_dir():
        sys.exit(f"benchmark: no model folder at {args.models}; pass --models DIR or set HARDEN_ZOO")
    folders = [f for f in model_folders(args.models) if not args.only or f.name in args.only]
    rows, t0 = [], time.time()
    try:
        for pipeline in args.pipelines:
            for source in args.source:
                for folder in folders:
                    rows.append(run_one(pipeline, folder, args.runs, args.overrides, args.reuse_stale, source))
        test = load_pipeline(args.pipelines[0], [f"model.path={folders[0]}"], cwd=Path.cwd()).data.test
        floors = trigger_floors(model_folders(args.models), test.path if test else None)
    except HardenError as exc:
        sys.exit(f"benchmark: {exc}")
    if args.merge and (RESULTS / f"{args.name}.json").is_file():
        previous = json.loads((RESULTS / f"{args.name}.json").read_text())["rows"]
        rows = merge(previous, rows, current_digest(args.pipelines, args.models, args.overrides))
    meta = {"models": str(args.models), "pipelines": [str(p) for p in args.pipelines], "overrides": args.overrides,
            "wall_seconds": round(time.time() - t0), "machine": f"{os.cpu_count()} CPU cores"}
    publish(args.name, {"meta": meta, "floors": floors, "rows": rows}, markdown(rows, floors), args.readme)
    bar_chart(rows, RESULTS / f"{args.name}-bars.png")


if __name__ == "__main__":
    main()
