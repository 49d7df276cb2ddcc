"""Every user-facing failure is a HardenError: the CLI prints its message and exits non-zero, no traceback.

Any other exception escaping a stage is a bug in harden and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class HardenError(Exception):
    """A failure the user can act on. The message says what, where, and what to do."""

    exit_code = 2


class ConfigError(HardenError):
    """One or more problems in a pipeline YAML, all reported at once."""

    def __init__(self, source: str | Path, problems: list[tuple[str, str]], what: str = "the pipeline configuration",
                 fix: str = "Fix these keys (or override them with --set key.path=value) and run again."):
        self.source = str(source)
        self.problems = problems
        lines = [f"{self.source}: {len(problems)} problem(s) in {what}:"]
        lines += [f"  - {key or '<top level>'}: {msg}" for key, msg in problems]
        lines.append(fix)
        super().__init__("\n".join(lines))


class ModelLoadError(HardenError):
    """The model cannot be ingested: missing file, unsafe format, or weights that do not fit."""


class DataError(HardenError):
    """A data set cannot be read or does not match the model's input contract."""


class StageError(HardenError):
    """A stage failed for a reason the user can act on; names the stage."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {message}")


class ExportParityError(HardenError):
    """The exported ONNX model disagrees with the torch model beyond tolerance."""

    def __init__(self, path: str | Path, failures: list[str]):
        self.failures = failures
        body = "\n".join(f"  - {f}" for f in failures)
        super().__init__(
            f"ONNX parity check failed for {path}:\n{body}\n"
            "The file was written but must not ship. Raise export.atol only if you understand the cause."
        )


class TrackingError(HardenError):
    """The MLflow tracking store cannot be reached or written."""


class StorageError(HardenError):
    """An output cannot be written (disk full, no permission); nothing half-written is left behind."""
