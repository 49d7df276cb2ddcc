"""The pre-deployment gate: thresholds from the YAML checked against report.json. `harden run` exits GATE_FAILED when
any check fails, and only a passing model gets the promotion alias in the registry.

Results are written as gate.json and as JUnit XML (gate-junit.xml), one test case per check, which CI systems display.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from harden.config.deploy import GateConfig
from harden.core.io import atomic_write_bytes

GATE_FAILED = 3  # distinct from 2 (could not run: a user mistake) and 1 (a bug in harden)


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float | None
    limit: float
    passed: bool
    message: str


def evaluate(cfg: GateConfig, report: dict[str, Any]) -> list[GateCheck]:
    checks: list[GateCheck] = []

    def at_most(name: str, value: float | None, limit: float, what: str) -> None:
        if value is None:
            checks.append(GateCheck(name, None, limit, False, f"{what} was not measured"))
        else:
            # Measured rates are counts over N: 0.8329 - 0.8179 comes out as 0.015000000000000013, and a drop
            # exactly at the limit must pass. 1e-9 is far below one image in any test set.
            ok = value <= limit + 1e-9
            checks.append(GateCheck(name, value, limit, ok, f"{what} {value:.4g} {'<=' if ok else '>'} {limit:.4g}"))

    asr = report.get("asr", {})
    if not asr and cfg.max_asr is not None and not cfg.max_asr_per_trigger:
        # said, not silently skipped: a reader of gate.json must see that no ASR stood behind this gate
        checks.append(GateCheck("asr", None, cfg.max_asr, True, "no known trigger was named (stages.verify.triggers): "
                                "ASR not checked; the trigger-free checks stand in"))
    for trig in sorted(set(asr) | set(cfg.max_asr_per_trigger)):
        limit = cfg.max_asr_per_trigger.get(trig, cfg.max_asr)
        if limit is not None:
            at_most(f"asr.{trig}", asr.get(trig, {}).get("after"), limit, f"ASR of trigger {trig!r} after hardening")
    if cfg.max_clean_acc_drop is not None:
        acc = report.get("clean_acc")
        drop = None if acc is None else acc["before"] - acc["after"]
        at_most("clean_acc_drop", drop, cfg.max_clean_acc_drop, "clean-accuracy drop")
    if cfg.max_itasr is not None:
        if "scan" not in report:
            checks.append(GateCheck("itasr", None, cfg.max_itasr, False, "gate.max_itasr needs stages.scan.enabled"))
        elif not report["scan"]["flagged"]:
            checks.append(GateCheck("itasr", None, cfg.max_itasr, True, "the scan found no backdoor to re-test"))
        else:
            at_most("itasr", report["itasr"]["after"], cfg.max_itasr, "inverted-trigger ASR after hardening")
    if cfg.rescan_clean:
        rescan = report.get("rescan")
        if rescan is None:
            checks.append(GateCheck("rescan", None, 0, False, "gate.rescan_clean needs stages.scan.rescan"))
        else:
            flagged = bool(rescan["flagged"])
            verdict = f"still flags class {rescan['target']}" if flagged else "finds no backdoor"
            detail = ", ".join(f"{name} {'flags' if f['target'] is not None else 'clear'}, statistic "
                               f"{f['statistic']:.2f}" for name, f in rescan.get("detectors", {}).items())
            checks.append(GateCheck("rescan", float(flagged), 0, not flagged,
                                    f"fresh scan of the hardened model {verdict}" + (f" ({detail})" if detail else "")))
    int8 = report.get("int8")
    if int8 is not None:  # the INT8 file ships too: the same limits apply to it
        for trig in sorted(set(int8["asr"]) | set(cfg.max_asr_per_trigger)):
            limit = cfg.max_asr_per_trigger.get(trig, cfg.max_asr)
            if limit is not None:
                at_most(f"int8.asr.{trig}", int8["asr"].get(trig), limit, f"INT8 ASR of trigger {trig!r}")
        if cfg.max_clean_acc_drop is not None and "clean_acc" in report:
            at_most("int8.clean_acc_drop", report["clean_acc"]["before"] - int8["clean_acc"], cfg.max_clean_acc_drop,
                    "INT8 clean-accuracy drop")
    if cfg.max_latency_ratio is not None:
        for batch, row in sorted(report.get("latency", {}).items()):
            at_most(f"latency_ratio.{batch}", row["ratio"], cfg.max_latency_ratio, f"latency ratio at {batch}")
        if not report.get("latency"):
            checks.append(GateCheck("latency_ratio", None, cfg.max_latency_ratio, False, "latency was not measured"))
    if cfg.max_onnx_diff is not None:
        at_most("onnx_max_abs_diff", report.get("onnx", {}).get("max_abs_diff"), cfg.max_onnx_diff,
                "ONNX parity max |diff|")
    return checks


def write_results(checks: list[GateCheck], out_dir: Path, suite: str) -> dict[str, Any]:
    passed = all(c.passed for c in checks)
    doc = {"passed": passed, "checks": [asdict(c) for c in checks]}
    atomic_write_bytes(out_dir / "gate.json", json.dumps(doc, indent=1).encode())
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)),
                       failures=str(sum(not c.passed for c in checks)))
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname=f"harden.gate.{suite}", name=c.name)
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
    atomic_write_bytes(out_dir / "gate-junit.xml", ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return doc
