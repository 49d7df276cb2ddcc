"""The stage protocol and the stage registry: the runner walks whatever is registered, in order, and knows no stage.

A stage reads its own section of the pipeline config, reads and extends the run state, and returns the report
sections it adds. Order numbers leave room between the built-in stages for plug-ins (`harden list` shows them):
ingest 10, scan 20, score 30, select 40, prune 50, size 55, polarize 60, finetune 70, weights 80, export 90,
heldout 100, verify 110, rescan 120, itasr 130, latency 140, int8 150, checked 160, gate 170, register 180.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from harden.core.registry import Registry

if TYPE_CHECKING:
    from harden.config.schema import PipelineConfig
    from harden.core.context import RunContext
    from harden.core.state import RunState


class Stage(Protocol):
    name: ClassVar[str]
    span: ClassVar[bool]  # run inside its own timed MLflow child run (False: bookkeeping that belongs to the parent)

    def enabled(self, cfg: PipelineConfig) -> bool: ...

    def run(self, cfg: PipelineConfig, state: RunState, ctx: RunContext) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StageEntry:
    order: float
    stage: Stage


STAGES: Registry[StageEntry] = Registry("stage")


def register_stage(name: str, order: float, description: str, span: bool = True) -> Callable[[type], type]:
    """Class decorator: registers one instance of the stage under ``name`` at position ``order``."""

    def deco(cls: type) -> type:
        cls.name, cls.span = name, span
        STAGES.register(name, description)(StageEntry(order, cls()))
        return cls

    return deco


def ordered() -> list[Stage]:
    """Every registered stage, in pipeline order."""
    return [e.stage for e in sorted((STAGES.get(n) for n in STAGES.names()), key=lambda e: e.order)]


def order_of(name: str) -> float:
    return STAGES.get(name).order
