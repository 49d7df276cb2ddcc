"""`harden score`: run ingest + score + selection only, and write what would be pruned, so a user can look first."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import PipelineConfig
from .context import resolve_device
from .lineage import atomic_write_bytes
from .plots import score_histograms
from .stages import ingest, prune, score, select


def preview(cfg: PipelineConfig, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    inp = ingest.run(cfg)
    outcome = score.run(cfg.stages.score, inp.model, inp.tune)
    prep = prune.prepare(inp.model)
    chosen = select.run(cfg.stages.prune, inp.model, outcome.combined, inp.tune, prep, resolve_device(cfg.device))
    _, plan, *_ = prune.masked_model(prep, chosen.scores, cfg.stages.prune)
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
