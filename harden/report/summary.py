"""The run's before / after table and the notes under it, as `harden run` prints them."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from harden.config.detect import DETECTORS
from harden.detect.base import flag_text
from harden.evaluate import checked


def summary_table(report: dict[str, Any]):
    t = Table(title="harden: before / after", show_lines=False)
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    if "clean_acc" in report:
        t.add_row(f"clean accuracy ({report['clean_acc']['measured_on']})", pct(report["clean_acc"]["before"]),
                  pct(report["clean_acc"]["after"]))
    t.add_row("held-out clean accuracy", pct(report["heldout_acc"]["before"]), pct(report["heldout_acc"]["after"]))
    for k, v in report.get("asr", {}).items():
        t.add_row(f"ASR {k}", pct(v["before"]), pct(v["after"]))
    for row in detector_rows(report):
        t.add_row(*row)
    if "itasr" in report:
        t.add_row(f"inverted-trigger ASR (class {report['itasr']['target']})", pct(report["itasr"]["before"]),
                  pct(report["itasr"]["after"]))
    t.add_row("params", f"{report['params']['before']:,}", f"{report['params']['after']:,}")
    t.add_row("MACs", f"{report['macs']['before']:,}", f"{report['macs']['after']:,}")
    if "onnx" in report:
        t.add_row("ONNX parity (max |diff|)", "", f"{report['onnx']['max_abs_diff']:.1e}")
    t.add_row("wall time", "", f"{report['seconds']['total']:.0f} s")
    return t


def detector_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One (name, statistic, verdict) row per detector that ran, each worded by the detector itself."""
    found = report.get("scan", {}).get("detectors", {})
    return [DETECTORS.get(name).row(summary) if name in DETECTORS else _generic_row(name, summary)
            for name, summary in found.items()]


def _generic_row(name: str, summary: dict[str, Any]) -> tuple[str, str, str]:
    """A report read where its plug-in detector is not installed."""
    return name, f"statistic {summary.get('statistic', float('nan')):.2f}", flag_text(summary.get("target"))


def render_summary(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=100)
    console.print(summary_table(report))
    for line in summary_notes(report):
        console.print(line, highlight=False, markup=False)
    return buf.getvalue()


def summary_notes(report: dict[str, Any]) -> list[str]:
    """What the table's figures rest on: which known triggers were checked, what the scans found, what ran, where
    the model was registered."""
    notes = []
    if "checked" in report:
        c = report["checked"]
        notes += [f"known triggers: {', '.join(c['known_triggers']) or checked.NO_TRIGGER}",
                  f"backdoor search: {c['scan']}", f"repairs that ran: {'; '.join(c['repairs']) or 'none'}"]
    if report.get("mlflow", {}).get("model_version") is not None:
        notes.append(f"registered: {report['mlflow']['model_name']} version {report['mlflow']['model_version']}")
    return notes
