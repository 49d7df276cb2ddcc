"""The source model exported by harden's own exporter (so both sides of a latency comparison go through the same
exporter and onnxslim), for benchmark rows whose run did not measure latency itself."""

from __future__ import annotations

from pathlib import Path


def source_onnx(folder: Path, out: Path) -> Path:
    """The unpruned source model as ONNX, exported once per run folder."""
    from harden.models.loading import load_model
    from harden.stages.export import write_reference

    path = out / "source.onnx"
    if not path.is_file():
        art = load_model(folder)
        write_reference(art.model, art.contract.input_size, path)
    return path
