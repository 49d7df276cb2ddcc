"""Gate: what the run checked, in words, and the pre-deployment thresholds checked against the report."""

from __future__ import annotations

from typing import Any

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.deploy import gate
from harden.evaluate import checked


@register_stage("checked", 160, "what was and was not checked, and which repairs ran", span=False)
class Checked:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        return {"checked": checked.checked(state.report)}


@register_stage("gate", 170, "the pre-deployment thresholds, as gate.json and JUnit XML", span=False)
class Gate:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.gate.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        result = gate.write_results(gate.evaluate(cfg.gate, state.report), ctx.out_dir, cfg.name)
        ctx.tracker.log_file(ctx.out_dir / "gate.json", "gate")
        ctx.tracker.log_file(ctx.out_dir / "gate-junit.xml", "gate")
        ctx.tracker.log_metrics({"gate_passed": float(result["passed"])})
        return {"gate": result}
