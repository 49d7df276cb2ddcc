"""The weights, export and latency stages: safetensors of the hardened model, its ONNX file proven against the torch
model (harden.deploy.onnx), and the ONNX latency of source and result side by side."""

from __future__ import annotations

from typing import Any

from safetensors.torch import save

from harden import __version__
from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.io import atomic_write_bytes
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.deploy import latency
from harden.deploy.onnx import (
    run,
    write_reference,
)
from harden.evaluate.metrics import onnx_predictor, torch_predictor


@register_stage("weights", 80, "the hardened torch weights, saved as hardened.safetensors", span=False)
class SaveWeights:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        model = state.model.model
        atomic_write_bytes(ctx.out_dir / "hardened.safetensors",
                           save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
        state.after, state.after_kind = torch_predictor(model, state.source.contract, ctx.device), "torch"
        return {}


@register_stage("export", 90, "export to ONNX, slim, stamp lineage metadata, prove parity with the torch model")
class Export:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.export.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        src = state.source
        meta = {"harden.source_sha256": src.source_sha256, "harden.pipeline_sha256": cfg.digest(),
                "harden.version": __version__, "harden.architecture": src.architecture}
        exp = run(cfg.stages.export, state.model, state.inputs.heldout, ctx.out_dir, meta)
        ctx.tracker.log_file(exp.path, "export")
        ctx.tracker.log_metrics({"onnx_max_abs_diff": exp.max_abs_diff, "onnx_top1_agreement": exp.top1_agreement})
        state.exported = exp
        state.after, state.after_kind = onnx_predictor(exp.path, src.contract), "onnxruntime"
        return {"onnx": {"path": str(exp.path), "sha256": exp.sha256, "max_abs_diff": exp.max_abs_diff,
                         "top1_agreement": exp.top1_agreement, "exporter": exp.exporter, "nodes": exp.nodes}}


@register_stage("latency", 140, "the source model exported the same way, both timed side by side (report only)")
class Latency:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.export.enabled and cfg.stages.export.latency

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        st, src = cfg.stages.export, state.source
        source = write_reference(src.model, src.contract.input_size, ctx.out_dir / "source.onnx", st.exporter,
                                 st.slim)
        names = {"reference_ms": "source_ms", "candidate_ms": "hardened_ms",
                 "reference_median_ms": "source_median_ms", "candidate_median_ms": "hardened_median_ms",
                 "ratio": "ratio"}
        out = {k: {names[m]: x for m, x in v.items()}
               for k, v in latency.compare(source, state.exported.path, tuple(st.latency_batches)).items()}
        ctx.tracker.log_metrics({f"latency_ratio_{k}": v["ratio"] for k, v in out.items()})
        return {"latency": out}
