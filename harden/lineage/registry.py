"""The MLflow model registry as harden's users see it: inspect a registered version's lineage, and promote a
version to an alias only when its gate passed."""

from __future__ import annotations

import io
import os
import re
from typing import Any

from rich.console import Console
from rich.table import Table

from harden.core.errors import HardenError, TrackingError
from harden.lineage.tracker import _quiet_mlflow

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


def _client(tracking_uri: str | None):

    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise HardenError("no tracking store: pass --tracking-uri (e.g. sqlite:///out/mlflow.db) or set "
                          "MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve(client, model_uri: str):
    m = _URI.match(model_uri)
    if not m:
        raise HardenError(f"{model_uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    try:
        if m["version"]:
            return client.get_model_version(m["name"], m["version"])
        return client.get_model_version_by_alias(m["name"], m["alias"])
    except Exception as exc:  # MlflowException for unknown names, versions or aliases; connection errors
        raise TrackingError(f"{model_uri}: not found in the registry ({str(exc).splitlines()[0][:200]})") from None


def inspect(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The version, its aliases and tags, and its lineage: the run that made it, the source model and the data."""
    client = _client(tracking_uri)
    mv = resolve(client, model_uri)
    aliases = list(getattr(mv, "aliases", []) or [])
    lineage: dict[str, Any] = {"run_id": mv.run_id}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            lineage |= {"run_status": run.info.status, "pipeline": run.data.tags.get("mlflow.runName"),
                        "experiment_id": run.info.experiment_id}
            children = client.search_runs([run.info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{mv.run_id}'")
            for child in children:
                if child.info.run_name == "ingest":
                    lineage["source"] = {k: child.data.params.get(k) for k in ("source_path", "source_sha256",
                                                                                "architecture", "model_args")}
                    lineage["data"] = {d.dataset.name: {t.key: t.value for t in d.tags}.get("sha256")
                                       for d in child.inputs.dataset_inputs}
        except Exception as exc:  # a deleted run leaves the version in place: show what is left
            lineage["error"] = str(exc).splitlines()[0][:200]
    return {"name": mv.name, "version": str(mv.version), "aliases": aliases, "tags": dict(mv.tags),
            "source": mv.source, "lineage": lineage}


def promote(model_uri: str, alias: str, tracking_uri: str | None = None) -> str:
    """Point ``alias`` at the version, only when its gate passed. Returns the version."""
    client = _client(tracking_uri)
    mv = resolve(client, model_uri)
    gate = mv.tags.get("gate")
    if gate != "passed":
        todo = (f"the failing checks are in gate.json of run {mv.run_id}; fix the model or the pipeline and run it "
                "again" if gate == "failed" else "rerun the pipeline with gate.enabled: true")
        raise HardenError(f"{model_uri} (version {mv.version}) cannot take alias {alias!r}: its gate "
                          f"{'failed' if gate == 'failed' else 'did not run'}. Only a version whose harden gate "
                          f"passed is promoted; {todo}")
    client.set_registered_model_alias(mv.name, alias, mv.version)
    return str(mv.version)


def render(doc: dict[str, Any]) -> str:
    """`harden inspect`'s table for a person: gate and aliases, the figures, then the lineage back to the source."""


    tags, lineage = doc["tags"], doc["lineage"]
    t = Table(title=f"{doc['name']} version {doc['version']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    pct = lambda v: f"{100 * float(v):.2f}%"  # noqa: E731
    t.add_row("aliases", ", ".join(doc["aliases"]) or "none")
    t.add_row("gate", tags.get("gate", "not run"))
    if "clean_acc" in tags:
        t.add_row("clean accuracy", f"{pct(tags['clean_acc_before'])} -> {pct(tags['clean_acc'])}"
                  if "clean_acc_before" in tags else pct(tags["clean_acc"]))
    asr = sorted(k for k in tags if k.startswith("asr."))
    for k in asr:
        t.add_row(f"ASR {k[4:]}", pct(tags[k]))
    if not asr:
        t.add_row("known triggers", "none checked" if tags.get("known_triggers", "none") == "none"
                  else tags["known_triggers"])
    for key, label in (("scan", "backdoor search"), ("repairs", "repairs that ran")):
        if key in tags:
            t.add_row(label, tags[key])
    if "itasr" in tags:
        t.add_row("inverted-trigger ASR", f"{pct(tags['itasr_before'])} -> {pct(tags['itasr'])}"
                  if "itasr_before" in tags else pct(tags["itasr"]))
    t.add_row("run", f"{lineage.get('run_id')} ({lineage.get('run_status', '?')}, pipeline "
                     f"{lineage.get('pipeline', '?')})")
    src = lineage.get("source") or {}
    t.add_row("source", f"{src.get('source_path') or tags.get('source_path')} "
                        f"(sha256 {src.get('source_sha256') or tags.get('source_sha256')})")
    if src.get("architecture"):
        t.add_row("architecture", f"{src['architecture']} {src.get('model_args') or ''}".strip())
    for name, digest in sorted((lineage.get("data") or {}).items()):
        t.add_row(f"data {name}", f"sha256 {digest}")
    for key in ("pipeline_sha256", "onnx_sha256", "harden_version"):
        if key in tags:
            t.add_row(key.replace("_", " "), tags[key])
    if "error" in lineage:
        t.add_row("lineage", f"incomplete: {lineage['error']}")
    buf = io.StringIO()
    Console(file=buf, width=120).print(t)
    return buf.getvalue()
