"""Ingest: the suspect model (safely) and the data sets, checked against the model's input contract."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.config.ingest import is_registry_uri
from harden.config.schema import PipelineConfig
from harden.core.artifacts import InputContract, ModelArtifact
from harden.core.context import RunContext
from harden.core.errors import DataError
from harden.core.stage import register_stage
from harden.core.state import RunState
from harden.ingest.data.sources import ImageSet, load_images, stratified_split
from harden.ingest.models.fetch import fetch
from harden.ingest.models.loading import load_model


@dataclass(frozen=True)
class Inputs:
    model: ModelArtifact
    clean: ImageSet
    tune: ImageSet  # the part stages learn and choose on
    heldout: ImageSet  # stopping rules and checks only
    test: ImageSet | None  # read only for the final report


def run(cfg: PipelineConfig, download_dir: Path | None = None) -> Inputs:
    """``download_dir``: where a model named by an MLflow URI is fetched to (default: a temporary folder)."""
    m = cfg.model
    contract = None
    if m.input is not None:
        n = m.num_classes or (len(m.input.labels) if m.input.labels else None)
        if n is None:
            raise DataError("model.input needs labels (or set model.num_classes) for a bare weights file")
        labels = tuple(m.input.labels or [str(i) for i in range(n)])
        contract = InputContract(tuple(m.input.size), tuple(m.input.mean), tuple(m.input.std), labels,
                                 m.input.pixel_scale)
    path = m.path
    if is_registry_uri(path):
        path = fetch(path, download_dir or Path(tempfile.mkdtemp(prefix="harden-source-")), cfg.tracking.uri)
    art = load_model(path, m.architecture, m.model_args, m.num_classes, contract, m.trust_code, m.rename)
    c = cfg.data.clean
    clean = load_images(c.path, art.contract, "data.clean", c.limit, cfg.seed)
    missing = sorted(set(range(art.contract.num_classes)) - set(clean.y.tolist()))
    if missing:
        names = [art.contract.labels[i] for i in missing]
        raise DataError(f"data.clean ({c.path}) has no images of class(es) {names}; the defender's set needs every class")
    tune, heldout = stratified_split(clean, c.heldout_fraction, c.split_seed)
    test = None
    if cfg.data.test is not None:
        test = load_images(cfg.data.test.path, art.contract, "data.test", cfg.data.test.limit, cfg.seed)
    return Inputs(art, clean, tune, heldout, test)


@register_stage("ingest", 10, "read the suspect model safely and the defender's clean data (tune / held-out split)")
class Ingest:
    def enabled(self, cfg: PipelineConfig) -> bool:
        return True

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]:
        inp = run(cfg, ctx.out_dir / "source")
        src = inp.model
        for name, ds, context in (("clean-tune", inp.tune, "training"), ("clean-heldout", inp.heldout, "validation"),
                                  ("test", inp.test, "evaluation")):
            if ds is not None:
                ctx.tracker.log_dataset(ds.x, ds.y, name, ds.source, ds.sha256, context)
        ctx.tracker.log_params({"architecture": src.architecture, "model_args": json.dumps(src.model_args),
                                "source_sha256": src.source_sha256, "source_path": str(src.source_path),
                                "tune_images": len(inp.tune), "heldout_images": len(inp.heldout)})
        state.inputs, state.model = inp, src
        return {"source": {"path": str(src.source_path), "sha256": src.source_sha256,
                           "uri": cfg.model.path if isinstance(cfg.model.path, str) else None,
                           "architecture": src.architecture, "model_args": src.model_args},
                "data": {"clean_sha256": inp.clean.sha256, "tune": len(inp.tune), "heldout": len(inp.heldout),
                         "test": len(inp.test) if inp.test is not None else 0}}
