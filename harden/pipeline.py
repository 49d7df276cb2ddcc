"""Orders the stages, wraps each in a lineage span and a timer, and writes the report. Knows no method names."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from . import __version__, checked, gate, int8, latency, polarizer, report_html
from .artifacts import FinetuneResult, ModelArtifact
from .config import PipelineConfig, resolved_dict
from .context import RunContext, resolve_device
from .evaluate import accuracy, onnx_predictor, torch_predictor
from .lineage import MlflowTracker, NullTracker, Tracker, atomic_write_bytes, default_tracking_uri, write_npz
from .progress import console
from .plots import inverted_triggers, score_histograms
from .resume import StageCache, load_state, state_to_arrays
from .scan import inverted_asr, reinverted, scan_from_arrays, scan_to_arrays
from .scan import scan as scan_model
from .stages import export, finetune, ingest, prune, score, select, verify


@dataclass
class PipelineResult:
    out_dir: Path
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def _log_history(tracker: Tracker, history: list[dict[str, float]]) -> None:
    """Per-epoch loss and held-out accuracy of a training stage, as MLflow metric steps."""
    for row in history:
        tracker.log_metrics({"loss": row["loss"], "heldout_acc": row["heldout_acc"]}, step=int(row["epoch"]))


def _save_weights(path: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


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


def make_tracker(cfg: PipelineConfig, out_dir: Path) -> Tracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    uri = cfg.tracking.uri or default_tracking_uri(out_dir)
    return MlflowTracker(uri, cfg.tracking.experiment, out_dir / "mlartifacts")


def run_pipeline(cfg: PipelineConfig, out_dir: Path, config_path: Path | None = None,
                 resume: bool = False) -> PipelineResult:
    """Run every enabled stage in order: ingest, score, prune, finetune, export, verify; then register and report.

    Raises:
        HardenError: any failure the user can act on; the MLflow runs of the failed stage and pipeline end FAILED.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ctx = RunContext(resolve_device(cfg.device), cfg.seed, out_dir, make_tracker(cfg, out_dir))
    cache = StageCache(out_dir, read=resume)
    if resume:  # a killed run leaves its MLflow runs RUNNING forever: close them before starting again
        stale = ctx.tracker.kill_stale(out_dir)
        if stale:
            console.print(f"[yellow]resume: marked {stale} interrupted MLflow run(s) KILLED[/]")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    st = cfg.stages
    report: dict[str, Any] = {"harden_version": __version__, "device": str(ctx.device)}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        console.print(f"[bold cyan]▶ {name}[/]")
        t0 = time.perf_counter()
        with ctx.tracker.stage(name):
            yield
            seconds[name] = round(time.perf_counter() - t0, 3)
            ctx.tracker.log_metrics({"seconds": seconds[name]})

    tags = {"harden.version": __version__, "harden.pipeline_sha256": cfg.digest(), "harden.out_dir": str(out_dir)}
    resolved = resolved_dict(cfg)
    with ctx.tracker.pipeline(cfg.name, {"pipeline_sha256": cfg.digest(), "device": str(ctx.device)}, tags):
        atomic_write_bytes(out_dir / "config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False).encode())
        ctx.tracker.log_file(out_dir / "config.resolved.yaml")

        with stage("ingest"):
            inp = ingest.run(cfg, out_dir / "source")
            src = inp.model
            for name, ds, context in (("clean-tune", inp.tune, "training"), ("clean-heldout", inp.heldout, "validation"),
                                      ("test", inp.test, "evaluation")):
                if ds is not None:
                    ctx.tracker.log_dataset(ds.x, ds.y, name, ds.source, ds.sha256, context)
            ctx.tracker.log_params({"architecture": src.architecture, "model_args": json.dumps(src.model_args),
                                    "source_sha256": src.source_sha256, "source_path": str(src.source_path),
                                    "tune_images": len(inp.tune), "heldout_images": len(inp.heldout)})
        report["source"] = {"path": str(src.source_path), "sha256": src.source_sha256,
                            "uri": cfg.model.path if isinstance(cfg.model.path, str) else None,
                            "architecture": src.architecture, "model_args": src.model_args}
        report["pipeline"] = {"name": cfg.name, "sha256": cfg.digest(), "config": str(config_path or "")}
        report["data"] = {"clean_sha256": inp.clean.sha256, "tune": len(inp.tune), "heldout": len(inp.heldout),
                          "test": len(inp.test) if inp.test is not None else 0}
        current: ModelArtifact = src
        hooks: list[object] = []

        found = None
        if st.scan.enabled:
            with stage("scan"):
                key = StageCache.key(src.source_sha256, inp.tune.sha256, st.scan.model_dump(mode="json"),
                                     ctx.device.type)
                cached = cache.load_arrays("scan", key)
                found = scan_from_arrays(cached) if cached is not None else scan_model(
                    src.model, inp.tune, src.contract, st.scan, ctx.device)
                cache.save_arrays("scan", key, scan_to_arrays(found))
                write_npz(out_dir / "scan.npz", masks=found.masks, patterns=found.patterns)
                _write_json(out_dir / "scan.json", found.summary())
                inverted_triggers(found, src.contract.labels, out_dir / "scan-triggers.png")
                for name in ("scan.json", "scan.npz", "scan-triggers.png"):
                    ctx.tracker.log_file(out_dir / name, "scan")
                ctx.tracker.log_metrics({"max_anomaly": found.summary()["max_anomaly"],
                                         "flagged": float(found.flagged)})
            report["scan"] = found.summary()

        scores = None
        if st.score.enabled:
            with stage("score"):
                outcome = score.run(st.score, current, inp.tune, cache)
                scores = outcome.combined
                _write_json(out_dir / "scores.json", {**scores.to_json(), "per_method": {
                    name: s.to_json() for name, s in outcome.per_method.items()}})
                score_histograms(scores, out_dir / "scores.png", cfg.name)
                ctx.tracker.log_file(out_dir / "scores.json", "score")
                ctx.tracker.log_file(out_dir / "scores.png", "score")
                ctx.tracker.log_metrics({"flagged": scores.num_flagged(), "channels": scores.num_channels(),
                                         **{f"seconds_{k}": v for k, v in outcome.seconds.items()}})
            report["score"] = {"method": scores.method, "flagged": scores.num_flagged(),
                               "channels": scores.num_channels(), "seconds": outcome.seconds}

        if st.prune.enabled and scores is not None:
            with stage("prune"):
                prep = prune.prepare(current)
                inverted = None
                if found is not None and found.flagged:
                    def inverted(m, found=found):
                        return inverted_asr(torch_predictor(m, src.contract, ctx.device), found, inp.tune,
                                            src.contract.num_classes, label="ITASR (tune)")
                fresh = None
                if found is not None and found.kind == "patch" and st.prune.select.reinvert:
                    def fresh(m, found=found):
                        return reinverted(m, found, inp.tune, src.contract, st.scan, ctx.device)
                chosen = select.run(st.prune, current, scores, inp.tune, prep, ctx.device,
                                    None if found is None else found.flagged, inverted, fresh)
                scores = chosen.scores
                for i, row in enumerate(chosen.trace):
                    ctx.tracker.log_metrics({"select_tune_acc": row["tune_acc"], "select_flagged": row["flagged"]},
                                            step=i)
                current, pr = prune.run(st.prune, current, scores, ctx.device, prep)
                hooks.append(prune.ZeroMask(pr.zeroed, pr.gamma_zeroed))
                _write_json(out_dir / "pruning.json", {"threshold": chosen.threshold, "selection": chosen.trace,
                                                       "removed": pr.removed, "zeroed": pr.zeroed,
                                                       "gamma_zeroed": pr.gamma_zeroed,
                                                       "folded": pr.folded, "history": pr.history})
                ctx.tracker.log_file(out_dir / "pruning.json", "prune")
                ctx.tracker.log_metrics({"params_before": pr.params_before, "params_after": pr.params_after,
                                         "macs_before": pr.macs_before, "macs_after": pr.macs_after,
                                         "max_abs_diff_vs_masked": pr.max_abs_diff_vs_masked})
            report["prune"] = {"threshold": chosen.threshold, "flagged": scores.num_flagged(),
                               "selection": chosen.trace, "removed": sum(map(len, pr.removed.values())),
                               "zeroed": sum(map(len, pr.zeroed.values())),
                               "gamma_zeroed": sum(map(len, pr.gamma_zeroed.values())),
                               "max_abs_diff_vs_masked": pr.max_abs_diff_vs_masked,
                               "folded": sum(map(len, pr.folded.values())), "fold_max_abs_diff": pr.fold_max_abs_diff}
            report["params"] = {"before": pr.params_before, "after": pr.params_after}
            report["macs"] = {"before": pr.macs_before, "after": pr.macs_after}
        else:
            example = torch.zeros(1, *src.contract.input_size)
            macs, params = prune.count(src.model.cpu(), example)
            report["params"] = {"before": params, "after": params}
            report["macs"] = {"before": macs, "after": macs}

        if st.polarize.enabled:
            with stage("polarize"):
                current, pol = polarizer.run(st.polarize, current, inp.tune, inp.heldout, ctx.device, cfg.seed,
                                             lambda m: accuracy(torch_predictor(m, src.contract, ctx.device),
                                                                inp.heldout, label="held-out accuracy"))
                _log_history(ctx.tracker, pol.history)
            if pol.diverged:
                console.print("[yellow]polarizer training lost too much held-out accuracy; kept it at identity[/]")
            report["polarize"] = {"at": pol.at, "channels": pol.channels, "epochs_run": pol.epochs_run,
                                  "diverged": pol.diverged, "heldout_acc_before": pol.heldout_acc_before,
                                  "heldout_acc_calibrated": pol.heldout_acc_calibrated,
                                  "heldout_acc_after": pol.heldout_acc_after}

        if st.finetune.enabled:
            with stage("finetune"):
                current, ft = _finetune(cfg, current, src, inp, ctx.device, hooks, found, cache, report.get("prune"))
                _log_history(ctx.tracker, ft.history)
            if ft.diverged:
                console.print("[yellow]fine-tuning diverged (held-out accuracy fell); kept the model from before it[/]")
            report["finetune"] = {"epochs_run": ft.epochs_run, "best_epoch": ft.best_epoch, "diverged": ft.diverged,
                                  **finetune.active_repairs(st.finetune, found),
                                  "heldout_acc_start": ft.heldout_acc_before, "heldout_acc_best": ft.best_heldout_acc,
                                  "history": ft.history}

        _save_weights(out_dir / "hardened.safetensors", current.model)
        after = torch_predictor(current.model, src.contract, ctx.device)
        after_kind = "torch"
        exp = None
        if st.export.enabled:
            with stage("export"):
                meta = {"harden.source_sha256": src.source_sha256, "harden.pipeline_sha256": cfg.digest(),
                        "harden.version": __version__, "harden.architecture": src.architecture}
                exp = export.run(st.export, current, inp.heldout, out_dir, meta)
                ctx.tracker.log_file(exp.path, "export")
                ctx.tracker.log_metrics({"onnx_max_abs_diff": exp.max_abs_diff, "onnx_top1_agreement": exp.top1_agreement})
            report["onnx"] = {"path": str(exp.path), "sha256": exp.sha256, "max_abs_diff": exp.max_abs_diff,
                              "top1_agreement": exp.top1_agreement, "exporter": exp.exporter, "nodes": exp.nodes}
            after = onnx_predictor(exp.path, src.contract)
            after_kind = "onnxruntime"

        before = torch_predictor(copy_model(src.model), src.contract, ctx.device)
        report["heldout_acc"] = {"before": accuracy(before, inp.heldout, label="held-out accuracy (before)"),
                                 "after": accuracy(after, inp.heldout, label="held-out accuracy (after)")}
        if st.verify.enabled:
            measured_on = inp.test if inp.test is not None else inp.heldout
            with stage("verify"):
                vr = verify.run(st.verify, before, after, after_kind, measured_on, src.contract.num_classes)
                metrics = {"clean_acc_before": vr.clean_acc_before, "clean_acc_after": vr.clean_acc_after}
                for k in vr.asr_after:
                    metrics |= {f"asr_{k}_before": vr.asr_before[k], f"asr_{k}_after": vr.asr_after[k],
                                f"robust_acc_{k}_after": vr.robust_acc_after[k]}
                ctx.tracker.log_metrics(metrics)
            report["clean_acc"] = {"before": vr.clean_acc_before, "after": vr.clean_acc_after,
                                   "measured_on": "test" if inp.test is not None else "heldout",
                                   "after_with": vr.evaluated_after_with}
            report["asr"] = {k: {"before": vr.asr_before[k], "after": vr.asr_after[k]} for k in vr.asr_after}
            report["robust_acc"] = {k: {"after": v} for k, v in vr.robust_acc_after.items()}
        if st.scan.enabled and st.scan.rescan:  # trigger-free check: is a backdoor still there to find?
            with stage("rescan"):
                again = scan_model(current.model, inp.tune, src.contract, st.scan, ctx.device)
                write_npz(out_dir / "rescan.npz", masks=again.masks, patterns=again.patterns)
                _write_json(out_dir / "rescan.json", again.summary())
                ctx.tracker.log_file(out_dir / "rescan.json", "rescan")
                ctx.tracker.log_metrics({"max_anomaly": again.summary()["max_anomaly"],
                                         "flagged": float(again.flagged)})
            report["rescan"] = again.summary()
        if found is not None and found.flagged:  # trigger-free check: the inverted trigger, on held-out images
            t = found.target
            if found.kind == "warp" and found.warp is not None:
                write_npz(out_dir / "itasr-trigger.npz", field=found.warp.fields[t])
            elif found.kind == "grating":
                write_npz(out_dir / "itasr-trigger.npz", grating=found.trigger()[0].numpy())
            else:
                write_npz(out_dir / "itasr-trigger.npz", mask=found.masks[t], pattern=found.patterns[t])
            itasr = {k: inverted_asr(p, found, inp.heldout, src.contract.num_classes, label=f"ITASR ({k})")
                     for k, p in (("before", before), ("after", after))}
            report["itasr"] = {"target": found.target, "kind": found.kind, **itasr}
            ctx.tracker.log_metrics({"itasr_before": itasr["before"], "itasr_after": itasr["after"]})

        if exp is not None and st.export.latency:
            with stage("latency"):
                report["latency"] = _latency(src, exp.path, out_dir, st.export)
                ctx.tracker.log_metrics({f"latency_ratio_{k}": v["ratio"] for k, v in report["latency"].items()})
        if st.int8.enabled:
            measured_on = inp.test if inp.test is not None else inp.heldout
            with stage("int8"):
                q = int8.quantize(st.int8, exp.path, inp.tune, inp.heldout, src.contract, out_dir)
                acc, asr, robust = verify.measure(st.verify, onnx_predictor(q.path, src.contract), measured_on,
                                                  src.contract.num_classes, "INT8")
                lat = latency.compare(exp.path, q.path, tuple(st.export.latency_batches))
                ctx.tracker.log_file(q.path, "int8")
                ctx.tracker.log_metrics({"int8_clean_acc": acc, "int8_top1_agreement": q.top1_agreement,
                                         **{f"int8_asr_{k}": v for k, v in asr.items()},
                                         **{f"int8_latency_ratio_{k}": v["ratio"] for k, v in lat.items()}})
            report["int8"] = {"path": str(q.path), "sha256": q.sha256, "clean_acc": acc,
                              "asr": asr, "robust_acc": robust, "top1_agreement_vs_fp32": q.top1_agreement,
                              "max_abs_diff_vs_fp32": q.max_abs_diff, "latency_vs_fp32": lat}

        report["checked"] = checked.checked(cfg, report)
        aliases = ("candidate",)
        if cfg.gate.enabled:
            checks = gate.evaluate(cfg.gate, report)
            report["gate"] = gate.write_results(checks, out_dir, cfg.name)
            ctx.tracker.log_file(out_dir / "gate.json", "gate")
            ctx.tracker.log_file(out_dir / "gate-junit.xml", "gate")
            ctx.tracker.log_metrics({"gate_passed": float(report["gate"]["passed"])})
            if report["gate"]["passed"]:
                aliases += (cfg.gate.promote_alias,)
        report["mlflow"] = {"tracking_uri": getattr(ctx.tracker, "uri", None), "run_id": ctx.tracker.parent_run_id,
                            "model_name": None, "model_version": None}
        if exp is not None:
            name = registered_name(cfg)
            done = cache.load_json(f"registered-{exp.sha256[:24]}")  # registered before a crash: not twice
            if done is not None and done["name"] == name:
                version = done["version"]
                ctx.tracker.set_aliases(name, version, aliases)
            else:
                version = ctx.tracker.register_onnx(exp.path, name, _example(inp.heldout, src),
                                                    registry_tags(report), aliases)
                if version is not None:
                    cache.save_json(f"registered-{exp.sha256[:24]}", {"name": name, "version": version})
            if version is not None:
                report["mlflow"] |= {"model_name": name, "model_version": version}
        seconds["total"] = round(time.perf_counter() - t_all, 3)
        report["seconds"] = seconds
        report["resumed_from_cache"] = sorted(set(cache.hits))
        _write_json(out_dir / "report.json", report)
        report_html.write(report, out_dir)
        ctx.tracker.log_file(out_dir / "report.json")
        ctx.tracker.log_file(out_dir / "report.html")
        ctx.tracker.log_metrics({"total_seconds": seconds["total"]})
    return PipelineResult(out_dir, report, seconds)


def _finetune(cfg: PipelineConfig, current: ModelArtifact, src: ModelArtifact, inp, device: torch.device,
              hooks: list[object], found, cache: StageCache, pruned: dict | None
              ) -> tuple[ModelArtifact, FinetuneResult]:
    """The fine-tune stage, its weights cached for --resume (keyed by everything the result depends on; not after a
    polarizer, whose inserted layer is not rebuilt before this point)."""
    st = cfg.stages
    key = StageCache.key(src.source_sha256, inp.tune.sha256, inp.heldout.sha256, cfg.seed,
                         st.finetune.model_dump(mode="json"), pruned,
                         None if found is None else [found.kind, found.target])
    cached = None if st.polarize.enabled else cache.load_arrays("finetune", key)
    if cached is not None:  # prune has rebuilt the same architecture; only the weights are reused
        current = ModelArtifact(**{**current.__dict__, "model": copy.deepcopy(current.model)})
        load_state(current.model, {k[2:]: v for k, v in cached.items() if k.startswith("w:")})
        return current, FinetuneResult(**json.loads(str(cached["result"])))
    current, ft = finetune.run(st.finetune, current, src.model, inp.tune, inp.heldout, device, cfg.seed, hooks,
                               found if found is not None and found.flagged else None)
    if not st.polarize.enabled:
        cache.save_arrays("finetune", key, {**{f"w:{k}": v for k, v in state_to_arrays(current.model).items()},
                                            "result": np.array(json.dumps(dataclasses.asdict(ft)))})
    return current, ft


def _latency(src: ModelArtifact, hardened: Path, out_dir: Path, cfg) -> dict[str, dict[str, float]]:
    """The source model exported the way the hardened one was, then both timed side by side (report only)."""
    source = export.write_reference(src.model, src.contract.input_size, out_dir / "source.onnx", cfg.exporter,
                                    cfg.slim)
    names = {"reference_ms": "source_ms", "candidate_ms": "hardened_ms", "reference_median_ms": "source_median_ms",
             "candidate_median_ms": "hardened_median_ms", "ratio": "ratio"}
    return {k: {names[m]: x for m, x in v.items()}
            for k, v in latency.compare(source, hardened, tuple(cfg.latency_batches)).items()}


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval()


def _example(heldout, src: ModelArtifact) -> np.ndarray:
    return src.contract.normalize(heldout.batch01(slice(0, 2))).numpy().astype(np.float32)


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


def summary_table(report: dict[str, Any]):
    from rich.table import Table

    t = Table(title="harden: before / after", show_lines=False)
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    if "clean_acc" in report:
        t.add_row(f"clean accuracy ({report['clean_acc']['measured_on']})", pct(report["clean_acc"]["before"]),
                  pct(report["clean_acc"]["after"]))
    t.add_row("held-out clean accuracy", pct(report["heldout_acc"]["before"]), pct(report["heldout_acc"]["after"]))
    for k, v in report.get("asr", {}).items():
        t.add_row(f"ASR {k}", pct(v["before"]), pct(v["after"]))
    if "scan" in report:
        s = report["scan"]
        t.add_row("Neural Cleanse", f"max anomaly {s['max_anomaly']:.2f}",
                  f"target {s['patch_target']}" if s.get("patch_target") is not None else "not flagged")
        if "warp" in s:
            t.add_row("warp inversion", f"max success {pct(s['warp']['max_success'])}",
                      f"target {s['warp']['target']}" if s["warp"]["target"] is not None else "not flagged")
        if "grating" in s:
            g = s["grating"]
            t.add_row("grating scan", f"max gap {g['max_gap']:.2f}",
                      f"target {g['target']}" if g["target"] is not None else "not flagged")
    if "itasr" in report:
        t.add_row(f"inverted-trigger ASR (class {report['itasr']['target']})", pct(report["itasr"]["before"]),
                  pct(report["itasr"]["after"]))
    t.add_row("params", f"{report['params']['before']:,}", f"{report['params']['after']:,}")
    t.add_row("MACs", f"{report['macs']['before']:,}", f"{report['macs']['after']:,}")
    if "onnx" in report:
        t.add_row("ONNX parity (max |diff|)", "", f"{report['onnx']['max_abs_diff']:.1e}")
    t.add_row("wall time", "", f"{report['seconds']['total']:.0f} s")
    return t


def render_summary(report: dict[str, Any]) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=100)
    console.print(summary_table(report))
    for line in summary_notes(report):
        console.print(line, highlight=False, markup=False)
    return buf.getvalue()


def summary_notes(report: dict[str, Any]) -> list[str]:
    """What the table's figures rest on: which known triggers were checked, what the scans found, what ran, where
    the model was registered."""
    notes = []
    if "checked" in report:
        c = report["checked"]
        notes += [f"known triggers: {', '.join(c['known_triggers']) or checked.NO_TRIGGER}",
                  f"backdoor search: {c['scan']}", f"repairs that ran: {'; '.join(c['repairs']) or 'none'}"]
    if report.get("mlflow", {}).get("model_version") is not None:
        notes.append(f"registered: {report['mlflow']['model_name']} version {report['mlflow']['model_version']}")
    return notes
