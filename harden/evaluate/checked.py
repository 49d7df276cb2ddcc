"""What a run checked and what it did not, in words for the summary, the report and the registry tags.

A user's model rarely comes with a known trigger. When none is named, no ASR exists to report: the honest figures are
the scans' verdict, the inverted-trigger ASR when a scan flagged the model, and the list of repairs that ran anyway.
"""

from __future__ import annotations

from typing import Any

from harden.config.repair import REPAIRS

NO_TRIGGER = "none named: no known trigger was checked, so no ASR is reported (name yours under stages.verify.triggers)"


def repairs_run(report: dict[str, Any]) -> list[str]:
    """The steps that changed the model, in order, as a reader would name them."""
    done: list[str] = []
    pr = report.get("prune")
    if pr and (pr["removed"] or pr["zeroed"] or pr["gamma_zeroed"]):
        zeroed = pr["zeroed"] + pr["gamma_zeroed"]
        done.append(f"pruning ({pr['removed']} channels removed" + (f", {zeroed} zeroed)" if zeroed else ")"))
    if "polarize" in report:
        done.append("neural polarizer")
    ft = report.get("finetune")
    if ft is not None:
        parts = [REPAIRS.get(name).label if name in REPAIRS else name for name in ft["repairs"]]
        done.append("fine-tune" + (f" with {', '.join(parts)}" if parts else ""))
    return done


def scan_verdict(report: dict[str, Any]) -> str:
    scan = report.get("scan")
    if scan is None:
        return "not run"
    if not scan["flagged"]:
        return "no backdoor found by the scans"
    return f"flagged: {scan['kind']} trigger, class {scan['target']}"


def checked(report: dict[str, Any]) -> dict[str, Any]:
    """report.json's `checked` section."""
    return {"known_triggers": sorted(report.get("asr", {})), "scan": scan_verdict(report),
            "repairs": repairs_run(report)}


def tags(report: dict[str, Any]) -> dict[str, str]:
    """Registry tags for the trigger-free figures (the ASR tags exist only for named triggers)."""
    c = report["checked"]
    out = {"known_triggers": ",".join(c["known_triggers"]) or "none", "scan": c["scan"],
           "repairs": "; ".join(c["repairs"]) or "none"}
    if "itasr" in report:
        out["itasr"] = repr(report["itasr"]["after"])
        out["itasr_before"] = repr(report["itasr"]["before"])
    return out
