"""The run state: what one stage hands the next. Each field says which stage fills it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

    from harden.core.artifacts import ChannelScores, ExportResult, ModelArtifact
    from harden.detect import ScanResult
    from harden.ingest.data.sources import ImageSet
    from harden.prune.remove import Prepared
    from harden.prune.select import Selection
    from harden.stages.ingest import Inputs
    from harden.stages.score import ScoreOutcome

    Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class RunState:
    report: dict[str, Any]  # report.json as it grows: the runner merges every stage's sections into it
    inputs: Inputs | None = None  # ingest
    model: ModelArtifact | None = None  # the model as it stands: ingest's, then pruned, polarized, fine-tuned
    scan: ScanResult | None = None  # scan
    scored: ScoreOutcome | None = None  # score: every method's scores and their fusion
    scores: ChannelScores | None = None  # score, then select (flags set by the chosen threshold)
    selection: Selection | None = None  # select
    prepared: Prepared | None = None  # select: the dependency graph that prune removes channels through
    hooks: list[object] = field(default_factory=list)  # training hooks earlier stages hand to the fine-tune
    exported: ExportResult | None = None  # export
    before: Predictor | None = None  # the suspect model, for before / after figures
    after: Predictor | None = None  # the hardened model: torch, or onnxruntime once exported
    after_kind: str = "torch"

    @property
    def source(self) -> ModelArtifact:
        assert self.inputs is not None, "ingest runs first"
        return self.inputs.model

    @property
    def measured_on(self) -> ImageSet:
        """Where final figures are measured: the test set when there is one, else the held-out split."""
        assert self.inputs is not None
        return self.inputs.test if self.inputs.test is not None else self.inputs.heldout
