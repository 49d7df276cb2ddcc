"""Check a folder of `harden zoo train` models against the red-team bar, re-measured with harden's own trigger code.

    python benchmarks/redzoo.py --models ../redzoo --name redzoo-train --readme

The bar: every attacked model reaches ASR >= 90 % (SIG and TrojanNN >= 80 %) with clean accuracy within 3 points of
the folder's clean model (the same recipe, `harden zoo train clean`). Clean accuracy and ASR are measured again here
on the test set (CPU), beside the figures `harden zoo train` wrote into attack.json. The table also gives the ASR
among the victims the model classifies correctly without the trigger: an all-to-all backdoor has to recognise the
source class to send y to y + 1, so its plain ASR cannot rise much above the model's clean accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run import model_folders, publish  # noqa: E402
from harden.evaluate.metrics import predictions, torch_predictor  # noqa: E402
from harden.evaluate.triggers import build_trigger  # noqa: E402
from harden.ingest.data.sources import load_images  # noqa: E402
from harden.ingest.models.loading import load_model  # noqa: E402
from harden.redteam.groundtruth import read_attack, trigger_from_attack  # noqa: E402

MIN_ASR = {"sig": 0.80, "trojannn": 0.80}  # clean-label and optimised-patch attacks: the lower bar
DEFAULT_MIN_ASR = 0.90
MAX_ACC_DROP = 0.03


def measure(folder: Path, test_path: Path) -> dict[str, Any]:
    attack = read_attack(folder) or {}
    art = load_model(folder)
    test = load_images(test_path, art.contract, "test set")
    predict = torch_predictor(art.model, art.contract, torch.device("cpu"))
    clean_pred = predictions(predict, test, 500, label=f"{folder.name} clean")
    row: dict[str, Any] = {
        "model": folder.name, "attack": attack.get("attack", "?"), "epochs": attack.get("epochs"),
        "train_seconds": attack.get("train_seconds"), "clean_acc_recorded": attack.get("clean_acc"),
        "clean_acc": float((clean_pred == test.y).mean()), "asr_recorded": attack.get("asr"), "asr": None,
        "asr_on_correct": None, "robust_acc": None,
    }
    spec = trigger_from_attack(folder, attack)
    if spec is not None:
        victims = spec.victims(test.y)
        triggered = predictions(predict, test.subset(victims, "victims"), 500, build_trigger(spec),
                                f"{folder.name} triggered")
        hit = triggered == spec.targets(test.y[victims], art.contract.num_classes)
        correct = clean_pred[victims] == test.y[victims]
        row.update(asr=float(hit.mean()), asr_on_correct=float(hit[correct].mean()),
                   robust_acc=float((triggered == test.y[victims]).mean()), mode=spec.mode)
    return row


def judge(rows: list[dict[str, Any]]) -> None:
    clean = next((r for r in rows if r["attack"] == "clean"), None)
    for r in rows:
        r["acc_drop_vs_clean"] = None if clean is None else clean["clean_acc"] - r["clean_acc"]
        if r["asr"] is None:
            r["min_asr"], r["meets_bar"] = None, None
            continue
        r["min_asr"] = MIN_ASR.get(r["attack"], DEFAULT_MIN_ASR)
        r["meets_bar"] = bool(r["asr"] >= r["min_asr"] and r["acc_drop_vs_clean"] is not None
                              and r["acc_drop_vs_clean"] <= MAX_ACC_DROP)


def _pct(v: float | None, signed: bool = False) -> str:
    return "—" if v is None else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | attack | epochs | clean acc (attack.json / here) | Δ vs clean model | ASR (attack.json / "
             "here) | ASR on correctly classified | bar | meets |", "|" + "---|" * 9]
    for r in rows:
        meets = {None: "—", True: "yes", False: "**no**"}[r["meets_bar"]]
        bar = "—" if r["min_asr"] is None else f"ASR ≥ {100 * r['min_asr']:.0f}"
        drop = r["acc_drop_vs_clean"]
        delta = "—" if r["attack"] == "clean" or drop is None else _pct(-drop, True)
        lines.append(
            f"| {r['model']} | {r['attack']}{' (all-to-all)' if r.get('mode') == 'all-to-all' else ''} | "
            f"{r['epochs']} | {_pct(r['clean_acc_recorded'])} / {_pct(r['clean_acc'])} | "
            f"{delta} | "
            f"{_pct(r['asr_recorded'])} / {_pct(r['asr'])} | {_pct(r['asr_on_correct'])} | "
            f"{bar} | {meets} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of `harden zoo train` model folders")
    ap.add_argument("--test", type=Path,
                    default=Path(os.environ.get("HARDEN_DATA", REPO.parent / "shared" / "data")) / "cifar10" /
                    "test.npz")
    ap.add_argument("--name", default="redzoo-train")
    ap.add_argument("--readme", action="store_true", help="also splice the table into docs/benchmarks.md (bench:<name>)")
    args = ap.parse_args()
    folders = [f for f in model_folders(args.models) if (f / "attack.json").is_file()]
    if not folders:
        sys.exit(f"redzoo: no model folder with attack.json under {args.models}")
    rows = [measure(f, args.test) for f in folders]
    judge(rows)
    meta = {"models": str(args.models), "test": str(args.test), "min_asr": {"default": DEFAULT_MIN_ASR, **MIN_ASR},
            "max_acc_drop": MAX_ACC_DROP}
    publish(args.name, {"meta": meta, "rows": rows}, markdown(rows), args.readme)


if __name__ == "__main__":
    main()
