"""ONNX latency for the benchmark: the source model exported by harden's own exporter (so both sides go through the
same exporter and onnxslim) against the hardened ONNX, on one onnxruntime thread."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


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


def onnx_latency_ms(path: Path, batch: int = 32, repeats: int = 30, threads: int = 1) -> float:
    """Median milliseconds per batch (after warm-up)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shape = [batch] + [d for d in sess.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(1000 * np.median(times))
