"""Register: the exported ONNX as a new version in the MLflow model registry, tagged from report.json, aliased
`candidate` and, when the gate passed, its promotion alias."""

from __future__ import annotations

import re
from typing import Any

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.evaluate import checked


@register_stage("register", 180, "the ONNX file as a registry version with lineage tags and aliases", span=False)
class Register:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        report, exp = state.report, state.exported
        mlflow = {"tracking_uri": getattr(ctx.tracker, "uri", None), "run_id": ctx.tracker.parent_run_id,
                  "model_name": None, "model_version": None}
        if exp is None:
            return {"mlflow": mlflow}
        aliases = ("candidate",)
        if report.get("gate", {}).get("passed"):
            aliases += (cfg.gate.promote_alias,)
        name = registered_name(cfg)
        done = ctx.cache.load_json(f"registered-{exp.sha256[:24]}")  # registered before a crash: not twice
        if done is not None and done["name"] == name:
            version = done["version"]
            ctx.tracker.set_aliases(name, version, aliases)
        else:
            src = state.source
            example = src.contract.normalize(state.inputs.heldout.batch01(slice(0, 2))).numpy().astype("float32")
            version = ctx.tracker.register_onnx(exp.path, name, example, registry_tags(report), aliases)
            if version is not None:
                ctx.cache.save_json(f"registered-{exp.sha256[:24]}", {"name": name, "version": version})
        if version is not None:
            mlflow |= {"model_name": name, "model_version": version}
        return {"mlflow": mlflow}


def registered_name(cfg: PipelineConfig) -> str:
    """tracking.registered_model, else harden-<model.name>, else harden-<the model folder's name>: a file is named
    after the folder it ships in (vendor-x/model.onnx -> harden-vendor-x), not its stem, which vendors share."""
    if cfg.tracking.registered_model:
        return cfg.tracking.registered_model
    path = cfg.model.path
    if cfg.model.name:
        stem = cfg.model.name
    elif isinstance(path, str):  # models:/name@alias -> name; runs:/id/sub/folder -> folder
        stem = path.split(":/", 1)[1].split("@")[0].rstrip("/").split("/")[-1 if path.startswith("runs:") else 0]
    else:
        stem = path.name if path.is_dir() else path.resolve().parent.name
    return "harden-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "model")


def registry_tags(report: dict[str, Any]) -> dict[str, str]:
    """Model-version tags, taken verbatim from report.json so the two always agree."""
    tags = {"source_sha256": report["source"]["sha256"], "pipeline_sha256": report["pipeline"]["sha256"],
            "harden_version": report["harden_version"], "onnx_sha256": report["onnx"]["sha256"],
            "source_path": report["source"]["path"], "clean_sha256": report["data"]["clean_sha256"]}
    if "clean_acc" in report:
        tags["clean_acc"] = repr(report["clean_acc"]["after"])
        tags["clean_acc_before"] = repr(report["clean_acc"]["before"])
    for k, v in report.get("asr", {}).items():
        tags[f"asr.{k}"] = repr(v["after"])
    if report.get("asr"):
        tags["asr"] = repr(max(v["after"] for v in report["asr"].values()))
    if "gate" in report:
        tags["gate"] = "passed" if report["gate"]["passed"] else "failed"
    return {**tags, **checked.tags(report)}
