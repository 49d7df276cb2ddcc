"""report.html: one self-contained page per run (no network: figures are inline PNGs, styles inline).

What a reviewer wants on one screen: the before/after table and what it rests on (known triggers, the scans' verdict,
the repairs that ran), the scan's pictures, the channel scores, the pruning selection curve, the fine-tune's history
and the gate's checks. Built from report.json and the figures the run wrote beside it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from harden.core.io import atomic_write_bytes
from harden.evaluate.checked import NO_TRIGGER
from harden.report.summary import detector_rows

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#17702a;font-weight:600}.fail{color:#b3261e;font-weight:600}
.note{background:#f6f6f2;border-left:4px solid #c9a227;padding:.4rem .8rem;margin:.3rem 0}
img{max-width:100%;border:1px solid #eee}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _file_img(path: Path, alt: str) -> str:
    return _img(base64.b64encode(path.read_bytes()).decode(), alt) if path.is_file() else ""


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _before_after(report: dict[str, Any]) -> str:
    rows = []
    if "clean_acc" in report:
        rows.append([f"clean accuracy ({report['clean_acc']['measured_on']})", _pct(report["clean_acc"]["before"]),
                     _pct(report["clean_acc"]["after"])])
    held = report["heldout_acc"]
    rows.append(["held-out clean accuracy", _pct(held["before"]), _pct(held["after"])])
    for k, v in report.get("asr", {}).items():
        rows.append([f"ASR {html.escape(k)}", _pct(v["before"]), _pct(v["after"])])
    if "itasr" in report:
        rows.append([f"inverted-trigger ASR (class {report['itasr']['target']})", _pct(report["itasr"]["before"]),
                     _pct(report["itasr"]["after"])])
    rows.append(["parameters", f"{report['params']['before']:,}", f"{report['params']['after']:,}"])
    rows.append(["MACs", f"{report['macs']['before']:,}", f"{report['macs']['after']:,}"])
    if "onnx" in report:
        rows.append(["ONNX parity (max |diff|)", "", f"{report['onnx']['max_abs_diff']:.1e}"])
    return _table(["metric", "before", "after"], rows)


def _selection_curve(selection: list[dict[str, float]], chosen: float | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    flagged = [r["flagged"] for r in selection]
    ax.plot(flagged, [100 * r["tune_acc"] for r in selection], "o-", label="tune accuracy")
    if any("itasr" in r for r in selection):
        pts = [(r["flagged"], 100 * r["itasr"]) for r in selection if "itasr" in r]
        ax.plot(*zip(*pts), "s--", color="tab:red", label="inverted-trigger ASR")
    for r in selection:
        if chosen is not None and r["threshold"] == chosen:
            ax.axvline(r["flagged"], color="0.4", ls=":", label=f"chosen (threshold {chosen:g})")
    ax.set_xlabel("channels flagged")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _img(_png(fig), "pruning selection curve")


def _history(history: list[dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [100 * r["heldout_acc"] for r in history], "o-", label="held-out accuracy (%)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    twin = ax.twinx()
    twin.plot(epochs, [r["loss"] for r in history], "s--", color="tab:orange", label="training loss")
    twin.set_ylabel("training loss")
    fig.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _img(_png(fig), "fine-tune history")


def render(report: dict[str, Any], out_dir: Path) -> str:
    name = html.escape(report["pipeline"]["name"])
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>harden report: {name}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>harden report: {name}</h1>",
             f"<p>source <code>{html.escape(report['source']['path'])}</code> (sha256 "
             f"<code>{report['source']['sha256'][:16]}…</code>), {html.escape(report['source']['architecture'])}; "
             f"pipeline sha256 <code>{report['pipeline']['sha256'][:16]}…</code>, harden "
             f"{html.escape(report['harden_version'])}</p>",
             "<h2>Before and after</h2>", _before_after(report)]
    checked = report.get("checked")
    if checked:
        parts += [f"<p class='note'>known triggers: {html.escape(', '.join(checked['known_triggers']) or NO_TRIGGER)}"
                  f"</p>", f"<p class='note'>backdoor search: {html.escape(checked['scan'])}</p>",
                  f"<p class='note'>repairs that ran: {html.escape('; '.join(checked['repairs']) or 'none')}</p>"]
    if "scan" in report:
        rows = "".join(f"<li>{html.escape(name)}: {html.escape(stat)}, {html.escape(verdict)}</li>"
                       for name, stat, verdict in detector_rows(report))
        parts += ["<h2>Scan</h2>", f"<p>verdict: {html.escape(checked['scan'] if checked else '')}</p><ul>{rows}</ul>",
                  _file_img(out_dir / "scan-triggers.png", "inverted triggers, warp fields and gratings per class")]
    if (out_dir / "scores.png").is_file():
        parts += ["<h2>Channel scores</h2>", _file_img(out_dir / "scores.png", "score histograms")]
    prune = report.get("prune")
    if prune and prune.get("selection"):
        verdict = ("no candidate stayed within the accuracy budget, so nothing was pruned"
                   if prune["threshold"] is None else f"threshold {prune['threshold']:g} chosen")
        parts += ["<h2>Pruning selection</h2>", f"<p>{verdict}: {prune['removed']} channels removed, "
                  f"{prune['zeroed']} zeroed</p>", _selection_curve(prune["selection"], prune["threshold"])]
    ft = report.get("finetune")
    if ft and ft.get("history"):
        parts += ["<h2>Fine-tune</h2>", f"<p>{ft['epochs_run']} epochs, best {ft['best_epoch']}"
                  f"{' (diverged: the model from before it was kept)' if ft['diverged'] else ''}</p>",
                  _history(ft["history"])]
    if "gate" in report:
        g = report["gate"]
        verdict = "<span class='pass'>passed</span>" if g["passed"] else "<span class='fail'>failed</span>"
        rows = [[html.escape(c["name"]), "<span class='pass'>pass</span>" if c["passed"] else
                 "<span class='fail'>fail</span>", html.escape(c["message"])] for c in g["checks"]]
        parts += [f"<h2>Gate: {verdict}</h2>", _table(["check", "result", "detail"], rows)]
    mlflow = report.get("mlflow", {})
    if mlflow.get("model_version") is not None:
        parts.append(f"<p>registered: {html.escape(mlflow['model_name'])} version {mlflow['model_version']}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    atomic_write_bytes(path, render(report, out_dir).encode())
    return path
