"""The source model exported by harden's own exporter (so both sides of a latency comparison go through the same
exporter and onnxslim), for benchmark rows whose run did not measure latency itself."""

from __future__ import annotations

from pathlib import Path


def source_onnx(folder: Path, out: Path) -> Path:
    """The unpruned source model as ONNX, exported once per run folder."""
    import torch

    from harden.lineage import atomic_write_bytes
    from harden.models.loading import load_model
    from harden.stages.export import finalize, to_onnx

    path = out / "source.onnx"
    if not path.is_file():
        art = load_model(folder)
        blob, _ = to_onnx(art.model, torch.zeros(2, *art.contract.input_size), "auto")
        atomic_write_bytes(path, finalize(blob, {}, slim=True).SerializeToString())
    return path
