"""Verify: clean accuracy and ASR on the triggers the YAML names, before and after. Report and gate only:
nothing here feeds back into a decision."""

from __future__ import annotations

import copy
from typing import Any

from harden.config.evaluate import VerifyStage
from harden.config.schema import PipelineConfig
from harden.core.artifacts import VerifyReport
from harden.core.context import RunContext
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.evaluate.metrics import Predictor, accuracy, attack_metrics, torch_predictor
from harden.evaluate.triggers import build_trigger
from harden.ingest.data.sources import ImageSet


def run(cfg: VerifyStage, before: Predictor, after: Predictor, after_kind: str, test: ImageSet,
        num_classes: int) -> VerifyReport:
    bs = cfg.batch_size
    acc_b = accuracy(before, test, bs, "clean accuracy (before)")
    acc_a = accuracy(after, test, bs, "clean accuracy (after)")
    asr_b, asr_a, robust = {}, {}, {}
    for name, tcfg in cfg.triggers.items():
        trig = build_trigger(tcfg)
        asr_b[name], _ = attack_metrics(before, test, trig, tcfg, num_classes, bs, f"ASR {name} (before)")
        asr_a[name], robust[name] = attack_metrics(after, test, trig, tcfg, num_classes, bs, f"ASR {name} (after)")
    return VerifyReport(acc_b, acc_a, asr_b, asr_a, robust, after_kind, len(test))


def measure(cfg: VerifyStage, predict: Predictor, test: ImageSet, num_classes: int, label: str
            ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Clean accuracy, ASR and robust accuracy per trigger of one model (e.g. the INT8 file)."""
    acc = accuracy(predict, test, cfg.batch_size, f"clean accuracy ({label})")
    asr, robust = {}, {}
    for name, tcfg in cfg.triggers.items():
        asr[name], robust[name] = attack_metrics(predict, test, build_trigger(tcfg), tcfg, num_classes,
                                                 cfg.batch_size, f"ASR {name} ({label})")
    return acc, asr, robust


@register_stage("heldout", 100, "held-out clean accuracy of the suspect and of the hardened model", span=False)
class HeldoutAccuracy:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        src, heldout = state.source, state.inputs.heldout
        state.before = torch_predictor(copy.deepcopy(src.model).eval(), src.contract, ctx.device)
        return {"heldout_acc": {"before": accuracy(state.before, heldout, label="held-out accuracy (before)"),
                                "after": accuracy(state.after, heldout, label="held-out accuracy (after)")}}


@register_stage("verify", 110, "clean accuracy and the ASR of every named trigger, before and after")
class Verify:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.verify.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        vr = run(cfg.stages.verify, state.before, state.after, state.after_kind, state.measured_on,
                 state.source.contract.num_classes)
        metrics = {"clean_acc_before": vr.clean_acc_before, "clean_acc_after": vr.clean_acc_after}
        for k in vr.asr_after:
            metrics |= {f"asr_{k}_before": vr.asr_before[k], f"asr_{k}_after": vr.asr_after[k],
                        f"robust_acc_{k}_after": vr.robust_acc_after[k]}
        ctx.tracker.log_metrics(metrics)
        return {"clean_acc": {"before": vr.clean_acc_before, "after": vr.clean_acc_after,
                              "measured_on": "test" if state.inputs.test is not None else "heldout",
                              "after_with": vr.evaluated_after_with},
                "asr": {k: {"before": vr.asr_before[k], "after": vr.asr_after[k]} for k in vr.asr_after},
                "robust_acc": {k: {"after": v} for k, v in vr.robust_acc_after.items()}}
