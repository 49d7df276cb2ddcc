"""ONNX latency, measured side by side: median milliseconds per batch on onnxruntime's CPU provider, one thread, after
warm-up. Ratios between two files measured in the same process are what the report and the gate use; absolute
numbers depend on the machine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def onnx_latency_ms(path: Path, batch: int = 32, repeats: int = 30, threads: int = 1) -> float:
    """Median milliseconds per batch of ``batch`` random inputs (after 5 warm-up runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shape = [batch] + [int(d) for d in sess.get_inputs()[0].shape[1:]]
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(1000 * np.median(times))


def compare(reference: Path, candidate: Path, batches: tuple[int, ...] = (1, 64), repeats: int = 20,
            rounds: int = 3) -> dict[str, dict[str, float]]:
    """Latency of ``candidate`` against ``reference`` per batch size; the two are measured in alternation, several
    rounds, and each side's best round is kept, so background load hits both alike."""
    out = {}
    for b in batches:
        ref, cand = [], []
        for _ in range(rounds):
            ref.append(onnx_latency_ms(reference, b, repeats))
            cand.append(onnx_latency_ms(candidate, b, repeats))
        out[f"batch_{b}"] = {"reference_ms": min(ref), "candidate_ms": min(cand), "ratio": min(cand) / min(ref)}
    return out
