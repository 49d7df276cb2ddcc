"""INT8: quantise the exported ONNX statically with onnxruntime and verify the quantised file again."""

from __future__ import annotations

from typing import Any

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.deploy import int8, latency
from harden.evaluate.metrics import onnx_predictor
from harden.stages import verify


@register_stage("int8", 150, "onnxruntime static INT8 of the exported model, verified again")
class Int8:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.int8.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        st, inp, contract, fp32 = cfg.stages, state.inputs, state.source.contract, state.exported.path
        q = int8.quantize(st.int8, fp32, inp.tune, inp.heldout, contract, ctx.out_dir)
        acc, asr, robust = verify.measure(st.verify, onnx_predictor(q.path, contract), state.measured_on,
                                          contract.num_classes, "INT8")
        lat = latency.compare(fp32, q.path, tuple(st.export.latency_batches))
        ctx.tracker.log_file(q.path, "int8")
        ctx.tracker.log_metrics({"int8_clean_acc": acc, "int8_top1_agreement": q.top1_agreement,
                                 **{f"int8_asr_{k}": v for k, v in asr.items()},
                                 **{f"int8_latency_ratio_{k}": v["ratio"] for k, v in lat.items()}})
        return {"int8": {"path": str(q.path), "sha256": q.sha256, "clean_acc": acc, "asr": asr, "robust_acc": robust,
                         "top1_agreement_vs_fp32": q.top1_agreement, "max_abs_diff_vs_fp32": q.max_abs_diff,
                         "latency_vs_fp32": lat}}
