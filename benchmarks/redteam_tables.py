"""The red-team benchmark's tables: per model, means against the acceptance limits, and detection per detector.

Ground truth (attack.json, trigger.npz) is read here, for the report only: floors (the ASR a clean model of the same
architecture shows under the same trigger) and whether a detector named the real target.
"""

from __future__ import annotations

from typing import Any

VERDICT = "verdict (any)"


def flagged_by(scan: dict[str, Any], detector: str) -> int | None:
    """The class ``detector`` flags in a report's scan summary (None: not flagged, or it did not run)."""
    if detector == VERDICT:
        return scan.get("target") if scan.get("flagged") else None
    return scan.get("detectors", {}).get(detector, {}).get("target")


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def model_table(rows: list[dict[str, Any]]) -> str:
    head = ["model", "split", "family", "attack", "scan verdict (real target)", "clean acc before → after (drop)",
            "ASR before → after", "floor", "≤ floor + 10", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        drop = r["clean_acc_before"] - r["clean_acc_after"]
        within = "—" if r["asr_after"] is None or r.get("floor") is None else (
            "yes" if r["asr_after"] <= r["floor"] + 0.10 else "**no**")
        real = "—" if r.get("target") is None else str(r["target"])
        lines.append("| " + " | ".join([
            r["model"], r["split"], r["family"], r["attack"], f"{r['verdict']} ({real})",
            f"{pct(r['clean_acc_before'])} → {pct(r['clean_acc_after'])} ({100 * drop:+.2f})",
            f"{pct(r['asr_before'])} → {pct(r['asr_after'])}", pct(r.get("floor")), within,
            f"{r['seconds'].get('total', 0):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    bad = [r for r in rows if r["asr_after"] is not None]
    clean = [r for r in rows if r["attack"] == "clean"]
    drops = lambda rs: [r["clean_acc_before"] - r["clean_acc_after"] for r in rs]  # noqa: E731
    return {
        "backdoored": len(bad), "clean": len(clean),
        "mean_asr_before": mean([r["asr_before"] for r in bad]), "mean_asr_after": mean([r["asr_after"] for r in bad]),
        "max_asr_over_floor": max((r["asr_after"] - r["floor"] for r in bad if r.get("floor") is not None),
                                  default=None),
        "mean_drop_backdoored": mean(drops(bad)), "mean_drop_clean": mean(drops(clean)),
        "max_drop_clean": max(drops(clean), default=None),
        "mean_seconds": mean([r["seconds"].get("total") for r in rows]),
    }


def summary_table(by_split: dict[str, dict[str, Any]]) -> str:
    lines = ["| split | backdoored | mean ASR before → after | worst ASR over floor | mean drop backdoored | "
             "mean drop clean (worst) | mean seconds a model |", "|" + "---|" * 7]
    for split, s in by_split.items():
        worst = "—" if s["max_asr_over_floor"] is None else f"{100 * s['max_asr_over_floor']:+.2f}"
        lines.append(f"| {split} | {s['backdoored']} | {pct(s['mean_asr_before'])} → {pct(s['mean_asr_after'])} | "
                     f"{worst} | {pct(s['mean_drop_backdoored'])} | {pct(s['mean_drop_clean'])} "
                     f"({pct(s['max_drop_clean'])}) | {s['mean_seconds'] or 0:.0f} |")
    return "\n".join(lines) + "\n"


def detection(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per detector and split: true positives on backdoored models, false positives on clean ones, right targets."""
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split and r.get("scan") is not None]
        if not mine:
            continue
        names = dict.fromkeys(n for r in mine for n in r["scan"].get("detectors", {}))
        bad = [r for r in mine if r["attack"] != "clean"]
        clean = [r for r in mine if r["attack"] == "clean"]
        for name in [*names, VERDICT]:
            hits = [r for r in bad if flagged_by(r["scan"], name) is not None]
            right = [r for r in hits if r.get("target") is not None and flagged_by(r["scan"], name) == r["target"]]
            out.append({"split": split, "detector": name, "backdoored": len(bad),
                        "flagged_backdoored": len(hits), "right_target": len(right), "clean": len(clean),
                        "flagged_clean": sum(flagged_by(r["scan"], name) is not None for r in clean),
                        "missed": [r["model"] for r in bad if r not in hits]})
    return out


def detection_table(det: list[dict[str, Any]]) -> str:
    lines = ["| split | detector | true positives (backdoored flagged) | right target | false positives (clean "
             "flagged) |", "|---|---|---|---|---|"]
    for d in det:
        lines.append(f"| {d['split']} | {d['detector']} | {d['flagged_backdoored']}/{d['backdoored']} | "
                     f"{d['right_target']}/{d['flagged_backdoored']} | {d['flagged_clean']}/{d['clean']} |")
    return "\n".join(lines) + "\n"


def reactivation_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | ASR hardened | after a plain epoch | after an epoch with 50 poisoned | clean twin: plain / "
             "50 poisoned |", "|---|---|---|---|---|"]
    mine = [r for r in rows if "reactivation" in r]
    for r in mine:
        h, c = r["reactivation"]["hardened"], r["reactivation"].get("clean_baseline")
        base = "—" if c is None else f"{pct(c['asr_plain_ft'])} / {pct(c['asr_poisoned_ft'])}"
        lines.append(f"| {r['model']} | {pct(h['asr'])} | {pct(h['asr_plain_ft'])} | {pct(h['asr_poisoned_ft'])} | "
                     f"{base} |")
    hard = mean([r["reactivation"]["hardened"]["asr_poisoned_ft"] for r in mine])
    base = mean([r["reactivation"].get("clean_baseline", {}).get("asr_poisoned_ft") for r in mine])
    ratio = "—" if not hard or not base else f"{hard / base:.2f}"
    lines.append(f"| **mean** | | {pct(mean([r['reactivation']['hardened']['asr_plain_ft'] for r in mine]))} | "
                 f"{pct(hard)} | baseline {pct(base)}; ratio {ratio} (limit 2) |")
    return "\n".join(lines) + "\n"
