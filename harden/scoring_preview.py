"""`harden score`: the pipeline's own runner stopped after selection (so the preview cannot choose a different cut
than the run), then what would be pruned, written down so a user can look first."""

from __future__ import annotations

import json
from pathlib import Path

from harden.config.schema import PipelineConfig
from harden.core.errors import HardenError
from harden.core.io import atomic_write_bytes
from harden.pipeline import run_pipeline
from harden.prune.remove import masked_model
from harden.report.plots import score_histograms


def preview(cfg: PipelineConfig, out_dir: Path) -> str:
    if not cfg.stages.score.enabled:
        raise HardenError("stages.score is disabled in this pipeline: there are no scores to preview")
    quiet = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    state = run_pipeline(quiet, out_dir, until="select").state
    outcome, chosen = state.scored, state.selection
    if chosen is None:
        raise HardenError("stages.prune is disabled in this pipeline: nothing would be pruned")
    _, plan, *_ = masked_model(state.prepared, chosen.scores, cfg.stages.prune)
    files = []
    for name, scores in {**outcome.per_method, **({"fused": outcome.combined} if len(outcome.per_method) > 1
                                                   else {})}.items():
        shown = chosen.scores if scores is outcome.combined else scores
        png = out_dir / f"scores-{name}.png"
        score_histograms(shown, png, name if shown is scores else f"{name} (selected)")
        files.append(png)
    doc = {"combined": chosen.scores.to_json(), "per_method": {n: s.to_json() for n, s in outcome.per_method.items()},
           "seconds": outcome.seconds, "selection": {"policy": cfg.stages.prune.select.policy,
                                                     "threshold": chosen.threshold, "trace": chosen.trace}}
    atomic_write_bytes(out_dir / "scores.json", json.dumps(doc).encode())
    lines = [f"scored {outcome.combined.num_channels()} channels with {', '.join(outcome.per_method)} "
             f"({', '.join(f'{k} {v:.1f} s' for k, v in outcome.seconds.items())})",
             f"selection ({cfg.stages.prune.select.policy}): threshold {chosen.threshold}, "
             f"{chosen.scores.num_flagged()} channels flagged"]
    if "scan" in state.report:
        lines.append(f"scan: {'flagged, class ' + str(state.scan.target) if state.scan.flagged else 'not flagged'}"
                     " (the selection's budget and tie-break follow the verdict, as in `harden run`)")
    for row in chosen.trace:
        lines.append("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    for conv, layer in chosen.scores.layers.items():
        if bool(layer.flag.any()):
            lines.append(f"  {conv}: channels {layer.flag.nonzero().flatten().tolist()}")
    gamma = f", and set gamma 0 (beta kept) on {sum(map(len, plan.gamma.values()))} BN channels in place"
    lines.append(f"pruning would remove {sum(map(len, plan.remove.values()))} channels physically, silence "
                 f"{sum(map(len, plan.silence.values()))} stream-wide and zero {sum(map(len, plan.branch.values()))} "
                 f"in single branches{gamma if plan.gamma else ''}")
    lines += [f"wrote {out_dir / 'scores.json'}"] + [f"wrote {f}" for f in files]
    return "\n".join(lines)
