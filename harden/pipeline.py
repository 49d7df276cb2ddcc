"""The runner: walks the registered stages in order, each enabled one inside a timed lineage span, and writes the
report. It names no stage, method, detector, repair or scorer: those live in harden/stages and their registries."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

import harden.stages  # noqa: F401  (importing the package registers the built-in stages)
from harden import __version__
from harden.config.loading import resolved_dict
from harden.config.schema import PipelineConfig
from harden.core.context import RunContext, resolve_device
from harden.core.io import atomic_write_bytes
from harden.core.progress import console
from harden.core.resume import StageCache
from harden.core.stage import Stage, order_of, ordered
from harden.core.state import RunState
from harden.lineage.tracker import make_tracker
from harden.report import html as report_html


@dataclass
class PipelineResult:
    out_dir: Path
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    state: RunState | None = None  # what the stages handed on (a preview stopped early reads its choices here)


def run_pipeline(cfg: PipelineConfig, out_dir: Path, config_path: Path | None = None, resume: bool = False,
                 until: str | None = None) -> PipelineResult:
    """Run every enabled stage in order; then write report.json and report.html.

    Args:
        until: stop after this stage (or where it would have run, when it is disabled); nothing is reported.

    Raises:
        HardenError: any failure the user can act on; the lineage runs of the failed stage and pipeline end FAILED.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ctx = RunContext(resolve_device(cfg.device), cfg.seed, out_dir, make_tracker(cfg.tracking, out_dir),
                     StageCache(out_dir, read=resume))
    if resume:  # a killed run leaves its lineage runs RUNNING forever: close them before starting again
        stale = ctx.tracker.kill_stale(out_dir)
        if stale:
            console.print(f"[yellow]resume: marked {stale} interrupted run(s) KILLED in the tracking store[/]")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    state = RunState({"harden_version": __version__, "device": str(ctx.device),
                      "pipeline": {"name": cfg.name, "sha256": cfg.digest(), "config": str(config_path or "")}})
    last = order_of(until) if until is not None else float("inf")
    tags = {"harden.version": __version__, "harden.pipeline_sha256": cfg.digest(), "harden.out_dir": str(out_dir)}
    with ctx.tracker.pipeline(cfg.name, {"pipeline_sha256": cfg.digest(), "device": str(ctx.device)}, tags):
        atomic_write_bytes(out_dir / "config.resolved.yaml",
                           yaml.safe_dump(resolved_dict(cfg), sort_keys=False).encode())
        ctx.tracker.log_file(out_dir / "config.resolved.yaml")
        for stage in ordered():
            if order_of(stage.name) > last:
                return PipelineResult(out_dir, state.report, seconds, state)
            if stage.enabled(cfg):
                with _span(stage, ctx, seconds):
                    state.report.update(stage.run(cfg, state, ctx))
        seconds["total"] = round(time.perf_counter() - t_all, 3)
        report = state.report | {"seconds": seconds, "resumed_from_cache": sorted(set(ctx.cache.hits))}
        ctx.write_json("report.json", report)
        report_html.write(report, out_dir)
        ctx.tracker.log_file(out_dir / "report.json")
        ctx.tracker.log_file(out_dir / "report.html")
        ctx.tracker.log_metrics({"total_seconds": seconds["total"]})
    return PipelineResult(out_dir, report, seconds, state)


@contextlib.contextmanager
def _span(stage: Stage, ctx: RunContext, seconds: dict[str, float]) -> Iterator[None]:
    """A stage's own child run in the lineage store, timed; bookkeeping stages (span False) use the parent run."""
    if not stage.span:
        yield
        return
    console.print(f"[bold cyan]▶ {stage.name}[/]")
    t0 = time.perf_counter()
    with ctx.tracker.stage(stage.name):
        yield
        seconds[stage.name] = round(time.perf_counter() - t0, 3)
        ctx.tracker.log_metrics({"seconds": seconds[stage.name]})
