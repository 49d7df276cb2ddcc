"""ASR and clean accuracy against the pruning threshold, per model, for the scorer a pipeline configures; the
threshold harden's clean-data selection picks is marked, so the plot shows how close it lands to the best one.

    python benchmarks/sweep.py --name zoo-clp-sweep pipelines/recommended.yaml

Pruning without fine-tuning, measured on the masked model (equal to the physically pruned one, asserted by the
prune stage and its tests) over --test-images test images. Evaluation only: the test set and the triggers are read
here to draw the curve, never to choose anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run import configure, model_folders  # noqa: E402
from harden.evaluate.metrics import accuracy, attack_metrics, torch_predictor  # noqa: E402
from harden.evaluate.triggers import build_trigger  # noqa: E402
from harden.prune import remove as prune  # noqa: E402
from harden.prune import select
from harden.stages import ingest, score

SWEEP = {"clp": [4.0, 3.5, 3.0, 2.75, 2.5, 2.25, 2.0, 1.75, 1.5],  # per scorer, in its score units
         "anp": [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
         "dormant": [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]}


def sweep(pipeline: Path, folder: Path, n_test: int) -> dict:
    cfg, attack = configure(pipeline, folder, [])
    inp = ingest.run(cfg)
    art, dev = inp.model, torch.device("cpu")
    test = inp.test.subset(np.random.default_rng(0).permutation(len(inp.test))[:n_test], "sweep")
    scores = score.run(cfg.stages.score, art, inp.tune).combined
    prep = prune.prepare(art)
    chosen = select.run(cfg.stages.prune, art, scores, inp.tune, prep, dev).threshold
    triggers = cfg.stages.verify.triggers
    points = []
    for t in SWEEP.get(scores.method, scores.thresholds or []):
        masked, *_ = prune.masked_model(prep, select.rethreshold(scores, t), cfg.stages.prune)
        predict = torch_predictor(masked, art.contract, dev)
        point = {"threshold": t, "clean_acc": accuracy(predict, test)}
        for name, trig in triggers.items():
            point["asr"], _ = attack_metrics(predict, test, build_trigger(trig), trig, art.contract.num_classes)
        points.append(point)
    return {"model": folder.name, "attack": attack.get("attack"), "scorer": scores.method, "chosen": chosen,
            "points": points}


def plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    for ax, c in zip(axes[0], curves):
        ts = [p["threshold"] for p in c["points"]]
        ax.plot(ts, [100 * p["clean_acc"] for p in c["points"]], "o-", label="clean acc")
        if any("asr" in p for p in c["points"]):
            ax.plot(ts, [100 * p.get("asr", np.nan) for p in c["points"]], "s-", label="ASR")
        if c["chosen"] is not None:
            ax.axvline(c["chosen"], color="k", ls="--", lw=1, label="guard's choice (tune split)")
        ax.invert_xaxis()
        ax.set_title(f"{c['model']} ({c['scorer']})", fontsize=9)
        ax.set_xlabel("threshold (prune score > t)")
        ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pipeline", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("HARDEN_ZOO", REPO.parent / "shared" / "zoo")))
    ap.add_argument("--test-images", type=int, default=2000)
    args = ap.parse_args()
    curves = [sweep(args.pipeline, f, args.test_images) for f in model_folders(args.models)]
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(curves, indent=1))
    plot(curves, out / f"{args.name}.png")
    for c in curves:
        print(c["model"], "chosen", c["chosen"], [(p["threshold"], round(p["clean_acc"], 3), round(p.get("asr", -1), 3))
                                                   for p in c["points"]])


if __name__ == "__main__":
    main()
