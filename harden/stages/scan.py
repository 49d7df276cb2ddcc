"""Scan stages: is the suspect model backdoored (before repair), is a backdoor still there to find (after), and how
often the inverted trigger still works on held-out images (ITASR, before and after). All trigger-free."""

from __future__ import annotations

from typing import Any

from ..config import PipelineConfig
from ..context import RunContext
from ..core.stage import register_stage
from ..core.state import RunState
from ..lineage import write_npz
from ..plots import inverted_triggers
from ..resume import StageCache
from ..scan import ScanResult, inverted_asr, scan, scan_from_arrays, scan_to_arrays


def _write(found: ScanResult, name: str, ctx: RunContext) -> None:
    write_npz(ctx.out_dir / f"{name}.npz", masks=found.masks, patterns=found.patterns)
    ctx.write_json(f"{name}.json", found.summary())
    ctx.tracker.log_metrics({"max_anomaly": found.summary()["max_anomaly"], "flagged": float(found.flagged)})


@register_stage("scan", 20, "trigger-free backdoor scan of the suspect model: which class, which kind of trigger")
class Scan:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return cfg.stages.scan.enabled

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        src, tune = state.source, state.inputs.tune
        key = StageCache.key(src.source_sha256, tune.sha256, cfg.stages.scan.model_dump(mode="json"),
                             ctx.device.type)
        cached = ctx.cache.load_arrays("scan", key)
        found = scan_from_arrays(cached) if cached is not None else scan(src.model, tune, src.contract,
                                                                         cfg.stages.scan, ctx.device)
        ctx.cache.save_arrays("scan", key, scan_to_arrays(found))
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
        t = found.target
        if found.kind == "warp" and found.warp is not None:
            write_npz(ctx.out_dir / "itasr-trigger.npz", field=found.warp.fields[t])
        elif found.kind == "grating":
            write_npz(ctx.out_dir / "itasr-trigger.npz", grating=found.trigger()[0].numpy())
        else:
            write_npz(ctx.out_dir / "itasr-trigger.npz", mask=found.masks[t], pattern=found.patterns[t])
        heldout, k = state.inputs.heldout, state.source.contract.num_classes
        itasr = {name: inverted_asr(p, found, heldout, k, label=f"ITASR ({name})")
                 for name, p in (("before", state.before), ("after", state.after))}
        ctx.tracker.log_metrics({"itasr_before": itasr["before"], "itasr_after": itasr["after"]})
        return {"itasr": {"target": found.target, "kind": found.kind, **itasr}}

