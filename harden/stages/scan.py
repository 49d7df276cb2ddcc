"""Scan stages: is the suspect model backdoored (before repair), is a backdoor still there to find (after), and how
often the inverted trigger still works on held-out images (ITASR, before and after). All trigger-free."""

from __future__ import annotations

from typing import Any

from harden.config.schema import PipelineConfig
from harden.core.context import RunContext
from harden.core.io import write_npz
from harden.core.resume import StageCache
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.detect import ScanResult, inverted_asr, scan
from harden.report.plots import inverted_triggers


def _write(found: ScanResult, name: str, ctx: RunContext) -> None:
    write_npz(ctx.out_dir / f"{name}.npz", **found.to_arrays())
    ctx.write_json(f"{name}.json", found.summary())
    ctx.tracker.log_metrics({"flagged": float(found.flagged), **{
        f"{detector}_statistic": f.statistic() for detector, f in found.findings.items()}})


@register_stage("scan", 20, "trigger-free backdoor scan of the suspect model: which class, which kind of trigger")
class Scan:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.scan.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        src, tune = state.source, state.inputs.tune
        st = cfg.stages.scan
        key = StageCache.key(src.source_sha256, tune.sha256, st.model_dump(mode="json"), ctx.device.type)
        cached = ctx.cache.load_arrays("scan", key)
        found = (ScanResult.from_arrays(cached, [n for n, _ in st.configured()]) if cached is not None
                 else scan(src.model, tune, src.contract, st, ctx.device))
        ctx.cache.save_arrays("scan", key, found.to_arrays())
        _write(found, "scan", ctx)
        inverted_triggers(found, src.contract.labels, ctx.out_dir / "scan-triggers.png")
        for name in ("scan.json", "scan.npz", "scan-triggers.png"):
            ctx.tracker.log_file(ctx.out_dir / name, "scan")
        state.scan = found
        return {"scan": found.summary()}


@register_stage("rescan", 120, "the same scan of the hardened model: is a backdoor still there to find?")
class Rescan:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.scan.enabled and cfg.stages.scan.rescan

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        again = scan(state.model.model, state.inputs.tune, state.source.contract, cfg.stages.scan, ctx.device)
        _write(again, "rescan", ctx)
        ctx.tracker.log_file(ctx.out_dir / "rescan.json", "rescan")
        return {"rescan": again.summary()}


@register_stage("itasr", 130, "inverted-trigger ASR on held-out images, before and after, when the scan flagged",
                span=False)
class InvertedTriggerAsr:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.scan.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        found = state.scan
        if found is None or not found.flagged:
            return {}
        write_npz(ctx.out_dir / "itasr-trigger.npz", **found.verdict.trigger_arrays())
        heldout, k = state.inputs.heldout, state.source.contract.num_classes
        itasr = {name: inverted_asr(p, found, heldout, k, label=f"ITASR ({name})")
                 for name, p in (("before", state.before), ("after", state.after))}
        ctx.tracker.log_metrics({"itasr_before": itasr["before"], "itasr_after": itasr["after"]})
        return {"itasr": {"target": found.target, "kind": found.kind, "detector": found.detector, **itasr}}

